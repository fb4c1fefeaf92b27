"""Queue workflows on running ComfyUI servers and collect the results (``spriteforge submit``).

Standard library only: HTTP through :mod:`urllib`, and a small WebSocket client
(:class:`WebSocket`, RFC 6455, text/binary/ping/close) for ComfyUI's ``/ws`` messages.

* :class:`ComfyServer`: one server: ``object_info``, ``queue_load``, ``queue_prompt`` (POST /prompt with a
  ``client_id``; a refusal raises a :class:`SpriteForgeError` listing ``node_errors`` readably),
  ``history``, ``view``, ``interrupt``, ``delete_queued``.
* :func:`submit_workflow`: queue one run, or one run per batch prompt, spread over one or more servers:
  each job goes to the alive server with the shortest ``/queue`` (running + pending), follows ``/ws``
  for progress, downloads the outputs listed by ``/history`` through ``/view`` into one folder (never
  overwriting), and retries a job elsewhere when its server drops. Ctrl-C (``KeyboardInterrupt``) or
  the ``stop`` event interrupts the runs on the servers (POST /interrupt, queued ones deleted).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import queue
import re
import socket
import ssl
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ..errors import BAD_INPUT, ENGINE_INTERNAL, ENGINE_UNAVAILABLE, HINTS, SpriteForgeError

Event = Callable[[str, dict], None]
_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# --------------------------------------------------------------------------- WebSocket client

class WebSocketClosed(Exception):
    pass


class WebSocket:
    """A minimal RFC 6455 client: enough for ComfyUI's ``/ws`` (server frames unmasked, ours masked)."""

    def __init__(self, url: str, timeout: float = 10.0, headers: dict | None = None):
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("ws", "wss"):
            raise ValueError(f"not a ws:// or wss:// URL: {url}")
        port = u.port or (443 if u.scheme == "wss" else 80)
        sock = socket.create_connection((u.hostname, port), timeout=timeout)
        if u.scheme == "wss":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=u.hostname)
        key = base64.b64encode(os.urandom(16)).decode()
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        lines = [f"GET {path} HTTP/1.1", f"Host: {u.hostname}:{port}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.sock = sock
        self._buf = b""
        head = self._read_until(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].decode("latin-1")
        if " 101 " not in status + " ":
            sock.close()
            raise ConnectionError(f"WebSocket upgrade refused: {status}")
        accept = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()
        hdrs = {k.strip().lower(): v.strip() for k, _, v in
                (ln.decode("latin-1").partition(":") for ln in head.split(b"\r\n")[1:] if b":" in ln)}
        if hdrs.get("sec-websocket-accept") != accept:
            sock.close()
            raise ConnectionError("WebSocket upgrade answered with a wrong Sec-WebSocket-Accept")
        sock.settimeout(None)
        self._send_lock = threading.Lock()
        self.closed = False

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("connection closed during the WebSocket handshake")
            self._buf += chunk
        head, _, self._buf = self._buf.partition(marker)
        return head

    def _exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            try:
                chunk = self.sock.recv(max(65536, n - len(self._buf)))
            except OSError as exc:
                raise WebSocketClosed(str(exc)) from exc
            if not chunk:
                raise WebSocketClosed("connection closed")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def send(self, payload: bytes | str, opcode: int | None = None) -> None:
        if isinstance(payload, str):
            payload, op = payload.encode(), 0x1
        else:
            op = 0x2
        op = opcode if opcode is not None else op
        n = len(payload)
        head = bytes([0x80 | op])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        with self._send_lock:
            self.sock.sendall(head + mask + body)

    def recv(self) -> tuple[int, bytes]:
        """The next data message as (opcode, payload): 1 text, 2 binary. Answers pings; raises on close."""
        parts: list[bytes] = []
        first_op = None
        while True:
            b0, b1 = self._exact(2)
            fin, op = b0 & 0x80, b0 & 0x0F
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._exact(8))[0]
            mask = self._exact(4) if b1 & 0x80 else None
            data = self._exact(n)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            if op == 0x8:
                self.closed = True
                try:
                    self.send(data[:2], opcode=0x8)
                except OSError:
                    pass
                raise WebSocketClosed("closed by the server")
            if op == 0x9:
                self.send(data, opcode=0xA)
                continue
            if op == 0xA:
                continue
            if op in (0x1, 0x2):
                first_op = op
                parts = [data]
            elif op == 0x0:
                parts.append(data)
            if fin and first_op is not None:
                return first_op, b"".join(parts)

    def recv_json(self) -> dict | None:
        """The next text message decoded (binary preview frames are skipped)."""
        while True:
            op, data = self.recv()
            if op == 0x1:
                try:
                    return json.loads(data.decode("utf-8"))
                except ValueError:
                    continue

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.send(struct.pack("!H", 1000), opcode=0x8)
            except OSError:
                pass
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


