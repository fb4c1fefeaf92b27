"""Logging with an engine tag on every line, and an optional JSON mode.

Use ``get_logger("torch")`` for an engine-tagged logger; lines read
``[spriteforge:torch] message`` or, in JSON mode, one object per line with
``ts``, ``level``, ``engine`` and ``message``.
"""

from __future__ import annotations

import json
import logging
import sys
import time

ROOT = "spriteforge"


class _TagFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        record.engine = name.split(".", 1)[1] if name.startswith(ROOT + ".") else "core"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj = {
            "ts": round(time.time(), 3),
            "level": record.levelname.lower(),
            "engine": getattr(record, "engine", "core"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj)


def get_logger(engine: str | None = None) -> logging.Logger:
    """The pack's logger; ``engine`` (``torch``, ``mlx``, ``pixel``...) becomes the line's tag."""
    logger = logging.getLogger(ROOT if not engine else f"{ROOT}.{engine}")
    return logger


def configure(json_mode: bool = False, quiet: bool = False, stream=None) -> None:
    """Set up the command line's handler (ComfyUI configures its own logging)."""
    root = logging.getLogger(ROOT)
    for h in list(root.handlers):
        if getattr(h, "_spriteforge", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._spriteforge = True  # type: ignore[attr-defined]
    handler.addFilter(_TagFilter())
    handler.setFormatter(JsonFormatter() if json_mode else logging.Formatter("[spriteforge:%(engine)s] %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False
