"""Routing decisions, sans-IO: the route table, the BIN index, breakers, retry and health.

``table`` parses and validates route tables; ``binindex`` finds a card's BIN range;
``breaker`` and ``resilience`` decide which endpoint may be tried and whether a retry is
safe; ``router`` binds them to live adapters and metrics. Time and randomness come in as
parameters.
"""
