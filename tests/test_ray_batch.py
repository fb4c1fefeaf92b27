"""`spriteforge run --ray` (issue #27): a seed-range batch of the built-in sprite workflow on a local Ray cluster
(2 CPUs, one cluster for the module), a worker killed mid-batch, a coded failure through the command line."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from spriteforge.errors import BAD_INPUT
from spriteforge.execution import batch as B
from spriteforge.execution.ray_batch import run_batch_ray
from spriteforge.progress import Interrupted, clear_interrupt, request_interrupt

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "example_workflows" / "api" / "sprite_demo.json"
TINY = ["3.steps=1", "3.batch_size=1"]  # the built-in demo model, one step, one sprite a job
FILES_PER_JOB = 6  # sprite .png + palette .hex, sheet .png/.json/.hex/.gpl


@pytest.fixture(scope="module")
def cluster():
    import ray

    ctx = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    yield ctx.address_info["address"]
    ray.shutdown()


def _outputs(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != B.MANIFEST_NAME)


def _entries(out: Path) -> list[dict]:
    return list(B.load_manifest(out / B.MANIFEST_NAME)["jobs"].values())


def _exactly_once(out: Path, jobs: int) -> list[dict]:
    """Every job done once: the files on disk are exactly the manifest's, none twice, FILES_PER_JOB each."""
    entries = _entries(out)
    assert len(entries) == jobs and all(e["status"] == "done" for e in entries)
    listed = sorted(f for e in entries for f in e["files"])
    assert listed == _outputs(out) and len(set(listed)) == jobs * FILES_PER_JOB
    return entries


def test_seed_batch_on_ray_interrupted_then_finished(cluster, tmp_path):
    out = tmp_path / "out"
    seeds = B.parse_seeds("10:14")

    def stop_after_first(kind, data):
        if kind == "done":
            request_interrupt()

    try:
        with pytest.raises(Interrupted):
            run_batch_ray(B.plan(DEMO, seeds=seeds, sets=TINY, out=out), workers=1, on_event=stop_after_first)
    finally:
        clear_interrupt()
    first = [e["seed"] for e in _entries(out)]
    assert first == [10]  # one worker, stopped after its first job

    batch = B.plan(DEMO, seeds=seeds, sets=TINY, out=out)  # the same arguments: only the rest runs
    assert sorted(j.seed for j in batch.pending()) == sorted(set(seeds) - set(first))
    res = run_batch_ray(batch, workers=2)
    assert res["done"] == 4 and res["failed"] == 0
    entries = _exactly_once(out, 4)
    assert sorted(e["seed"] for e in entries) == seeds
    sprites = sorted((out / "spriteforge").glob("demo_sprite_0*.png"))
    assert [p.name for p in sprites] == [f"demo_sprite_0000{i}_.png" for i in range(1, 5)]
    assert len({hashlib.sha256(p.read_bytes()).hexdigest() for p in sprites}) == 4  # distinct seeds, distinct art
    _loaded_once_per_worker(entries)


def _loaded_once_per_worker(entries: list[dict]) -> None:
    """Each worker (host:pid) loaded the model on its first job and never again: loads per worker, not per job."""
    by_worker = {}
    for e in entries:
        by_worker[e["worker"]] = by_worker.get(e["worker"], 0) + e["model_loads"]
    assert set(by_worker.values()) == {1}, by_worker
    assert len(by_worker) < len(entries)


def test_worker_killed_mid_batch_loses_nothing(cluster, tmp_path):
    out = tmp_path / "out"
    pids, killed, lost = {}, [], []

    def kill_third_dispatch(kind, data):
        if kind == "worker":
            pids[data["actor"]] = data["pid"]
        elif kind == "dispatched" and data["job"].index == 2 and not killed:
            os.kill(pids[data["actor"]], signal.SIGKILL)  # the actor that just took job 2, mid-batch
            killed.append(data["job"].key)
        elif kind == "worker_lost":
            lost.append(data["job"].key)

    res = run_batch_ray(B.plan(DEMO, seeds=list(range(5)), sets=TINY, out=out), workers=2,
                        on_event=kill_third_dispatch)
    assert killed and lost == killed  # the killed worker's job was lost once ...
    assert res["done"] == 5 and res["failed"] == 0  # ... and ran again elsewhere
    entries = _exactly_once(out, 5)
    assert [e["attempts"] for e in entries if e["index"] == 2] == [2]
    assert sorted(e["seed"] for e in entries) == list(range(5))
    _loaded_once_per_worker(entries)


def test_cli_ray_batch_reports_a_coded_failure_and_goes_on(cluster, tmp_path):
    out = tmp_path / "out"
    lines = tmp_path / "samplers.txt"
    lines.write_text("euler\n# a comment\nno_such_sampler\n")
    cmd = [sys.executable, "-m", "spriteforge.cli.main", "run", str(DEMO), "--ray", cluster, "--workers", "1",
           "--prompts", str(lines), "--prompt-input", "3.sampler", "--seeds", "3", "--out", str(out), "-q"]
    for s in TINY:
        cmd += ["--set", s]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stderr
    assert "1/2 job(s) done, 1 failed, 6 file(s)" in r.stdout
    assert "job seed 3 'no_such_sampler' failed: BAD_INPUT" in r.stderr
    entries = sorted(_entries(out), key=lambda e: e["index"])
    assert [(e["prompt"], e["seed"], e["status"]) for e in entries] == [("euler", 3, "done"),
                                                                        ("no_such_sampler", 3, "failed")]
    assert entries[1]["code"] == BAD_INPUT and len(_outputs(out)) == FILES_PER_JOB


def test_cli_unreachable_cluster_is_a_coded_error_at_once(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run([sys.executable, "-m", "spriteforge.cli.main", "run", str(DEMO), "--ray", f"127.0.0.1:{port}",
                        "--seeds", "0:2", "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "ENGINE_UNAVAILABLE" in r.stderr and "ray start --head" in r.stderr
    assert not (tmp_path / "o").exists()
