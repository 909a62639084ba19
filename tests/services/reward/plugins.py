"""Reward functions that misbehave on purpose; only the test server loads them
(``--plugins tests.services.reward.plugins``)."""

import os

from services.reward.functions import reward


@reward("spin_in_c")
def spin_in_c(item):
    """Deliberately slow (it would run for hours): one modular power with a 100-million-bit exponent is a single
    C call, which neither a Python signal handler nor another thread can interrupt; only killing the process can."""
    return float(pow(3, 1 << 100_000_000, (1 << 4096) + 1)), {}


@reward("raises")
def raises(item):
    """A verifier with a bug."""
    raise RuntimeError("verifier bug")


@reward("crashes")
def crashes(item):
    """A verifier that takes its process down (as a segfault in a C extension would)."""
    os._exit(3)


@reward("unserialisable")
def unserialisable(item):
    """A verifier whose details cannot go out as JSON."""
    return 1.0, {"score": float("nan")}
