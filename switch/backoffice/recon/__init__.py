"""Settlement reconciliation: match switch records against a network's settlement file.

The numeric core (numba kernels over int64 arrays) lives in :mod:`switch.backoffice.recon.kernels`;
:mod:`switch.backoffice.recon.reference` is the slow, obviously-correct twin used by
tests and as the benchmark's dict baseline. Netting and late-settlement classes are
meant to be layered on top of :class:`ReconResult` in Python.

The array entry point is ``reconcile_arrays``, not ``reconcile``:
``switch.backoffice.recon.reconcile`` is the end-to-end module, and importing a
submodule rebinds the package attribute of the same name, which would silently
replace a function called ``reconcile`` here.
"""

from switch.backoffice.recon.kernels import (
    DEFAULT_MAX_CANDIDATES,
    MAX_ABS_VALUE,
    MAX_RECORDS,
    BreakClass,
    ReconResult,
    RecordArrays,
    RecordStatus,
    exact_match,
    hash_reference,
    hash_references,
    reconcile_arrays,
    tolerance_match,
    warm_up,
)

__all__ = [
    "DEFAULT_MAX_CANDIDATES",
    "MAX_ABS_VALUE",
    "MAX_RECORDS",
    "BreakClass",
    "ReconResult",
    "RecordArrays",
    "RecordStatus",
    "exact_match",
    "hash_reference",
    "hash_references",
    "reconcile_arrays",
    "tolerance_match",
    "warm_up",
]
