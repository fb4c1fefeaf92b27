"""A reader that closes the pipe (``spriteforge ... | head -1``) ends the command quietly, for every sub-command."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = "import sys; from spriteforge.cli.main import main; sys.exit(main(sys.argv[1:]))"


def _closed_pipe_run(argv: list[str]) -> subprocess.CompletedProcess:
    """Run ``spriteforge argv`` with stdout a pipe whose reading end is already closed: every write fails with
    EPIPE, deterministically (the same as `| head -1` once head has gone)."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run([sys.executable, "-c", CODE, *argv], stdout=w, stderr=subprocess.PIPE, text=True,
                              timeout=300)
    finally:
        os.close(w)


@pytest.mark.parametrize("argv", [["pixel", "--list-palettes"], ["doctor", "--json"]])
def test_closed_pipe_exits_quietly(argv):
    out = _closed_pipe_run(argv)
    assert "ENGINE_INTERNAL" not in out.stderr and "BrokenPipe" not in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 141  # as a shell reports a command ended by SIGPIPE


def test_real_head_pipe_prints_first_line_only():
    cmd = f"{sys.executable} -c '{CODE}' pixel --list-palettes | head -1"
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 1
    assert out.stderr == ""
