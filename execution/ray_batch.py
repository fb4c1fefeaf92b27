"""Run a batch (:mod:`spriteforge.execution.batch`) on a Ray cluster: ``spriteforge run WF --ray``.

Long-lived actors (:class:`~spriteforge.execution.batch.Worker`, one per GPU, else per ``--workers``) hold a
runner Cache, so each loads the models once and then runs job after job on whatever engine and device it has.
The driver keeps one job in flight per actor; a finished job's files come back as bytes and the driver alone
writes them (:meth:`Batch.finish`: files, then the manifest). When an actor dies (killed, out of memory, its
node gone) its job goes back on the queue and a fresh actor takes its place, so every job's outputs are
written exactly once. Ray is optional (``pip install 'comfyui-spriteforge[ray]'``) and imported here only.
"""

from __future__ import annotations

import collections
import logging

from ..errors import ENGINE_UNAVAILABLE, SpriteForgeError, classify
from ..progress import Progress, check_interrupt
from .batch import Batch, Event, Job, Worker, summary

INSTALL = "pip install 'comfyui-spriteforge[ray]'"
MAX_ATTEMPTS = 3


def import_ray():
    """The ``ray`` module, or ENGINE_UNAVAILABLE with the install line."""
    try:
        import ray
    except ImportError:
        raise SpriteForgeError(ENGINE_UNAVAILABLE, f"--ray needs Ray, which is not installed. Install it with "
                               f"`{INSTALL}` (or run without --ray).") from None
    return ray


def connect(ray, address: str = "local") -> bool:
    """Join the cluster at ``address`` (``local``: start one on this machine); True when this call started Ray
    (and so should shut it down). A process already connected (``ray.init`` done) keeps its cluster."""
    if ray.is_initialized():
        return False
    _check_reachable(address)
    kw = dict(log_to_driver=False, logging_level=logging.WARNING)
    if address == "local":
        kw["include_dashboard"] = False
    try:
        ray.init(address=address, **kw)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise SpriteForgeError(ENGINE_UNAVAILABLE, f"could not join the Ray cluster at {address!r} ({exc}). Start it "
                               "with `ray start --head` (or use --ray local), then give its address.") from exc
    return True


def _check_reachable(address: str) -> None:
    """A ``HOST:PORT`` nobody answers on fails now, not after Ray's minutes of retries."""
    import re
    import socket

    m = re.fullmatch(r"([\w.\-]+|\[[0-9a-fA-F:]+\]):(\d+)", address)
    if not m:
        return  # local, auto, ray://...: Ray's own checks
    try:
        socket.create_connection((m.group(1).strip("[]"), int(m.group(2))), timeout=5).close()
    except OSError as exc:
        raise SpriteForgeError(ENGINE_UNAVAILABLE, f"no Ray cluster answers at {address} ({exc}). Start one there with "
                               "`ray start --head`, or use --ray local for one on this machine.") from None


def run_batch_ray(batch: Batch, *, address: str = "local", workers: int | None = None,
                  on_event: Event | None = None, stream=None) -> dict:
    """Run the batch's pending jobs on Ray; returns :func:`~spriteforge.execution.batch.summary`."""
    ray = import_ray()
    started = connect(ray, address)
    try:
        _Driver(ray, batch, workers, on_event or (lambda kind, data: None)).run(stream)
    finally:
        if started:
            ray.shutdown()
    return summary(batch)


