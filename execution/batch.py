"""Batches of one workflow: a job per seed and/or prompt line, outputs written once, a manifest of jobs done.

Framework-free: :func:`run_batch` runs the jobs in this process with one shared runner
:class:`~spriteforge.execution.runner.Cache` (models load once), and
:mod:`spriteforge.execution.ray_batch` runs the same jobs on a Ray cluster. Both hand every finished job to
:meth:`Batch.finish`, which writes the outputs into ``out`` (through :class:`~spriteforge.paths.OutputFolder`: never
overwriting, never through a link) and then the manifest.

* A job's identity (:attr:`Job.key`) is a hash of the workflow, its seed, its prompt line, the ``--set``
  overrides, ``--engine`` and the inputs the seed and line go to. The manifest (``out/spriteforge_batch.jsonl`` by
  default, JSON Lines: a header, then lines appended and fsynced) gets a "writing" line naming a job's files and
  their sha256 before they are written and a "done" line after, so a restarted batch skips the jobs already done
  and writes no job twice.
* A job runs in a fresh temporary folder (:func:`run_job`) and comes back as ``(relative path, bytes)``;
  a job that fails with a coded error is recorded with its code and the others go on.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import BAD_INPUT, SpriteForgeError, classify
from ..progress import Interrupted, Progress
from ..paths import OutputFolder
from .submit import load_prompts_file

MANIFEST_NAME = "spriteforge_batch.jsonl"
MANIFEST_VERSION = 1
LOADER_PREFIX = "SpriteForgeLoad"  # nodes that load model files: counted as model loads
Event = Callable[[str, dict], None]


def parse_seeds(text: str) -> list[int]:
    """``A:B`` (A up to but not including B, like Python's ``range``), ``A:B:STEP`` or a single ``N``.

    A job of batch_size N draws seeds seed..seed+N-1, so ``--seeds 0:800:8`` gives 100 jobs that share no seed.
    """
    m = re.fullmatch(r"\s*(\d+)\s*(?::\s*(\d+)\s*(?::\s*(\d+)\s*)?)?", str(text))
    if not m or m.group(3) == "0" or (m.group(2) is not None and int(m.group(2)) <= int(m.group(1))):
        raise SpriteForgeError(BAD_INPUT, f"--seeds {text!r} is not A:B, A:B:STEP or N with B above A and STEP above "
                               "0. Write e.g. --seeds 0:100 (seeds 0 to 99) or --seeds 0:800:8.")
    start = int(m.group(1))
    stop = int(m.group(2)) if m.group(2) is not None else start + 1
    return list(range(start, stop, int(m.group(3) or 1)))


def _target(spec: str | None, found: list[tuple[str, str]], what: str, flag: str, example: str) -> tuple[str, str]:
    if spec:
        if "." not in spec:
            raise SpriteForgeError(BAD_INPUT, f"{flag} {spec!r} is not NODE_ID.INPUT (e.g. {example}).")
        return tuple(spec.rsplit(".", 1))
    from .graph import _id_key

    if len(found) == 1:
        return found[0]
    found = sorted(found, key=lambda t: (_id_key(t[0]), t[1]))
    names = ", ".join(f"{n}.{i}" for n, i in found)
    if not found:
        raise SpriteForgeError(BAD_INPUT, f"the workflow has no {what}. Name one with {flag} NODE_ID.INPUT "
                               f"(e.g. {example}).")
    raise SpriteForgeError(BAD_INPUT, f"the workflow has several {what}s ({names}). Choose one with "
                           f"{flag} NODE_ID.INPUT.")


def seed_input(prompt: dict, info: dict, spec: str | None = None) -> tuple[str, str]:
    """The (node id, input) ``--seeds`` sets: ``spec``, else the one input named ``seed`` that the editor
    randomises (``control_after_generate``): a sampler's noise seed, not e.g. a palette's k-means seed."""
    from .graph import input_spec

    found = [(nid, name) for nid, node in prompt.items() for name in (node.get("inputs") or {})
             if "seed" in name and input_spec(info.get(node["class_type"]) or {}, name)[2]
             .get("control_after_generate")]
    return _target(spec, found, "generation seed input", "--seed-input", "3.seed")


def prompt_input(prompt: dict, spec: str | None = None) -> tuple[str, str]:
    """The (node id, input) each ``--prompts`` line replaces: ``spec``, else the ``positive`` input of the
    workflow's one SpriteForgeEncodePrompt (several: BAD_INPUT, name one)."""
    found = [(nid, "positive") for nid, node in prompt.items() if node.get("class_type") == "SpriteForgeEncodePrompt"]
    return _target(spec, found, "prompt input", "--prompt-input", "2.positive")


def read_prompts(path) -> list[str]:
    """The ``--prompts`` file: one prompt per non-empty line, ``#`` lines are comments (as ``submit`` reads it)."""
    return load_prompts_file(path)


@dataclass
class Job:
    index: int
    key: str
    seed: int | None = None
    text: str | None = None
    attempts: int = 0

    @property
    def label(self) -> str:
        parts = ([f"seed {self.seed}"] if self.seed is not None else []) + \
                ([repr(self.text[:40])] if self.text is not None else [])
        return " ".join(parts) or "run"


@dataclass
class Batch:
    """Everything a batch needs, validated before anything runs or is written."""

    prompt: dict                      # the API prompt after --set (and --engine)
    graph: dict | None                # the graph format, embedded in PNGs as "workflow"
    jobs: list[Job]
    out: Path
    manifest_path: Path
    seed_at: tuple | None = None
    prompt_at: tuple | None = None
    models_dir: str | None = None
    input_dir: str | None = None
    manifest: dict = field(default_factory=dict)

    def job_prompt(self, job: Job) -> dict:
        """The API prompt of one job: the batch's prompt with its seed and prompt line in place."""
        p = copy.deepcopy(self.prompt)
        if job.seed is not None:
            p[self.seed_at[0]]["inputs"][self.seed_at[1]] = job.seed
        if job.text is not None:
            p[self.prompt_at[0]]["inputs"][self.prompt_at[1]] = job.text
        return p

    def pending(self) -> list[Job]:
        """The jobs the manifest does not list as done (failed ones run again)."""
        done = self.manifest["jobs"]
        return [j for j in self.jobs if (done.get(j.key) or {}).get("status") != "done"]

    def finish(self, job: Job, result: dict) -> dict:
        """Record a finished job: a failure in one manifest line; outputs in two, around writing them into ``out``
        (never overwriting): "writing" with the names and sha256 of the files, then "done". A crash in between leaves
        a "writing" line that :meth:`settle` checks on the next start, so no job is written twice or lost."""
        entry = {"index": job.index, "seed": job.seed, "prompt": job.text, "attempts": job.attempts,
                 "worker": result.get("worker"), "seconds": round(result.get("seconds", 0.0), 3),
                 "model_loads": result.get("loads", 0)}
        if "code" in result:
            entry.update(status="failed", code=result["code"], message=result["message"], files=[])
        else:
            out = OutputFolder(self.out)
            placed = place_outputs(out, result["files"])
            entry.update(status="writing", files=[rel for rel, _ in placed],
                         sha256=[hashlib.sha256(blob).hexdigest() for _, blob in placed])
            append_manifest(self.manifest_path, job.key, entry)
            written = _write_placed(out, placed)
            entry = {**entry, "status": "done", "files": [p.relative_to(out.root).as_posix() for p in written]}
        self.manifest["jobs"][job.key] = entry
        append_manifest(self.manifest_path, job.key, entry)
        return entry

    def settle(self) -> None:
        """A job left "writing" by a crash is done when all its files are there with their recorded contents;
        otherwise it runs again (a partly written file stays, under its own name)."""
        for key, entry in self.manifest["jobs"].items():
            if entry.get("status") == "writing" and all(
                    _same(self.out / rel, digest) for rel, digest in zip(entry["files"], entry["sha256"])):
                entry["status"] = "done"
                append_manifest(self.manifest_path, key, entry)


def _same(path: Path, digest: str) -> bool:
    return path.is_file() and not path.is_symlink() and hashlib.sha256(path.read_bytes()).hexdigest() == digest


def plan(workflow, *, seeds: list[int] | None = None, prompts: list[str] | None = None, sets=(),
         seed_spec: str | None = None, prompt_spec: str | None = None, engine: str | None = None,
         models_dir=None, input_dir=None, out="output", manifest_path=None) -> Batch:
    """Read and validate ``workflow`` like ``spriteforge run`` does, and list the batch's jobs (seeds x prompts)."""
    from .. import paths
    from ..nodes.folders import Folders
    from .graph import read_workflow
    from .runner import prepare

    if not seeds and not prompts:
        raise SpriteForgeError(BAD_INPUT, "a batch needs --seeds A:B and/or --prompts FILE. Add one of them.")
    out = Path(out).expanduser()
    OutputFolder(out, label="--out").check()  # an existing file or a read-only place: refused before any job runs
    with paths.models_root(models_dir):
        run = prepare(workflow, Folders(input=input_dir or "input", output=out), overrides=sets, engine=engine)
    seed_at = _checked(run.prompt, seed_input(run.prompt, run.info, seed_spec)) if seeds else None
    prompt_at = _checked(run.prompt, prompt_input(run.prompt, prompt_spec)) if prompts else None
    wf_hash = hashlib.sha256(json.dumps(read_workflow(workflow), sort_keys=True).encode()).hexdigest()
    jobs = []
    for text in (prompts or [None]):
        for seed in (seeds or [None]):
            ident = json.dumps([wf_hash, seed, text, list(sets), engine, seed_at, prompt_at])
            jobs.append(Job(len(jobs), hashlib.sha256(ident.encode()).hexdigest()[:24], seed, text))
    mpath = Path(manifest_path) if manifest_path else out / MANIFEST_NAME
    models_dir = os.path.abspath(models_dir) if models_dir else None  # workers start in other folders
    input_dir = os.path.abspath(input_dir or "input")
    batch = Batch(prompt=run.prompt, graph=run.pnginfo.get("workflow"), jobs=jobs, out=out, manifest_path=mpath,
                  seed_at=seed_at, prompt_at=prompt_at, models_dir=models_dir, input_dir=input_dir,
                  manifest=load_manifest(mpath))
    batch.settle()
    return batch


def _checked(prompt: dict, at: tuple[str, str]) -> tuple[str, str]:
    from .graph import _find_node

    nid = _find_node(prompt, at[0])
    if at[1] not in prompt[nid].get("inputs", {}):
        raise SpriteForgeError(BAD_INPUT, f"node {nid} ({prompt[nid]['class_type']}) has no input {at[1]!r}. "
                               f"Choose one of: {', '.join(prompt[nid].get('inputs', {}))}.")
    return nid, at[1]


# --------------------------------------------------------------------------- manifest

def load_manifest(path: Path) -> dict:
    """``{"version", "jobs": {key: entry}}`` from the manifest at ``path`` (empty when absent; a later line for a key
    wins). A torn last line (a crash while appending) is dropped; a file that is not ours is BAD_INPUT, left as is."""
    path = Path(path)
    if path.is_symlink():
        raise SpriteForgeError(BAD_INPUT, f"the batch manifest {path} is a link. Remove the link or choose "
                               "another --manifest.")
    if not path.exists():
        return {"version": MANIFEST_VERSION, "jobs": {}}
    lines = path.read_bytes().decode("utf-8", "replace").split("\n")
    try:
        ours = json.loads(lines[0]) == _HEADER
    except ValueError:
        ours = False
    if not ours:
        raise SpriteForgeError(BAD_INPUT, f"{path} exists and is not a SpriteForge batch manifest; it is left as it "
                               "is. Choose another --out or --manifest.")
    jobs = {}
    for n, line in enumerate(lines[1:], 2):
        try:
            entry = json.loads(line) if line.strip() else None
        except ValueError:
            if n < len(lines):  # not the last line: the file was edited or damaged
                raise SpriteForgeError(BAD_INPUT, f"line {n} of the batch manifest {path} is not JSON. Correct or "
                                       "remove that line (its job then runs again).") from None
            _rewrite(path, lines[:-1])
            break
        if entry is not None:
            jobs[entry.pop("key")] = entry
    return {"version": MANIFEST_VERSION, "jobs": jobs}


_HEADER = {"spriteforge_batch_manifest": MANIFEST_VERSION}


def append_manifest(path: Path, key: str, entry: dict) -> None:
    """Append one job's line and fsync it: O(1) a job however long the batch, and a crash leaves whole lines (a torn
    last one is dropped on reading). Never through a link."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        if fh.tell() == 0:
            fh.write(json.dumps(_HEADER) + "\n")
        fh.write(json.dumps({"key": key, **entry}, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _rewrite(path: Path, lines: list[str]) -> None:
    """Replace the manifest by ``lines`` atomically (dropping a torn last line)."""
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("".join(line + "\n" for line in lines if line.strip()))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- one job

class Worker:
    """Runs jobs with one runner Cache, so the models load once per worker, not once per job."""

    def __init__(self, models_dir=None, input_dir=None):
        from .runner import Cache

        self.cache = Cache()
        self.models_dir, self.input_dir = models_dir, input_dir

    def run(self, prompt: dict, pnginfo: dict | None = None) -> dict:
        return run_job(prompt, self.cache, models_dir=self.models_dir, input_dir=self.input_dir, pnginfo=pnginfo)

    def info(self) -> dict:
        import socket

        return {"pid": os.getpid(), "host": socket.gethostname()}


def run_job(prompt: dict, cache, *, models_dir=None, input_dir=None, pnginfo=None) -> dict:
    """Run one job's prompt in a fresh folder: ``{"files": [(relative path, bytes)], "loads", "seconds"}``,
    or ``{"code", "message"}`` when it fails with a coded error."""
    from .runner import run_workflow

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="spriteforge-job-") as tmp:
        try:
            res = run_workflow(prompt, out_dir=tmp, input_dir=input_dir, models_dir=models_dir, cache=cache,
                               extra_pnginfo=pnginfo)
        except (Interrupted, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - reported per job, the batch goes on
            err = exc if isinstance(exc, SpriteForgeError) else classify(exc, context="running a batch job")
            return {"code": err.code, "message": err.message, "seconds": time.monotonic() - t0}
        root = Path(tmp)
        files = [(p.relative_to(root).as_posix(), p.read_bytes()) for p in sorted(root.rglob("*"))
                 if p.is_file() and not p.is_symlink()]
    loads = sum(1 for nid in res.executed if res.prompt[nid]["class_type"].startswith(LOADER_PREFIX))
    return {"files": files, "loads": loads, "seconds": time.monotonic() - t0}


# --------------------------------------------------------------------------- writing outputs

_COUNTED = re.compile(r"^(?P<base>.+)_(?P<n>\d{5})_(?P<rest>.*)$")


def write_outputs(out, files: list[tuple[str, bytes]]) -> list[Path]:
    """Write a job's files under ``out`` (:func:`place_outputs` names them); never overwriting, never through a link."""
    out = OutputFolder(out)
    return _write_placed(out, place_outputs(out, files))


def place_outputs(out: OutputFolder, files: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Where a job's files go in ``out`` (paths relative to it): the usual ``name_00001_.ext`` names with the counter
    above every file already there (a job's siblings, e.g. a sheet's .png/.json/.hex, keep one counter), other names
    with ``_1``, ``_2``... when taken. Makes the sub-folders (inside ``out`` only), writes no file."""
    groups: dict[tuple[str, str, bool], list[tuple[str, bytes]]] = {}
    for rel, blob in files:
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        if not parts or ".." in parts:
            continue  # a worker's relative name is ours; anything else is not written
        m = _COUNTED.match(parts[-1])
        stem, ext = (m.group("base"), m.group("rest")) if m else os.path.splitext(parts[-1])
        groups.setdefault(("/".join(parts[:-1]), stem, bool(m)), []).append((ext, blob))
    placed = []
    for (sub, stem, counted), items in groups.items():
        free = out.free_stem(stem, [ext for ext, _ in items], sub=sub, numbered=counted)
        placed += [(f"{sub}/{free}{ext}".lstrip("/"), blob) for ext, blob in items]
    return placed


def _write_placed(out: OutputFolder, placed: list[tuple[str, bytes]]) -> list[Path]:
    """The placed files created in ``out``; one whose name was taken meanwhile gets the next free one."""
    written = []
    for rel, blob in placed:
        sub, _, name = rel.rpartition("/")
        written.append(out.write_bytes(name, blob, sub=sub))
    return written


# --------------------------------------------------------------------------- in-process

def run_batch(batch: Batch, *, on_event: Event | None = None, stream=None) -> dict:
    """Run the batch's pending jobs in this process with one shared Cache; returns :func:`summary`."""
    emit = on_event or (lambda kind, data: None)
    worker = Worker(batch.models_dir, batch.input_dir)
    todo = batch.pending()
    bar = Progress(len(todo), "batch", stream=stream)
    for job in todo:
        job.attempts += 1
        result = worker.run(batch.job_prompt(job), {"workflow": batch.graph} if batch.graph else None)
        result["worker"] = f"pid {os.getpid()}"
        emit("done", {"job": job, "entry": batch.finish(job, result)})
        bar.update()
    return summary(batch)


def printer(stream) -> Event:
    """Events as lines on ``stream``: a failed job (its code and message) and a lost worker; done jobs are the bar."""
    def on_event(kind: str, data: dict) -> None:
        if kind == "done" and data["entry"]["status"] == "failed":
            e = data["entry"]
            stream.write(f"job {data['job'].label} failed: {e['code']}: {e['message']}\n")
        elif kind == "worker_lost" and data.get("job") is not None:
            stream.write(f"a worker died during job {data['job'].label} ({data['reason']}); it runs again\n")
        stream.flush()
    return on_event


def summary(batch: Batch) -> dict:
    """Counts over the batch's jobs in the manifest: done, failed, files, model loads."""
    entries = [batch.manifest["jobs"].get(j.key) or {} for j in batch.jobs]
    return {"jobs": len(batch.jobs), "done": sum(e.get("status") == "done" for e in entries),
            "failed": sum(e.get("status") == "failed" for e in entries),
            "files": sum(len(e.get("files") or []) for e in entries),
            "model_loads": sum(e.get("model_loads") or 0 for e in entries), "manifest": str(batch.manifest_path)}


__all__ = ["parse_seeds", "seed_input", "prompt_input", "read_prompts", "plan", "Batch", "Job", "Worker", "run_job",
           "run_batch", "printer", "write_outputs", "place_outputs", "load_manifest", "append_manifest", "summary",
           "MANIFEST_NAME"]