# --------------------------------------------------------------------------- one server

class ServerDown(Exception):
    """The server cannot be reached (connection refused/reset, timeout)."""


def _unreachable(url: str, exc) -> SpriteForgeError:
    return SpriteForgeError(ENGINE_UNAVAILABLE, f"cannot reach ComfyUI at {url} ({exc}). Start it (python main.py "
                            f"--listen) or check the --server address.", hint="")


class ComfyServer:
    def __init__(self, url: str, timeout: float = 30.0):
        url = url.strip().rstrip("/")
        if "://" not in url:
            url = "http://" + url
        self.url = url
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex

    def __repr__(self):
        return f"ComfyServer({self.url})"

    @property
    def name(self) -> str:
        return urllib.parse.urlsplit(self.url).netloc

    def _request(self, method: str, path: str, body=None, *, raw: bool = False, timeout: float | None = None):
        data = None
        headers = {}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:
                payload = r.read()
                status = r.status
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            status = exc.code
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise ServerDown(f"{self.url}: {getattr(exc, 'reason', exc)}") from exc
        if raw:
            return status, payload
        try:
            return status, json.loads(payload.decode("utf-8")) if payload else None
        except ValueError:
            return status, payload.decode("utf-8", "replace")

    def object_info(self) -> dict:
        status, data = self._request("GET", "/object_info", timeout=max(self.timeout, 60))
        if status != 200 or not isinstance(data, dict):
            raise SpriteForgeError(ENGINE_INTERNAL, f"{self.url}/object_info answered {status}.")
        return data

    def queue_load(self) -> int:
        """Running + pending prompts (everyone's), from GET /queue."""
        status, data = self._request("GET", "/queue", timeout=min(self.timeout, 10))
        if status != 200 or not isinstance(data, dict):
            raise ServerDown(f"{self.url}/queue answered {status}")
        return len(data.get("queue_running") or []) + len(data.get("queue_pending") or [])

    def queue_prompt(self, prompt: dict, *, client_id: str | None = None, extra_data: dict | None = None,
                     prompt_id: str | None = None) -> str:
        body = {"prompt": prompt, "client_id": client_id or self.client_id}
        if extra_data:
            body["extra_data"] = extra_data
        if prompt_id:
            body["prompt_id"] = prompt_id
        status, data = self._request("POST", "/prompt", body)
        if status == 200 and isinstance(data, dict) and data.get("prompt_id"):
            self.last_node_errors = data.get("node_errors") or {}
            return str(data["prompt_id"])
        if isinstance(data, dict) and ("node_errors" in data or "error" in data):
            from .graph import format_node_errors

            err = data.get("error") if isinstance(data.get("error"), dict) else {"message": str(data.get("error"))}
            lines = format_node_errors(data.get("node_errors") or {}, prompt, err)
            raise SpriteForgeError(BAD_INPUT, f"{self.url} refused the workflow:\n  - " + "\n  - ".join(lines),
                                   hint="", details={"node_errors": data.get("node_errors"), "error": err})
        raise SpriteForgeError(ENGINE_INTERNAL, f"{self.url}/prompt answered {status}: {str(data)[:300]}")

    def history(self, prompt_id: str) -> dict | None:
        status, data = self._request("GET", f"/history/{urllib.parse.quote(prompt_id)}")
        if status != 200 or not isinstance(data, dict):
            return None
        return data.get(prompt_id)

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        q = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder or "", "type": type or "output"})
        status, data = self._request("GET", f"/view?{q}", raw=True, timeout=max(self.timeout, 120))
        if status != 200:
            raise SpriteForgeError(ENGINE_INTERNAL, f"{self.url}/view could not give {subfolder}/{filename} ({status}).")
        return data

    def interrupt(self, prompt_id: str | None = None) -> None:
        self._request("POST", "/interrupt", {"prompt_id": prompt_id} if prompt_id else {}, timeout=5)

    def delete_queued(self, prompt_ids: Iterable[str]) -> None:
        ids = list(prompt_ids)
        if ids:
            self._request("POST", "/queue", {"delete": ids}, timeout=5)

    def ws_url(self) -> str:
        u = urllib.parse.urlsplit(self.url)
        scheme = "wss" if u.scheme == "https" else "ws"
        return f"{scheme}://{u.netloc}{u.path}/ws?clientId={self.client_id}"


