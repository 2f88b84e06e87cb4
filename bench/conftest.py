"""Micro-benchmarks run with `make bench` (pytest-benchmark); `make test` does not collect them."""