class _Driver:
    """One job in flight per actor; results written as they come; dead actors replaced, their jobs re-queued."""

    def __init__(self, ray, batch: Batch, workers: int | None, emit: Event):
        self.ray, self.batch, self.emit = ray, batch, emit
        res = ray.cluster_resources()
        gpus = int(res.get("GPU", 0))
        self.size = workers or gpus or max(1, int(res.get("CPU", 1)) // 4)
        opts = {"num_gpus": 1, "num_cpus": 0} if gpus else {"num_cpus": 1}
        self.actor_cls = ray.remote(max_restarts=0)(Worker).options(**opts)
        self.pnginfo = ray.put({"workflow": batch.graph} if batch.graph else None)
        self.queue: collections.deque[Job] = collections.deque(batch.pending())
        self.starting: dict = {}   # info ref -> actor not yet ready
        self.running: dict = {}    # result ref -> (job, actor)
        self.idle: list = []
        self.names: dict = {}      # actor -> "host:pid", for the manifest
        self.spares = self.size * MAX_ATTEMPTS  # replacements allowed for actors that died

    def run(self, stream) -> None:
        bar = Progress(len(self.queue), "batch", stream=stream)
        try:
            for _ in range(min(self.size, len(self.queue))):
                self._start_actor()
            while self.queue or self.running:
                self._dispatch()
                ready, _ = self.ray.wait(list(self.starting) + list(self.running), num_returns=1, timeout=0.5)
                for ref in ready:
                    if ref in self.starting:
                        self._actor_ready(ref)
                    elif self._job_returned(ref):
                        bar.update()
                check_interrupt()  # the interrupt point while waiting
        finally:
            for actor in self.idle + [a for _, a in self.running.values()] + list(self.starting.values()):
                self.ray.kill(actor)  # Ctrl-C, an error or the end: no actor is left holding models

    def _start_actor(self) -> None:
        actor = self.actor_cls.remote(self.batch.models_dir, self.batch.input_dir)
        self.starting[actor.info.remote()] = actor

    def _actor_ready(self, ref) -> None:
        actor = self.starting.pop(ref)
        try:
            info = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:  # died while starting (killed, out of memory, node gone)
            self._lost(actor, None, exc)
            return
        self.names[actor] = f"{info['host']}:{info['pid']}"
        self.emit("worker", {"pid": info["pid"], "host": info["host"], "actor": actor})
        self.idle.append(actor)

    def _dispatch(self) -> None:
        while self.queue and self.idle:
            job, actor = self.queue.popleft(), self.idle.pop()
            job.attempts += 1
            ref = actor.run.remote(self.batch.job_prompt(job), self.pnginfo)
            self.running[ref] = (job, actor)
            self.emit("dispatched", {"job": job, "actor": actor})
        if self.queue and not (self.idle or self.running or self.starting):
            raise SpriteForgeError(ENGINE_UNAVAILABLE, f"every Ray worker died and {len(self.queue)} job(s) are left. "
                                   "See the Ray logs (out of memory?); run the same command again to finish them.")

    def _job_returned(self, ref) -> bool:
        job, actor = self.running.pop(ref)
        try:
            result = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:  # raised by the job itself, not coded: reported per job
            err = classify(getattr(exc, "cause", None) or exc, context="running a batch job")
            result = {"code": err.code, "message": err.message}
        except self.ray.exceptions.RayError as exc:  # the worker died (killed, out of memory, node gone)
            return self._lost(actor, job, exc)
        result["worker"] = self.names.get(actor)
        self.emit("done", {"job": job, "entry": self.batch.finish(job, result)})
        self.idle.append(actor)
        return True

    def _lost(self, actor, job: Job | None, exc) -> bool:
        """An actor died: its job goes back on the queue (or fails after MAX_ATTEMPTS: True); a fresh actor
        replaces it."""
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        self.emit("worker_lost", {"actor": actor, "job": job, "reason": reason})
        failed = job is not None and job.attempts >= MAX_ATTEMPTS
        if job is not None:
            if not failed:
                self.queue.appendleft(job)
            else:
                self.emit("done", {"job": job, "entry": self.batch.finish(job, {
                    "code": ENGINE_UNAVAILABLE, "message": f"its Ray worker died {job.attempts} times "
                    "(out of memory?). See the Ray logs; run the same command again to retry it."})})
        if self.spares > 0 and self.queue:
            self.spares -= 1
            self._start_actor()
        return failed


__all__ = ["run_batch_ray", "import_ray", "connect", "INSTALL"]