# --------------------------------------------------------------------------- jobs

@dataclass
class Job:
    index: int
    prompt: dict
    label: str = ""
    attempts: int = 0
    server: "ComfyServer | None" = None
    prompt_id: str | None = None
    status: str = "pending"  # pending, queued, running, done, failed, interrupted
    error: str | None = None
    files: list = field(default_factory=list)
    outputs: dict = field(default_factory=dict)
    node: str | None = None
    servers_tried: list = field(default_factory=list)
    warnings: list = field(default_factory=list)


class _Conn:
    """A server and its /ws listener thread (messages go to the shared event queue)."""

    def __init__(self, server: ComfyServer, events: "queue.Queue"):
        self.server = server
        self.events = events
        self.alive = True
        self.ws: WebSocket | None = None
        self.inflight: dict[str, Job] = {}
        self.thread: threading.Thread | None = None
        self._stop = False

    def start(self) -> bool:
        try:
            self.ws = WebSocket(self.server.ws_url(), timeout=self.server.timeout)
        except (OSError, ConnectionError, ValueError):
            self.ws = None
            return False
        self.thread = threading.Thread(target=self._listen, name=f"ws-{self.server.name}", daemon=True)
        self.thread.start()
        return True

    def _listen(self):
        ws = self.ws
        try:
            while not self._stop:
                msg = ws.recv_json()
                if isinstance(msg, dict):
                    self.events.put(("ws", self, msg))
        except (WebSocketClosed, OSError, ValueError):
            pass
        if not self._stop:
            self.events.put(("ws_closed", self, None))

    def stop(self):
        self._stop = True
        if self.ws is not None:
            self.ws.close()


def _unique(path: Path) -> Path:
    if not path.exists():
        return path
    k = 1
    while True:
        cand = path.with_name(f"{path.stem}_{k}{path.suffix}")
        if not cand.exists():
            return cand
        k += 1


def _explain_error(data: dict) -> str:
    """A readable line for a ws ``execution_error``: which node, what happened, what to do."""
    msg = str(data.get("exception_message") or "").strip()
    where = f"node {data.get('node_id')} ({data.get('node_type')})"
    m = re.search(r"\[([A-Z_]+)\]", msg)
    text = f"{where} failed: {msg or data.get('exception_type')}"
    if m and m.group(1) in HINTS and HINTS[m.group(1)] not in msg:
        text += f" What to do: {HINTS[m.group(1)]}"
    return text


def load_prompts_file(path) -> list[str]:
    """Batch lines: one prompt per non-empty line; lines starting with '#' are comments."""
    p = Path(path)
    if not p.is_file():
        raise SpriteForgeError(BAD_INPUT, f"prompts file {p} does not exist. Give a text file with one prompt per line.")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise SpriteForgeError(BAD_INPUT, f"prompts file {p} has no prompts. Put one prompt per line.")
    return lines


