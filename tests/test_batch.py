"""execution/batch.py and `spriteforge run --seeds/--prompts` in-process (issue #27): the job list, where seeds and
prompt lines go, outputs written once with the usual names, the manifest and restarting a batch."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from spriteforge.errors import BAD_INPUT, SpriteForgeError
from spriteforge.execution import batch as B
from spriteforge.execution import graph as G
from spriteforge.progress import Interrupted, clear_interrupt, request_interrupt

pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "example_workflows" / "api" / "sprite_demo.json"
TINY = ["3.steps=1", "3.batch_size=1"]  # the built-in demo model, one step, one sprite a job


def _demo() -> dict:
    return json.loads(DEMO.read_text())


def _info() -> dict:
    return G.object_info(G.node_classes())


def test_parse_seeds():
    assert B.parse_seeds("3:6") == [3, 4, 5]
    assert B.parse_seeds("7") == [7]
    assert B.parse_seeds("0:24:8") == [0, 8, 16]  # jobs of batch_size 8 that share no seed
    for bad in ("5:5", "a:b", "-1:3", "1:2:0", "1:2:3:4", "6:2"):
        with pytest.raises(SpriteForgeError) as e:
            B.parse_seeds(bad)
        assert e.value.code == BAD_INPUT


def test_seed_goes_to_the_generation_seed_not_the_palette_seed():
    # sprite_demo has two `seed` inputs: the sampler's noise seed (3) and the palette k-means seed (6)
    assert B.seed_input(_demo(), _info()) == ("3", "seed")
    assert B.seed_input(_demo(), _info(), "6.seed") == ("6", "seed")


def test_prompt_input_detected_and_ambiguity_refused():
    wf = _demo()
    assert B.prompt_input(wf) == ("2", "positive")
    wf["12"] = json.loads(json.dumps(wf["2"]))  # a second Encode Prompt: which one gets the lines?
    with pytest.raises(SpriteForgeError) as e:
        B.prompt_input(wf)
    assert e.value.code == BAD_INPUT and "2.positive, 12.positive" in e.value.message
    assert B.prompt_input(wf, "12.positive") == ("12", "positive")


def test_write_outputs_keeps_siblings_together_and_never_overwrites(tmp_path):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    mine = out / "sub" / "sheet_00001_.png"
    mine.write_bytes(b"the user's file")
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    (out / "sub" / "sheet_00002_.json").symlink_to(secret)  # a link where the next name would go
    files = [("sub/sheet_00001_.png", b"png"), ("sub/sheet_00001_.json", b"json"), ("../escape.png", b"x"),
             ("notes.txt", b"t")]
    written = B.write_outputs(out, files)
    names = sorted(p.relative_to(out).as_posix() for p in written)
    assert names == ["notes.txt", "sub/sheet_00003_.json", "sub/sheet_00003_.png"]
    assert mine.read_bytes() == b"the user's file" and secret.read_text() == "{}"
    assert not (tmp_path / "escape.png").exists()
    again = B.write_outputs(out, [("notes.txt", b"t2")])
    assert [p.name for p in again] == ["notes_1.txt"] and (out / "notes.txt").read_bytes() == b"t"


def test_write_outputs_refuses_a_sub_folder_link_leading_out_before_writing_any_file(tmp_path):
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(SpriteForgeError) as e:
        B.write_outputs(out, [("a_00001_.png", b"a"), ("sub/sheet_00001_.png", b"png")])
    assert e.value.code == BAD_INPUT and "leads outside" in e.value.message
    assert list(outside.iterdir()) == [] and sorted(p.name for p in out.iterdir()) == ["sub"]  # not even a_00001_


def test_an_out_that_is_a_file_is_refused_before_any_job_runs(tmp_path):
    out = tmp_path / "out"
    out.write_text("my notes")
    with pytest.raises(SpriteForgeError) as e:
        B.plan(DEMO, seeds=[0], sets=TINY, out=out)
    assert e.value.code == BAD_INPUT and "existing file" in e.value.message and out.read_text() == "my notes"


def test_a_foreign_manifest_is_left_alone(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / B.MANIFEST_NAME).write_text("my notes")
    with pytest.raises(SpriteForgeError) as e:
        B.plan(DEMO, seeds=[0], sets=TINY, out=out)
    assert e.value.code == BAD_INPUT
    assert (out / B.MANIFEST_NAME).read_text() == "my notes"


def test_manifest_lines_survive_a_crash_mid_append(tmp_path):
    path = tmp_path / B.MANIFEST_NAME
    B.append_manifest(path, "a", {"status": "failed", "code": BAD_INPUT})
    B.append_manifest(path, "b", {"status": "done", "files": ["x.png"]})
    B.append_manifest(path, "a", {"status": "done", "files": ["y.png"]})  # a failed job done on a later run
    whole = path.read_text()
    with open(path, "a") as fh:
        fh.write('{"key": "c", "stat')  # the process died while writing this line
    jobs = B.load_manifest(path)["jobs"]
    assert jobs == {"a": {"status": "done", "files": ["y.png"]}, "b": {"status": "done", "files": ["x.png"]}}
    assert path.read_text() == whole  # the torn line is dropped, so the next line starts clean
    path.write_text(whole.replace('"b"', '"b', 1))  # a damaged line that is not the last: say so, do not guess
    with pytest.raises(SpriteForgeError) as e:
        B.load_manifest(path)
    assert e.value.code == BAD_INPUT and "line 3" in e.value.message


def test_a_crash_between_writing_files_and_recording_them_neither_duplicates_nor_loses(tmp_path):
    out = tmp_path / "out"
    B.run_batch(B.plan(DEMO, seeds=[0, 1], sets=TINY, out=out))
    path = out / B.MANIFEST_NAME
    lines = path.read_text().splitlines()
    assert [json.loads(x)["status"] for x in lines[1:]] == ["writing", "done", "writing", "done"]
    path.write_text("\n".join(lines[:-1]) + "\n")  # what a crash just before the last "done" line leaves
    files = _outputs(out)

    again = B.plan(DEMO, seeds=[0, 1], sets=TINY, out=out)  # its files are all there, whole: it is done
    assert again.pending() == [] and _outputs(out) == files

    path.write_text("\n".join(lines[:-1]) + "\n")
    sheet = out / json.loads(lines[-2])["files"][0]
    sheet.write_bytes(sheet.read_bytes()[:10])  # ... and this time one file was cut short by the crash
    again = B.plan(DEMO, seeds=[0, 1], sets=TINY, out=out)
    assert [j.seed for j in again.pending()] == [1]  # so that job runs again, into new names
    assert B.run_batch(again)["done"] == 2
    assert len(_outputs(out)) == len(files) + 6  # the cut file stays as it is, under its own name


def _sprites(out: Path) -> list[Path]:
    return sorted((out / "spriteforge").glob("demo_sprite_0*.png"))


def test_batch_in_process_interrupted_and_restarted_and_a_failing_job(tmp_path):
    out = tmp_path / "out"
    seeds = [0, 1, 2]
    events = []

    def stop_after_first(kind, data):
        events.append(data["entry"])
        request_interrupt()  # what Ctrl-C / Cancel does: the batch stops at its next interrupt point

    batch = B.plan(DEMO, seeds=seeds, sets=TINY, out=out)
    assert len(batch.jobs) == 3 and len({j.key for j in batch.jobs}) == 3
    try:
        with pytest.raises(Interrupted):
            B.run_batch(batch, on_event=stop_after_first)
    finally:
        clear_interrupt()
    assert len(events) == 1 and len(_sprites(out)) == 1
    manifest = B.load_manifest(out / B.MANIFEST_NAME)
    assert [e["seed"] for e in manifest["jobs"].values()] == [0]

    again = B.plan(DEMO, seeds=seeds, sets=TINY, out=out)  # same arguments: the done job is skipped
    assert [j.seed for j in again.pending()] == [1, 2]
    res = B.run_batch(again)
    assert res == {**res, "jobs": 3, "done": 3, "failed": 0, "files": 18}
    sprites = _sprites(out)
    assert [p.name for p in sprites] == [f"demo_sprite_0000{i}_.png" for i in (1, 2, 3)]
    assert len({hashlib.sha256(p.read_bytes()).hexdigest() for p in sprites}) == 3  # distinct seeds, distinct art
    entries = B.load_manifest(out / B.MANIFEST_NAME)["jobs"].values()
    listed = sorted(f for e in entries for f in e["files"])
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != B.MANIFEST_NAME)
    assert listed == on_disk and len(set(listed)) == 18  # every output once, each listed once
    assert res["model_loads"] == 2  # once per process (two runs here), not once per job

    prompts = tmp_path / "samplers.txt"  # prompt lines into another input: one of them is not a sampler
    prompts.write_text("euler\nno_such_sampler\nheun\n")
    failing = B.plan(DEMO, prompts=B.read_prompts(prompts), prompt_spec="3.sampler", sets=TINY, out=out)
    res = B.run_batch(failing)
    assert res["done"] == 2 and res["failed"] == 1  # the bad job is reported; the others ran
    bad = [e for e in B.load_manifest(out / B.MANIFEST_NAME)["jobs"].values() if e["status"] == "failed"]
    assert [(e["prompt"], e["code"]) for e in bad] == [("no_such_sampler", BAD_INPUT)]
    assert "no_such_sampler" in bad[0]["message"]


def test_cli_ray_without_ray_says_how_to_install(tmp_path):
    code = ("import sys; sys.modules['ray'] = None\n"  # Ray not installed: `import ray` raises ImportError
            "from spriteforge.cli.main import main\n"
            f"sys.exit(main(['run', {str(DEMO)!r}, '--ray', '--seeds', '0:2', '--out', {str(tmp_path / 'o')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "ENGINE_UNAVAILABLE" in r.stderr and "pip install 'comfyui-spriteforge[ray]'" in r.stderr
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_ray_is_imported_only_when_a_batch_runs_on_it():
    code = ("import sys, spriteforge.cli.main, spriteforge.cli.run, spriteforge.execution.batch, "
            "spriteforge.execution.ray_batch\nsys.exit('ray' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=300).returncode == 0


def test_job_identity_is_the_arguments(tmp_path):
    def keys(**kw):
        return [j.key for j in B.plan(DEMO, out=tmp_path, **{"seeds": [0, 1], "sets": TINY, **kw}).jobs]

    same = keys()
    assert same == keys() and len(set(same)) == 2  # the same arguments: the same jobs (what a restart skips)
    others = keys(sets=TINY + ["3.cfg=5"]) + keys(seed_spec="6.seed") + keys(engine="torch") + keys(seeds=[1, 2])
    assert not set(same) & set(others[:6]) and others[6] == same[1]  # seed 1 is the same job in a wider range


def test_cli_batch_in_process_then_again_skips_it(tmp_path, capsys):
    from spriteforge.cli.main import main

    out = tmp_path / "out"
    argv = ["run", str(DEMO), "--seeds", "4:6", "--out", str(out), "-q"] + [a for s in TINY for a in ("--set", s)]
    assert main(argv) == 0
    assert "2/2 job(s) done, 0 failed, 12 file(s)" in capsys.readouterr().out
    before = _outputs(out)
    assert main(argv) == 0  # the same command again: nothing to do, nothing written
    assert "2/2 job(s) done" in capsys.readouterr().out and _outputs(out) == before


def _outputs(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
