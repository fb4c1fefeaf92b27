from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPRITEFORGE_SHARED", REPO.parent / "shared"))

# Hypothesis: the same cases in every clone, at any path, on every run ("ci", the default: derandomized, no example
# database, and the fuzzers' explicit seeds, tests/fuzzing.py); `--hypothesis-profile=explore` searches anew each
# run with SPRITEFORGE_FUZZ_SCALE (default 20) times the cases and keeps what fails in .hypothesis/ to replay it
# (docs/RELIABILITY.md, "Fuzzing"). What exploring finds becomes an @example in the test. No deadline: a wall-clock
# limit is no test.
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
_SCALE = float(os.environ.get("SPRITEFORGE_FUZZ_SCALE", "20"))
settings.register_profile("explore", max_examples=max(1, round(_SCALE * settings.default.max_examples)), derandomize=False,
                          database=DirectoryBasedExampleDatabase(REPO / ".hypothesis" / "examples"), deadline=None,
                          print_blob=True)
settings.load_profile("ci")  # hypothesis' pytest plugin loads --hypothesis-profile after this file


class _CheckoutIsAPlainDirectory:
    """The checkout is the package itself (its ``__init__.py`` is ComfyUI's entry). Left alone, pytest collects it as
    a Package and imports that ``__init__.py`` again under the checkout folder's name: a second copy of the pack
    (``main``, ``clone``), or, where the name is no identifier (``comfyui-spriteforge``, ``wt-a``), an ImportError
    in every test. The tests use the installed ``spriteforge``; the checkout is collected as a plain folder."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path, parent):
        if path.resolve() == REPO:
            return pytest.Dir.from_parent(parent, path=path)
        return None


def _without_source_constants():
    """Hypothesis also draws constants it collects from the source of every "local" module imported so far: a pool
    that changes with the checkout's path (modules under a `test` or `tests` folder or in site-packages do not
    count), with the tests that ran before (what they imported), and with any edit anywhere in the pack. For fixed
    cases the pool stays empty; Hypothesis is pinned (pyproject's test extra), so its internal hook is stable."""
    from hypothesis.internal.conjecture import providers

    if hasattr(providers, "_get_local_constants"):  # another Hypothesis draws other cases anyway
        providers._get_local_constants = providers.Constants
        providers.CONSTANTS_CACHE.cache.clear()


@pytest.hookimpl(trylast=True)  # after hypothesis' plugin has loaded --hypothesis-profile
def pytest_configure(config):
    config.pluginmanager.register(_CheckoutIsAPlainDirectory(), "spriteforge-checkout-dir")
    if settings.get_current_profile_name() == "ci":
        _without_source_constants()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    ref = SHARED / "reference"
    if not ref.is_dir():
        pytest.skip("../shared/reference is not present (a user's clone): reference checks skipped")
    return ref


@pytest.fixture(scope="session")
def repo_dir() -> Path:
    return REPO


@pytest.fixture(autouse=True)
def _isolate_models_root(monkeypatch):
    """A test that points the pack at a models root must not leak it into the next test."""
    from spriteforge import paths

    saved = list(paths._models_root)
    monkeypatch.delenv("SPRITEFORGE_MODELS", raising=False)
    yield
    paths._models_root[:] = saved


@pytest.fixture(autouse=True)
def _isolate_logging():
    """The command line's ``log.configure`` (run by CLI tests) stops propagation for good; restore it so
    pytest's caplog sees the pack's records in every later test."""
    import logging

    root = logging.getLogger("spriteforge")
    saved = (root.propagate, list(root.handlers), root.level)
    yield
    root.propagate, root.level = saved[0], saved[2]
    root.handlers[:] = saved[1]


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module: tiny models are dominated by per-op overhead, and one thread avoids
    spin-waits on a shared 2-core machine. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
