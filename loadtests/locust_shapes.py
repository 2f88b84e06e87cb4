"""LoadTestShape classes for payswitch: step, spike and soak.

Chosen with ``PAYSWITCH_SHAPE=step|spike|soak`` (the locustfile binds the chosen class
into its namespace; Locust would otherwise take the first shape class it finds). Sized by:

* ``PAYSWITCH_SHAPE_USERS``: peak users (default 60);
* ``PAYSWITCH_SHAPE_SECONDS``: total length (default 60; soak 600);
* ``PAYSWITCH_SHAPE_STEPS``: number of steps for ``step`` (default 4).

The shapes set user counts (Locust's closed model), not request rates: for exact offered
rates use ``payswitch load`` and its rate shapes.
"""

from __future__ import annotations

import os

from locust import LoadTestShape


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


class StepShape(LoadTestShape):
    """Users rise in equal steps to the peak; each step holds for an equal share of time."""

    abstract = True  # made concrete by select(): Locust picks up only the chosen shape

    def __init__(self) -> None:
        super().__init__()
        self.users = _env_int("PAYSWITCH_SHAPE_USERS", 60)
        self.seconds = _env_float("PAYSWITCH_SHAPE_SECONDS", 60)
        self.steps = max(1, _env_int("PAYSWITCH_SHAPE_STEPS", 4))

    def tick(self) -> tuple[int, float] | None:
        t = self.get_run_time()
        if t >= self.seconds:
            return None
        step = min(int(t // (self.seconds / self.steps)), self.steps - 1)
        users = max(1, round(self.users * (step + 1) / self.steps))
        return users, float(max(1, users))


class SpikeShape(LoadTestShape):
    """A third of the peak, then 3x (the peak) for the middle fifth, then back."""

    abstract = True

    def __init__(self) -> None:
        super().__init__()
        self.users = _env_int("PAYSWITCH_SHAPE_USERS", 60)
        self.seconds = _env_float("PAYSWITCH_SHAPE_SECONDS", 60)

    def tick(self) -> tuple[int, float] | None:
        t = self.get_run_time()
        if t >= self.seconds:
            return None
        base = max(1, self.users // 3)
        in_spike = 0.4 * self.seconds <= t < 0.6 * self.seconds
        users = self.users if in_spike else base
        return users, float(self.users)  # spikes arrive at once


class SoakShape(LoadTestShape):
    """Ramp to the peak over a tenth of the run, then hold it (long runs: leaks, drift)."""

    abstract = True

    def __init__(self) -> None:
        super().__init__()
        self.users = _env_int("PAYSWITCH_SHAPE_USERS", 60)
        self.seconds = _env_float("PAYSWITCH_SHAPE_SECONDS", 600)

    def tick(self) -> tuple[int, float] | None:
        t = self.get_run_time()
        if t >= self.seconds:
            return None
        ramp = max(self.seconds / 10, 1.0)
        return self.users, max(1.0, self.users / ramp)


SHAPES: dict[str, type[LoadTestShape]] = {
    "step": StepShape,
    "spike": SpikeShape,
    "soak": SoakShape,
}


def select(name: str) -> type[LoadTestShape]:
    """A concrete subclass of the named shape (so Locust sees exactly one shape class)."""
    try:
        base = SHAPES[name.lower()]
    except KeyError:
        raise SystemExit(
            f"PAYSWITCH_SHAPE={name!r}: expected one of {', '.join(SHAPES)}"
        ) from None
    return type(base.__name__, (base,), {"abstract": False, "__module__": __name__})
