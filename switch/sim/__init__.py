"""Deterministic simulation: the real payment core in virtual time (see switch/sim/simulation.py).

One process, one thread, one seeded event queue. The real :class:`~switch.payment.core.PaymentCore`,
routing, breakers, retry budget, idempotency, risk and stand-in decisions run against simulated
networks built from ``channels``' behaviour, fault and issuer-book models, and a real SQLite
journal behind a simulated disk. Same seed, same trace, byte for byte.
"""
