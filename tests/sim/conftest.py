"""The simulator's tests: the simulated switch's own log kept to errors.

A run logs every breaker transition and every error its fault schedule causes; the
invariants are the verdict. The root conftest restores the level after each test.
"""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(autouse=True)
def _quiet() -> None:
    logging.getLogger("switch").setLevel(logging.ERROR)