def make_jobs(prompt: dict, prompts: list[str] | None = None, prompt_input: str | None = None) -> list[Job]:
    from .graph import find_prompt_input

    if not prompts:
        return [Job(0, prompt, "run")]
    nid, name = find_prompt_input(prompt, prompt_input)
    jobs = []
    for i, text in enumerate(prompts):
        p = copy.deepcopy(prompt)
        p[nid]["inputs"][name] = text
        jobs.append(Job(i, p, f"{i + 1}/{len(prompts)} {text[:40]!r}"))
    return jobs


def _printer(stream) -> Event:
    tty = hasattr(stream, "isatty") and stream.isatty()

    def on_event(kind: str, d: dict):
        job = d.get("job")
        tag = f"[job {job.label} @ {job.server.name}]" if job is not None and job.server is not None else ""
        if kind == "queued":
            stream.write(f"{tag} queued as {job.prompt_id}\n")
        elif kind == "warning":
            stream.write(f"{tag} warning: these outputs will not run:\n" + "".join(f"  - {ln}\n" for ln in d["lines"]))
        elif kind == "executing":
            stream.write(f"{tag} node {d['node']} ({d.get('class_type')})\n")
        elif kind == "progress" and tty:
            stream.write(f"\r{tag} node {d.get('node')}: {d['value']}/{d['max']}   ")
            if d["value"] >= d["max"]:
                stream.write("\n")
        elif kind == "done":
            stream.write(f"{tag} done: {len(job.files)} file(s)\n")
        elif kind == "failed":
            stream.write(f"{tag} FAILED: {job.error}\n")
        elif kind == "retry":
            stream.write(f"{tag} server dropped; retrying the job elsewhere ({d.get('reason')})\n")
        elif kind == "server_down":
            stream.write(f"server {d['server'].url} is down ({d.get('reason')})\n")
        elif kind == "interrupted":
            stream.write("interrupting the runs on the servers...\n")
        stream.flush()
    return on_event


def submit_workflow(
    workflow,
    servers: Iterable[str | ComfyServer] = ("http://127.0.0.1:8188",),
    *,
    overrides: Iterable[str] = (),
    prompts: list[str] | None = None,
    prompt_input: str | None = None,
    out_dir: str | os.PathLike = "output",
    on_event: Event | None = None,
    progress_stream=None,
    max_inflight: int = 2,
    max_attempts: int = 3,
    poll_interval: float = 1.0,
    timeout: float | None = None,
    stop: threading.Event | None = None,
    download_temp: bool = False,
    http_timeout: float = 30.0,
) -> list[Job]:
    """Run ``workflow`` (path/JSON/dict, API or graph format) on ComfyUI ``servers``; returns the jobs.

    ``prompts``: one job per text, each replacing ``prompt_input`` (``NODE_ID.INPUT``; default the first
    SpriteForgeEncodePrompt's ``positive``). Outputs (``type: output``; previews too with
    ``download_temp``) are saved under ``out_dir``/subfolder, never overwriting. A job whose server drops
    is queued again on another server (up to ``max_attempts``). ``KeyboardInterrupt`` or ``stop`` interrupts
    the servers' runs (POST /interrupt, queued ones deleted) and re-raises / returns.
    A refused workflow raises at once (it would be refused everywhere).
    """
    srvs = [s if isinstance(s, ComfyServer) else ComfyServer(s, timeout=http_timeout) for s in servers]
    if not srvs:
        raise SpriteForgeError(BAD_INPUT, "no --server given. Give the address of a running ComfyUI.")
    if on_event is None and progress_stream is not None:
        on_event = _printer(progress_stream)
    prompt, graph = _load_for_servers(workflow, srvs, overrides)
    sched = _Scheduler(srvs, make_jobs(prompt, prompts, prompt_input), emit=on_event or (lambda k, d: None),
                       out=Path(out_dir), extra={"extra_pnginfo": {"workflow": graph}} if graph is not None else None,
                       max_inflight=max_inflight, max_attempts=max_attempts, download_temp=download_temp)
    sched.connect()
    sched.run(poll_interval=poll_interval, timeout=timeout, stop=stop)
    return sched.jobs


