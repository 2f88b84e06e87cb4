"""Retired: the path of a payment now lives in :mod:`switch.payment.core`.

The per-payment coroutine that stood here (suspending 3-4 times, with Events and a cancel
scope per payment) was replaced by the sans-IO :class:`~switch.payment.core.PaymentCore`,
driven in batches by :class:`switch.serve.engine.Engine`. The names front doors used are
kept here so their imports keep working: ``Rejected`` and ``Submitted`` (what
``Engine.submit(request)`` returns or raises).
"""

from __future__ import annotations

from switch.payment.core import EXEMPLAR_FROM_S, Rejected, Submitted

__all__ = ["EXEMPLAR_FROM_S", "Rejected", "Submitted"]
