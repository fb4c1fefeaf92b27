from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPRITEFORGE_SHARED", REPO.parent / "shared"))


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
