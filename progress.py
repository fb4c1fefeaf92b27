"""Progress and interrupt for long work, in ComfyUI and on the command line.

``Progress(total, desc)`` reports each step: inside ComfyUI through
``comfy.utils.ProgressBar`` (the node's bar in the editor), elsewhere as a bar on
stderr. ``check_interrupt()`` is the interrupt point: inside ComfyUI it raises
ComfyUI's own ``InterruptProcessingException`` when the user pressed Cancel; outside it
raises :class:`Interrupted` after :func:`request_interrupt` (tests, Ctrl-C handlers).
"""

from __future__ import annotations

import sys
import threading
import time

_interrupt = threading.Event()
_cli_bars = {"enabled": True}


class Interrupted(Exception):
    """Raised at an interrupt point after :func:`request_interrupt` (outside ComfyUI)."""


def request_interrupt() -> None:
    _interrupt.set()


def clear_interrupt() -> None:
    _interrupt.clear()


def set_cli_bars(enabled: bool) -> None:
    _cli_bars["enabled"] = enabled


_COMFY: list = []


def _comfy():
    """ComfyUI's utils and model_management modules, or (None, None); looked up once."""
    if not _COMFY:
        try:
            import comfy.model_management as mm  # type: ignore
            import comfy.utils as cu  # type: ignore

            _COMFY.append((cu, mm))
        except Exception:
            _COMFY.append((None, None))
    return _COMFY[0]


def check_interrupt() -> None:
    _, mm = _comfy()
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()
    if _interrupt.is_set():
        _interrupt.clear()
        raise Interrupted("interrupted by the user")


class Progress:
    """A step counter that reports to ComfyUI or to the terminal and checks for interrupts."""

    def __init__(self, total: int, desc: str = "", *, stream=None, callback=None):
        self.total = max(int(total), 1)
        self.n = 0
        self.desc = desc
        self.callback = callback
        self._stream = stream if stream is not None else sys.stderr
        cu, _ = _comfy()
        self._bar = cu.ProgressBar(self.total) if cu is not None else None
        self._t0 = time.monotonic()
        self._tty = _cli_bars["enabled"] and self._bar is None and hasattr(self._stream, "isatty") and self._stream.isatty()

    def update(self, n: int = 1, preview=None) -> None:
        check_interrupt()
        self.n = min(self.n + n, self.total)
        if self._bar is not None:
            if preview is not None:
                self._bar.update_absolute(self.n, self.total, preview)
            else:
                self._bar.update_absolute(self.n, self.total)
        elif self._tty:
            width = 30
            done = int(width * self.n / self.total)
            rate = self.n / max(time.monotonic() - self._t0, 1e-6)
            self._stream.write(f"\r{self.desc} [{'#' * done}{'.' * (width - done)}] {self.n}/{self.total} {rate:.2f}/s")
            if self.n >= self.total:
                self._stream.write("\n")
            self._stream.flush()
        if self.callback is not None:
            self.callback(self.n, self.total)

    def __enter__(self):
        check_interrupt()
        return self

    def __exit__(self, *exc):
        if self._tty and self.n < self.total:
            self._stream.write("\n")
        return False
