"""A clock for the engine's ``clock=`` parameter that moves only when a test moves it."""

from __future__ import annotations

__all__ = ["FakeClock"]


class FakeClock:
    """Time that moves only when the test (or a fake model run) says so: ``clock.now += s``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now
