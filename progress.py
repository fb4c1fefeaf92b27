"""Progress and interrupt for long work, in ComfyUI and on the command line.

``Progress(total, desc)`` reports each step: inside ComfyUI through
``comfy.utils.ProgressBar`` (the node's bar in the editor), elsewhere as a bar on
stderr when it is a terminal; once the command line has turned its bars on (:func:`set_cli_bars`), a stderr
that is not a terminal (a log file, a pipe) gets plain lines instead: the first and last step and one a second
in between. ``set_cli_bars(False)`` (``-q``) silences both, and the loading bars of transformers and
huggingface_hub with them. ``check_interrupt()`` is the interrupt point: inside ComfyUI it raises
ComfyUI's own ``InterruptProcessingException`` when the user pressed Cancel; outside it
raises :class:`Interrupted` after :func:`request_interrupt` (tests, Ctrl-C handlers).
"""

from __future__ import annotations

import os
import sys
import threading
import time

_interrupt = threading.Event()
_cli_bars = {"enabled": True, "lines": False}
_HF_BARS = "HF_HUB_DISABLE_PROGRESS_BARS"
_LINE_EVERY_S = 1.0


class Interrupted(Exception):
    """Raised at an interrupt point after :func:`request_interrupt` (outside ComfyUI)."""


def request_interrupt() -> None:
    _interrupt.set()


def clear_interrupt() -> None:
    _interrupt.clear()


def set_cli_bars(enabled: bool) -> None:
    """The command line's choice: bars (and plain lines outside a terminal) on, or everything quiet (``-q``)."""
    _cli_bars["enabled"] = bool(enabled)
    _cli_bars["lines"] = bool(enabled)
    _third_party_bars(bool(enabled))


def _third_party_bars(enabled: bool) -> None:
    """transformers' and huggingface_hub's tqdm bars ("Loading weights") follow ours: off with ``-q``. The environment
    variable reaches them when they are imported later; modules already imported are told directly (never imported
    here). Turning them back on undoes only what was done here: a user's own HF_HUB_DISABLE_PROGRESS_BARS stays."""
    if enabled:
        if not _cli_bars.pop("hf_env_set", False):
            return
        os.environ.pop(_HF_BARS, None)
    elif _HF_BARS in os.environ:
        return
    else:
        os.environ[_HF_BARS] = "1"
        _cli_bars["hf_env_set"] = True
    hub = sys.modules.get("huggingface_hub.utils")
    if hub is not None and hasattr(hub, "disable_progress_bars"):
        (hub.enable_progress_bars if enabled else hub.disable_progress_bars)()
    tlog = sys.modules.get("transformers.utils.logging")
    if tlog is not None and hasattr(tlog, "disable_progress_bar"):
        (tlog.enable_progress_bar if enabled else tlog.disable_progress_bar)()


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
        tty = hasattr(self._stream, "isatty") and self._stream.isatty()
        self._tty = _cli_bars["enabled"] and self._bar is None and tty
        self._lines = _cli_bars["lines"] and self._bar is None and not tty
        self._last_line = None

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
        elif self._lines:
            self._line()
        if self.callback is not None:
            self.callback(self.n, self.total)

    def _line(self) -> None:
        """A plain line (no carriage returns) for a log or a pipe: the first step, the last, one a second between."""
        now = time.monotonic()
        if self._last_line is not None and self.n < self.total and now - self._last_line < _LINE_EVERY_S:
            return
        self._last_line = now
        rate = self.n / max(now - self._t0, 1e-6)
        self._stream.write(f"{self.desc or 'progress'}: {self.n}/{self.total} ({rate:.2f}/s)\n")
        self._stream.flush()

    def __enter__(self):
        check_interrupt()
        return self

    def __exit__(self, *exc):
        if self._tty and self.n < self.total:
            self._stream.write("\n")
        return False
