"""The suite itself: it runs from a checkout in any folder, and its Hypothesis cases do not depend on what else is
imported (``tests/conftest.py``)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

from hypothesis import given, seed, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]


def test_a_test_runs_from_a_checkout_named_comfyui_spriteforge(tmp_path):
    """A clone's default folder name is no Python identifier; pytest used to import the checkout's own
    ``__init__.py`` under the folder's name before every test, and every test failed there."""
    checkout = tmp_path / "comfyui-spriteforge"
    checkout.symlink_to(REPO, target_is_directory=True)
    test = checkout / "tests" / "test_errors.py"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          f"{test}::test_codes_are_the_published_set_with_distinct_exit_codes"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "1 passed" in run.stdout


def _cases() -> list:
    seen = []

    @settings(max_examples=300, database=None)
    @seed(3)
    @given(st.integers(), st.floats(), st.text(max_size=8))
    def draw(i, f, t):
        seen.append((i, repr(f), t))

    draw()
    return seen


def test_fixed_cases_do_not_follow_the_constants_of_imported_code(tmp_path, monkeypatch):
    """Hypothesis draws constants it finds in the source of imported local modules: the cases changed with the
    checkout's path, with the tests that ran before and with any edit in the pack. Under the ``ci`` profile they
    do not."""
    before = _cases()
    (tmp_path / "sf_constants_probe.py").write_text("A = 9876543210123\nB = 'zebra-probe'\nC = -4.25e7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("sf_constants_probe")
    assert _cases() == before


def _skips_that_hide_failures(source: str) -> list:
    """Lines where a test turns a failure into a skip: ``importorskip`` of our own modules, or ``pytest.skip`` in a
    handler of any exception (``except``, ``except Exception``) or of an ImportError raised by more than imports of
    other packages."""
    import ast

    def is_skip(node):
        return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "skip" and getattr(node.func.value, "id", "") == "pytest")

    def names(handler):
        t = handler.type
        items = t.elts if isinstance(t, ast.Tuple) else [t] if t is not None else []
        return {getattr(i, "id", getattr(i, "attr", "")) for i in items} if t is not None else {"BaseException"}

    def only_foreign_imports(body):
        mods = [a.name for n in body if isinstance(n, ast.Import) for a in n.names]
        mods += [n.module or "" for n in body if isinstance(n, ast.ImportFrom)]
        return (all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in body)
                and not any(m.startswith("spriteforge") or m == "" for m in mods))

    bad = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "importorskip" and node.args
                and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith("spriteforge")):
            bad.append(node.lineno)
        if isinstance(node, ast.Try):
            for h in node.handlers:
                caught = names(h)
                broad = caught & {"Exception", "BaseException"}
                imports = caught & {"ImportError", "ModuleNotFoundError"} and not only_foreign_imports(node.body)
                if (broad or imports) and any(is_skip(n) for n in ast.walk(h)):
                    bad.append(h.lineno)
    return sorted(bad)


def test_no_test_turns_a_failure_of_our_code_into_a_skip():
    """A missing optional package (mlx, playwright) may skip a test; our own code failing to import or to run
    must fail it."""
    found = {p.name: lines for p in sorted((REPO / "tests").glob("*.py"))
             if (lines := _skips_that_hide_failures(p.read_text(encoding="utf-8")))}
    assert not found, found


def test_the_skip_check_sees_each_kind():
    src = '''
import pytest
m = pytest.importorskip("spriteforge.engines.mlx_models.sd3")
ok = pytest.importorskip("mlx.core")
try:
    x = build()
except Exception as exc:
    pytest.skip(str(exc))
try:
    from spriteforge.x import y
except ImportError:
    pytest.skip("no y")
try:
    import mlx.core
except ImportError:
    pytest.skip("no mlx")
'''
    assert _skips_that_hide_failures(src) == [3, 7, 11]
