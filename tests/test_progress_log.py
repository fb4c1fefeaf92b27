from __future__ import annotations

import io
import json
import logging

import pytest

from spriteforge.log import configure, get_logger
from spriteforge.progress import Interrupted, Progress, check_interrupt, clear_interrupt, request_interrupt


def test_progress_counts_and_interrupt_point():
    seen = []
    p = Progress(3, "steps", stream=io.StringIO(), callback=lambda n, t: seen.append((n, t)))
    p.update()
    request_interrupt()
    with pytest.raises(Interrupted):
        p.update()
    assert seen == [(1, 3)]
    check_interrupt()  # the flag is consumed: the next run is unaffected
    p2 = Progress(2, stream=io.StringIO())
    p2.update()
    p2.update()
    assert p2.n == 2
    clear_interrupt()


def test_log_lines_carry_engine_tag_and_json_mode():
    buf = io.StringIO()
    configure(json_mode=True, stream=buf)
    get_logger("torch").info("loaded %s", "x")
    rec = json.loads(buf.getvalue().strip())
    assert rec["engine"] == "torch" and rec["message"] == "loaded x" and rec["level"] == "info"
    buf2 = io.StringIO()
    configure(json_mode=False, stream=buf2)
    get_logger("mlx").warning("hello")
    assert buf2.getvalue().strip() == "[spriteforge:mlx] hello"
    logging.getLogger("spriteforge").handlers.clear()
