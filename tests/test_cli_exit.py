"""The `spriteforge` program skips the final garbage collection at exit (issue #21.12: 1.5 s of the main job's
wall time on an idle machine was interpreter shutdown, walking the objects torch, transformers and sympy leave).

At exit the program freezes the garbage collector's objects (``gc.freeze``), so the interpreter's last collection
has nothing to walk; atexit handlers and finalizers still run. Callers of ``main(argv)`` (tests, other tools) are
left alone. How many seconds that saves is measured in ``benchmarks/bench_startup.py``.
"""

from __future__ import annotations

import atexit
import gc
import subprocess
import sys

from spriteforge.cli.main import main

PROGRAM = """
import atexit, gc, sys
atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count() > 0, flush=True))  # runs after main's own
from spriteforge.cli.main import main
sys.argv = ["spriteforge", "pixel", "--list-palettes"]
rc = main()
print("frozen while running:", gc.get_freeze_count() > 0, flush=True)
sys.exit(rc)
"""


def test_the_program_freezes_the_collector_at_exit():
    out = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "frozen while running: False" in out.stdout  # nothing changes while the command runs
    assert "frozen at exit: True" in out.stdout


def test_main_called_with_arguments_leaves_the_collector_alone(capsys):
    before = atexit._ncallbacks()
    assert main(["pixel", "--list-palettes"]) == 0
    assert atexit._ncallbacks() == before
    assert gc.get_freeze_count() == 0