def _load_for_servers(workflow, srvs: list[ComfyServer], overrides) -> tuple[dict, dict | None]:
    """(API prompt with the overrides, graph or None): a graph is converted with a server's own node descriptions."""
    from . import graph as G

    data = G.read_workflow(workflow)
    info = None
    if G.is_graph_format(data):
        last = None
        for s in srvs:
            try:
                info = s.object_info()
                break
            except ServerDown as exc:
                last = exc
        if info is None:
            raise _unreachable(", ".join(s.url for s in srvs), last)
    prompt, graph = G.load_workflow(data, info=info or {})
    G.apply_overrides(prompt, overrides, info)
    return prompt, graph


class _Scheduler:
    """Spreads the jobs over the servers, follows them (WebSocket messages, history polls), downloads the results
    and queues a job again elsewhere when its server drops."""

    def __init__(self, srvs, jobs, *, emit, out, extra, max_inflight, max_attempts, download_temp):
        self.events: queue.Queue = queue.Queue()
        self.conns = [_Conn(s, self.events) for s in srvs]
        self.jobs = jobs
        self.pending = list(jobs)
        self.by_pid: dict[str, Job] = {}
        self.emit, self.out, self.extra = emit, out, extra
        self.max_inflight, self.max_attempts, self.download_temp = max_inflight, max_attempts, download_temp

    # ----------------------------------------------------------------- connections

    def connect(self) -> None:
        """Open every server's /ws (a server without one is still used, by polling); raise when none answers."""
        for c in self.conns:
            if not c.start():
                try:
                    c.server.queue_load()
                except ServerDown as exc:
                    c.alive = False
                    self.emit("server_down", {"server": c.server, "reason": str(exc)})
        if not any(c.alive for c in self.conns):
            raise _unreachable(", ".join(c.server.url for c in self.conns), "no server answered")

    def mark_down(self, conn: _Conn, reason: str) -> None:
        """``conn``'s server is gone: its jobs go back to the front of the queue (or fail after max_attempts)."""
        if not conn.alive:
            return
        conn.alive = False
        conn.stop()
        self.emit("server_down", {"server": conn.server, "reason": reason})
        for pid, job in list(conn.inflight.items()):
            self.by_pid.pop(pid, None)
            job.status, job.prompt_id, job.node = "pending", None, None
            if job.attempts >= self.max_attempts:
                job.status, job.error = "failed", f"gave up after {job.attempts} attempts (servers dropped: {reason})"
                self.emit("failed", {"job": job})
            else:
                self.emit("retry", {"job": job, "reason": reason})
                self.pending.insert(0, job)
        conn.inflight.clear()

    def _socket_closed(self, conn: _Conn) -> None:
        if conn.ws is not None:
            conn.ws.close()
        conn.ws = None
        try:  # a dropped socket: is the server still there?
            conn.server.queue_load()
            conn.start()
        except ServerDown as exc:
            self.mark_down(conn, str(exc))

    # ----------------------------------------------------------------- a job's end

    def finish(self, conn: _Conn, job: Job, entry: dict | None = None) -> None:
        """The job ran: read its history entry (unless given), download its outputs, mark it done."""
        conn.inflight.pop(job.prompt_id, None)
        self.by_pid.pop(job.prompt_id, None)
        try:
            entry = entry if entry is not None else self._history_when_written(conn, job)
            job.outputs = entry.get("outputs") or {}
            self._download(conn, job)
        except ServerDown as exc:
            self._lost_while_downloading(conn, job, exc)
            return
        job.status = "done"
        self.emit("done", {"job": job})

    @staticmethod
    def _history_when_written(conn: _Conn, job: Job) -> dict:
        deadline = time.monotonic() + 15
        while True:  # execution_success comes just before the history is written
            entry = conn.server.history(job.prompt_id)
            if entry is not None:
                return entry
            if time.monotonic() > deadline:
                return {}
            time.sleep(0.1)

    def _download(self, conn: _Conn, job: Job) -> None:
        for ui in job.outputs.values():
            for items in (ui or {}).values():
                if not isinstance(items, list):
                    continue
                for it in items:
                    if not (isinstance(it, dict) and "filename" in it):
                        continue
                    kind = it.get("type") or "output"
                    if kind != "output" and not self.download_temp:
                        continue
                    blob = conn.server.view(it["filename"], it.get("subfolder") or "", kind)
                    root = self.out if kind == "output" else self.out / kind
                    dest = root / (it.get("subfolder") or "") / Path(it["filename"]).name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest = _unique(dest)
                    dest.write_bytes(blob)
                    job.files.append(dest)

    def _lost_while_downloading(self, conn: _Conn, job: Job, exc: Exception) -> None:
        for f in job.files:  # a partial download: the retry brings every output again, each once
            try:
                f.unlink()
            except OSError:
                pass
        job.files, job.outputs = [], {}
        job.status = "pending"
        self.mark_down(conn, str(exc))
        if job.status == "pending" and job not in self.pending:
            if job.attempts < self.max_attempts:
                self.emit("retry", {"job": job, "reason": str(exc)})
                self.pending.insert(0, job)
            else:  # never left "pending" with nothing queued: that job would be lost silently
                job.status, job.error = "failed", f"gave up after {job.attempts} attempts (server dropped: {exc})"
                self.emit("failed", {"job": job})

    def fail(self, conn: _Conn, job: Job, text: str, status: str = "failed") -> None:
        conn.inflight.pop(job.prompt_id, None)
        self.by_pid.pop(job.prompt_id, None)
        job.status, job.error = status, text
        self.emit("failed", {"job": job})

    # ----------------------------------------------------------------- queueing

    def dispatch(self) -> None:
        """Queue pending jobs while a live server has room (the least loaded one this job has not failed on)."""
        while self.pending:
            conn = self._pick_server(self.pending[0])
            if conn is False:
                return
            if conn is not None:
                self._queue_on(conn, self.pending.pop(0))

    def _pick_server(self, job: Job):
        """The server for ``job``; False when none has room, None when the candidates dropped while asked."""
        cands = [c for c in self.conns if c.alive and len(c.inflight) < self.max_inflight]
        if not cands:
            return False
        loads = []
        for c in cands:
            try:
                loads.append((c.server.queue_load(), len(c.inflight), self.conns.index(c), c))
            except ServerDown as exc:
                self.mark_down(c, str(exc))
        if not loads:
            return None
        # prefer a server this job has not failed on
        loads.sort(key=lambda t: (t[3].server.url in job.servers_tried, t[0], t[1], t[2]))
        return loads[0][3]

    def _queue_on(self, conn: _Conn, job: Job) -> None:
        from .graph import format_node_errors

        job.attempts += 1
        job.server = conn.server
        job.servers_tried.append(conn.server.url)
        try:
            pid = conn.server.queue_prompt(job.prompt, extra_data=self.extra)
        except ServerDown as exc:
            self.pending.insert(0, job)
            job.attempts -= 1
            self.mark_down(conn, str(exc))
            return
        except SpriteForgeError:
            job.status = "failed"
            raise
        job.prompt_id, job.status = pid, "queued"
        partial = getattr(conn.server, "last_node_errors", None)
        if partial:  # ComfyUI queued the valid outputs only
            job.warnings = format_node_errors(partial, job.prompt)
            self.emit("warning", {"job": job, "lines": job.warnings})
        conn.inflight[pid] = job
        self.by_pid[pid] = job
        self.emit("queued", {"job": job})

    # ----------------------------------------------------------------- following the jobs

    def poll_history(self) -> None:
        """Catch what the WebSocket missed: a finished, failed or interrupted job in the servers' history."""
        for c in self.conns:
            if not c.alive:
                continue
            for pid, job in list(c.inflight.items()):
                try:
                    entry = c.server.history(pid)
                    if entry is None:
                        c.server.queue_load()  # still alive?
                        continue
                except ServerDown as exc:
                    self.mark_down(c, str(exc))
                    break
                st = entry.get("status") or {}
                if st.get("status_str") == "error" or (st.get("completed") is False and st.get("status_str")):
                    msgs = [m for m in st.get("messages") or []
                            if m and m[0] in ("execution_error", "execution_interrupted")]
                    if msgs and msgs[-1][0] == "execution_error":
                        self.fail(c, job, _explain_error(msgs[-1][1]))
                    else:
                        self.fail(c, job, "interrupted on the server", "interrupted")
                elif st.get("completed", True):
                    self.finish(c, job, entry)

    def handle(self, conn: _Conn, msg: dict) -> None:
        """One /ws message of ``conn``'s server."""
        kind = msg.get("type")
        d = msg.get("data") or {}
        job = self.by_pid.get(d.get("prompt_id")) if isinstance(d, dict) else None
        if job is None or conn.inflight.get(job.prompt_id) is not job:
            return
        if kind == "execution_start":
            job.status = "running"
            self.emit("running", {"job": job})
        elif kind == "executing":
            node = d.get("node")
            if node is None:
                self.finish(conn, job)
            else:
                job.node = node
                self.emit("executing", {"job": job, "node": node,
                                        "class_type": (job.prompt.get(str(node)) or {}).get("class_type")})
        elif kind == "progress":
            self.emit("progress", {"job": job, "node": d.get("node"), "value": d.get("value", 0),
                                   "max": d.get("max", 1)})
        elif kind == "executed":
            if d.get("output"):
                job.outputs[str(d.get("node"))] = d["output"]
        elif kind == "execution_success":
            self.finish(conn, job)
        elif kind == "execution_error":
            self.fail(conn, job, _explain_error(d))
        elif kind == "execution_interrupted":
            self.fail(conn, job, f"interrupted on the server at node {d.get('node_id')}", "interrupted")

    def interrupt_all(self) -> None:
        """Delete the queued jobs and interrupt the running ones on every server; mark every job interrupted."""
        self.emit("interrupted", {})
        for c in self.conns:
            if not c.alive or not c.inflight:
                continue
            running = [p for p, j in c.inflight.items() if j.status == "running"]
            queued = [p for p, j in c.inflight.items() if j.status != "running"]
            try:
                c.server.delete_queued(queued)
                for p in running or list(c.inflight)[:1]:
                    c.server.interrupt(p)
            except ServerDown:
                pass
            for job in c.inflight.values():
                job.status, job.error = "interrupted", "interrupted by the user"
        for job in self.pending:
            job.status, job.error = "interrupted", "not started (interrupted by the user)"

    # ----------------------------------------------------------------- the loop

    def run(self, *, poll_interval: float, timeout: float | None, stop: threading.Event | None) -> None:
        """Dispatch and follow until every job has ended, every server is down, ``stop`` is set or time is up."""
        t_end = None if timeout is None else time.monotonic() + timeout
        last_poll = time.monotonic()
        try:
            while self._step_dispatch(stop):
                if t_end is not None and time.monotonic() > t_end:
                    raise SpriteForgeError(ENGINE_INTERNAL, f"the runs did not finish within {timeout:.0f}s.",
                                           hint="Raise the timeout or check the servers.")
                self._next_event(min(poll_interval, 0.25))
                if time.monotonic() - last_poll >= poll_interval:
                    last_poll = time.monotonic()
                    self.poll_history()
        except KeyboardInterrupt:
            self.interrupt_all()
            raise
        finally:
            for c in self.conns:
                c.stop()

    def _step_dispatch(self, stop: threading.Event | None) -> bool:
        """Queue what can be queued; False when the loop is over."""
        self.dispatch()
        if not self.pending and not self.by_pid:
            return False
        if not any(c.alive for c in self.conns):
            for job in self.pending:
                job.status, job.error = "failed", "every server is down"
                self.emit("failed", {"job": job})
            return False
        if stop is not None and stop.is_set():
            self.interrupt_all()
            return False
        return True

    def _next_event(self, wait: float) -> None:
        try:
            src, conn, msg = self.events.get(timeout=wait)
        except queue.Empty:
            return
        if src == "ws":
            self.handle(conn, msg)
        elif src == "ws_closed" and conn.alive:
            self._socket_closed(conn)


__all__ = ["WebSocket", "WebSocketClosed", "ComfyServer", "ServerDown", "Job", "submit_workflow", "make_jobs",
           "load_prompts_file"]
