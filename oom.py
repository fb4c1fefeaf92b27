"""Out of memory in chunked work: halve the chunk and go on; OUT_OF_MEMORY only when one item does not fit.

:func:`run_in_chunks` runs ``fn(start, stop)`` over consecutive chunks of ``range(n)``. When a chunk raises an
out-of-memory error (``torch.OutOfMemoryError`` -- CUDA, ROCm, MPS --, ``MemoryError``, or any error whose text
:func:`spriteforge.errors.classify` reads as out of memory, MLX/Metal's included), ``on_oom()`` frees what it can
(e.g. the device cache), the event is logged, and the same items are tried again in a chunk half the size; the
smaller size is kept for the rest of the work. Only when a chunk of ``min_chunk`` items still does not fit is a
:class:`SpriteForgeError` ``OUT_OF_MEMORY`` raised. Used by the torch VAE encode/decode and BiRefNet's batch loop.

Standard library only: the caller passes the work and the clean-up as callables.
"""

from __future__ import annotations

import gc
from typing import Callable, TypeVar

from .errors import OUT_OF_MEMORY, SpriteForgeError, classify
from .log import get_logger

T = TypeVar("T")
log = get_logger("memory")


def is_oom(exc: BaseException) -> bool:
    """True for an out-of-memory error of any backend."""
    if isinstance(exc, SpriteForgeError):
        return exc.code == OUT_OF_MEMORY
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return classify(exc).code == OUT_OF_MEMORY


def note_oom(what: str, size: int, new_size: int, exc: BaseException) -> None:
    """Log one halving (what was being done, the chunk that did not fit, the next size)."""
    log.warning("%s: out of memory with %d item(s) per chunk; retrying with %d (%s)", what, size, new_size,
                " ".join(f"{type(exc).__name__}: {exc}".split())[:200])


def run_in_chunks(fn: Callable[[int, int], T], n: int, chunk: int, *, what: str = "chunked work",
                  min_chunk: int = 1, on_oom: Callable[[], None] | None = None,
                  sizes: list | None = None) -> list[T]:
    """``[fn(0, c), fn(c, 2c), ...]`` over ``range(n)`` in chunks of ``chunk`` items, halved on out-of-memory.

    ``sizes`` (a list) receives each successful chunk's size, in order. Raises ``OUT_OF_MEMORY`` (the backend's
    error text in its message and ``details["raw"]``) when a chunk of ``min_chunk`` items does not fit; other
    errors pass through unchanged.
    """
    size = max(int(min_chunk), min(int(chunk) if chunk and chunk > 0 else n, n)) if n > 0 else 0
    out: list[T] = []
    i = 0
    while i < n:
        m = min(size, n - i)
        try:
            out.append(fn(i, i + m))
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled, the rest is re-raised
            if not is_oom(exc):
                raise
            exc_text = f"{type(exc).__name__}: {exc}"
            del exc  # drop the traceback's frames (and the tensors they hold) before retrying
            gc.collect()
            if on_oom is not None:
                on_oom()
            if m <= min_chunk:
                raise SpriteForgeError(
                    OUT_OF_MEMORY,
                    f"{what} ran out of memory even with {m} item(s) at a time ({' '.join(exc_text.split())[:200]}).",
                    details={"chunk": m, "what": what, "raw": exc_text},
                ) from None
            size = max(int(min_chunk), m // 2)
            note_oom(what, m, size, RuntimeError(exc_text))
            continue
        if sizes is not None:
            sizes.append(m)
        i += m
    return out


def empty_device_cache() -> None:
    """Give cached device memory back (torch CUDA/ROCm/MPS) where torch is already imported."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        mps = getattr(torch, "mps", None)
        if mps is not None and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            mps.empty_cache()
    except Exception:  # noqa: BLE001 - best effort
        pass


__all__ = ["run_in_chunks", "is_oom", "note_oom", "empty_device_cache"]
