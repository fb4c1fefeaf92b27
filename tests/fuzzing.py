"""The fuzzers' Hypothesis settings: how many cases, and which.

Under the default ``ci`` profile (tests/conftest.py) every fuzz test runs ``n`` cases drawn from its explicit seed:
the same cases in every clone, at any path, on any machine with the pinned Hypothesis (pyproject's ``test`` extra),
however the test's source text changes. ``--hypothesis-profile=explore`` drops the seed (a new search each run) and
multiplies ``n`` by ``SPRITEFORGE_FUZZ_SCALE`` (default 20); what it finds is kept as an ``@example`` in the test.
"""

from __future__ import annotations

from hypothesis import HealthCheck, seed, settings


def fuzz(n: int, case_seed: int):
    """Decorator (above ``@given``): ``n`` cases under ``ci``, seeded with ``case_seed``; scaled, fresh ones under ``explore``."""
    def deco(test):
        test = settings(max_examples=max(1, n * settings.default.max_examples // 100),
                        suppress_health_check=list(HealthCheck))(test)  # tiny real models: slow cases are expected
        return seed(case_seed)(test) if settings.default.derandomize else test
    return deco
