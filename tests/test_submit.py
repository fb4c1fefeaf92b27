"""execution/submit.py and `spriteforge submit` against a small fake ComfyUI speaking the same protocol.

The fake (stdlib http.server + a minimal WebSocket server side) implements POST /prompt
(validation with ComfyUI's node_errors format), GET /queue, GET /history/{id}, GET /view,
POST /interrupt, POST /queue {delete}, GET /object_info and /ws (status, execution_start,
executing, progress, executed, execution_success / execution_error / execution_interrupted),
and executes prompts with SpriteForge's in-process runner. Bound to 127.0.0.1 on an
ephemeral port; every wait is bounded.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import itertools
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import spriteforge
from spriteforge.errors import SpriteForgeError
from spriteforge.execution import graph as G
from spriteforge.execution.submit import ComfyServer, WebSocket, server_url, submit_workflow

pytest.importorskip("torch")
REPO = Path(__file__).resolve().parents[1]
PACK_PARENT = str(Path(spriteforge.__file__).parent.parent)  # where the spriteforge under test is imported from


class _Interrupt(Exception):
    pass


_RUN_LOCK = threading.Lock()  # one fake executes at a time, as one ComfyUI does (interrupts are process-wide)


class FakeComfy:
    """A ComfyUI stand-in: one worker executes queued prompts in order with spriteforge.execution.runner."""

    def __init__(self, root: Path, *, node_delay: float = 0.0, extra_load: int = 0, crash_on_start: bool = False,
                 crash_after: int | None = None, drop_on_view: int | None = None, drip: str | None = None,
                 forget: bool = False, subfolder: str | None = None, filename: str | None = None):
        """``crash_after``: finish that many prompts, then crash when the next one starts (a drop mid-batch);
        ``drop_on_view``: crash on that /view download (1 = the first), mid-way through a job's outputs;
        ``drip``: GET requests whose path starts with it are answered one byte every 0.1 s, never completely;
        ``forget``: accept prompts (200 + prompt_id) and then lose them (in neither queue nor history);
        ``subfolder``, ``filename``: the subfolder / file name every output is reported under (what a hostile server
        could send)."""
        self.drip, self.forget, self.subfolder, self.filename = drip, forget, subfolder, filename
        self.crash_after = crash_after
        self.drop_on_view = drop_on_view
        self.views = 0
        self.finished = 0
        self.root = root
        (root / "input").mkdir(parents=True, exist_ok=True)
        (root / "output").mkdir(exist_ok=True)
        self.node_delay = node_delay
        self.extra_load = extra_load
        self.crash_on_start = crash_on_start
        self.sockets: dict[str, tuple] = {}
        self.lock = threading.Lock()
        self.pending: list = []
        self.running: list = []
        self.history: dict = {}
        self.received: list = []
        self.interrupts: list = []
        self.deleted: list = []
        self.interrupt_flag = threading.Event()
        self.wake = threading.Condition(self.lock)
        self._base_info = G.object_info()
        self.stopped = False
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _json(self, obj, status=200):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _body(self):
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n) or b"{}")

            def do_GET(self):
                u = urllib.parse.urlsplit(self.path)
                q = dict(urllib.parse.parse_qsl(u.query))
                if fake.drip and u.path.startswith(fake.drip):
                    return fake._drip(self)
                if u.path == "/ws":
                    return fake._ws(self, q.get("clientId") or uuid.uuid4().hex)
                if u.path == "/queue":
                    with fake.lock:
                        pend = [[0, "other", {}, {}, []]] * fake.extra_load + [list(p[:2]) for p in fake.pending]
                        return self._json({"queue_running": [list(r[:2]) for r in fake.running],
                                           "queue_pending": pend})
                if u.path.startswith("/history/"):
                    pid = u.path.split("/", 2)[2]
                    with fake.lock:
                        h = fake.history.get(pid)
                    return self._json({pid: h} if h else {})
                if u.path == "/view":
                    fake.views += 1
                    if fake.drop_on_view is not None and fake.views >= fake.drop_on_view:
                        fake.stop()
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    base = fake.root / ("output" if q.get("type", "output") == "output" else "temp")
                    p = base / q.get("subfolder", "") / q["filename"]
                    if not p.is_file():
                        return self._json({"error": "not found"}, 404)
                    data = p.read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if u.path == "/object_info":
                    return self._json(fake.info)
                self._json({"error": "no route"}, 404)

            def do_POST(self):
                body = self._body()
                if self.path == "/prompt":
                    return self._json(*fake._queue(body))
                if self.path == "/interrupt":
                    fake.interrupts.append(body.get("prompt_id"))
                    with fake.lock:
                        if any(r[1] == body.get("prompt_id") for r in fake.running) or not body.get("prompt_id"):
                            fake.interrupt_flag.set()
                    return self._json({})
                if self.path == "/queue":
                    with fake.lock:
                        ids = set(body.get("delete") or [])
                        fake.deleted += list(ids)
                        fake.pending = [p for p in fake.pending if p[1] not in ids]
                    return self._json({})
                self._json({"error": "no route"}, 404)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.worker = threading.Thread(target=self._work, daemon=True)
        self.worker.start()

    @property
    def info(self) -> dict:
        """object_info with LoadImage listing this server's input folder, like ComfyUI."""
        info = json.loads(json.dumps(self._base_info))
        files = sorted(p.name for p in (self.root / "input").iterdir() if p.is_file())
        info["LoadImage"]["input"]["required"]["image"][1]["options"] = files
        return info

    def _drip(self, h: BaseHTTPRequestHandler):
        """The start of a valid answer, then one byte every 0.1 s without end (until the fake stops)."""
        try:
            for byte in itertools.chain(b"HTTP/1.1 200 OK\r\nX-Slow: ", itertools.repeat(ord("y"))):
                if self.stopped:
                    break
                h.wfile.write(bytes([byte]))
                h.wfile.flush()
                time.sleep(0.1)
        except OSError:  # the client gave up
            pass
        h.close_connection = True

    # ------------------------------------------------------------------ websocket (server side)
    def _ws(self, h: BaseHTTPRequestHandler, sid: str):
        key = h.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        h.send_response(101)
        h.send_header("Upgrade", "websocket")
        h.send_header("Connection", "Upgrade")
        h.send_header("Sec-WebSocket-Accept", accept)
        h.end_headers()
        h.wfile.flush()
        lock = threading.Lock()
        with self.lock:
            self.sockets[sid] = (h.wfile, lock, h.connection)
        self._send_to(sid, "status", {"status": {"exec_info": {"queue_remaining": 0}}, "sid": sid})
        self._send_binary(sid, b"\x00\x00\x00\x01" + b"fakejpeg")  # a preview frame: clients must skip it
        try:
            while not self.stopped:
                hdr = h.rfile.read(2)
                if len(hdr) < 2:
                    break
                n = hdr[1] & 0x7F
                if n == 126:
                    n = struct.unpack("!H", h.rfile.read(2))[0]
                elif n == 127:
                    n = struct.unpack("!Q", h.rfile.read(8))[0]
                h.rfile.read(4 + n)
                if hdr[0] & 0x0F == 0x8:
                    break
        except OSError:
            pass
        with self.lock:
            if self.sockets.get(sid, (None,))[0] is h.wfile:
                del self.sockets[sid]
        h.close_connection = True

    def _frame(self, op: int, payload: bytes) -> bytes:
        n = len(payload)
        head = bytes([0x80 | op]) + (bytes([n]) if n < 126 else (bytes([126]) + struct.pack("!H", n) if n < 65536
                                                                   else bytes([127]) + struct.pack("!Q", n)))
        return head + payload

    def _send_binary(self, sid, payload):
        self._raw(sid, self._frame(0x2, payload))

    def _raw(self, sid, data):
        with self.lock:
            s = self.sockets.get(sid)
        if s is None:
            return
        try:
            with s[1]:
                s[0].write(data)
                s[0].flush()
        except (OSError, ValueError):  # the client went away
            pass

    def _send_to(self, sid, kind, data):
        if sid is None:  # broadcast
            with self.lock:
                sids = list(self.sockets)
            for s in sids:
                self._send_to(s, kind, data)
            return
        self._raw(sid, self._frame(0x1, json.dumps({"type": kind, "data": data}).encode()))

    # ------------------------------------------------------------------ queue + worker
    def _queue(self, body):
        prompt = body.get("prompt")
        self.received.append(body)
        if not isinstance(prompt, dict):
            return {"error": {"type": "no_prompt", "message": "No prompt provided", "details": "", "extra_info": {}},
                    "node_errors": {}}, 400
        issues = G.validate_prompt(copy.deepcopy(prompt), self.info)
        if issues:
            node_errors = {}
            for i in issues:
                _c, typ, opts = G.input_spec(self.info.get(i.class_type, {}), i.input or "")
                val = (prompt.get(i.node_id) or {}).get("inputs", {}).get(i.input)
                ne = node_errors.setdefault(i.node_id, {"errors": [], "dependent_outputs": [], "class_type": i.class_type})
                ne["errors"].append({"type": i.kind, "message": i.kind.replace("_", " "), "details": i.input or "",
                                     "extra_info": {"input_name": i.input, "input_config": [typ, opts],
                                                    "received_value": val}})
            return {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                              "details": "", "extra_info": {}}, "node_errors": node_errors}, 400
        pid = body.get("prompt_id") or str(uuid.uuid4())
        if self.forget:
            return {"prompt_id": pid, "number": len(self.received), "node_errors": {}}, 200
        with self.wake:
            self.pending.append((0, pid, prompt, {"client_id": body.get("client_id"), **(body.get("extra_data") or {})}))
            self.wake.notify()
        return {"prompt_id": pid, "number": len(self.received), "node_errors": {}}, 200

    def _work(self):
        from spriteforge.progress import Interrupted
        from spriteforge.execution.runner import run_workflow

        while not self.stopped:
            with self.wake:
                while not self.pending and not self.stopped:
                    self.wake.wait(0.2)
                if self.stopped:
                    return
                item = self.pending.pop(0)
                self.running = [item]
            _n, pid, prompt, extra = item
            sid = extra.get("client_id")
            if self.crash_on_start or (self.crash_after is not None and self.finished >= self.crash_after):
                self.stop()
                return
            self.interrupt_flag.clear()
            self._send_to(sid, "execution_start", {"prompt_id": pid})
            status, messages = "success", []

            def on_event(kind, d, pid=pid, sid=sid):
                if kind == "executing":
                    self._send_to(sid, "executing", {"node": d["node"], "display_node": d["node"], "prompt_id": pid})
                    t_end = time.monotonic() + self.node_delay
                    while time.monotonic() < t_end:
                        if self.interrupt_flag.is_set():
                            raise _Interrupt()
                        time.sleep(0.01)
                    if self.interrupt_flag.is_set():
                        raise _Interrupt()
                    self._send_to(sid, "progress", {"value": 1, "max": 1, "node": d["node"], "prompt_id": pid})
                elif kind == "executed" and d.get("output"):
                    self._send_to(sid, "executed", {"node": d["node"], "display_node": d["node"],
                                                    "output": d["output"], "prompt_id": pid})

            outputs = {}
            try:
                with _RUN_LOCK:
                        res = run_workflow(prompt, out_dir=self.root / "output", input_dir=self.root / "input",
                                       on_event=on_event)
                outputs = res.outputs
                self._send_to(sid, "execution_success", {"prompt_id": pid})
            except (_Interrupt, Interrupted):
                status = "error"
                messages = [["execution_interrupted", {"prompt_id": pid, "node_id": "?"}]]
                self._send_to(sid, "execution_interrupted", {"prompt_id": pid, "node_id": "?", "node_type": "?"})
            except SpriteForgeError as exc:
                status = "error"
                nid = exc.details.get("node_id", "?")
                data = {"prompt_id": pid, "node_id": nid, "node_type": exc.details.get("class_type", "?"),
                        "exception_message": str(exc), "exception_type": "SpriteForgeError", "traceback": []}
                messages = [["execution_error", data]]
                self._send_to(sid, "execution_error", data)
            for key in ("subfolder", "filename"):
                if getattr(self, key) is not None:
                    for ui in outputs.values():
                        for it in ui.get("images", []):
                            it[key] = getattr(self, key)
            with self.lock:
                self.history[pid] = {"prompt": [0, pid, prompt, extra, []], "outputs": outputs,
                                     "status": {"status_str": status, "completed": status == "success",
                                                "messages": messages}}
                self.running = []
                self.finished += 1
            self._send_to(sid, "executing", {"node": None, "prompt_id": pid})

    def stop(self):
        """Drop everything like a crashed server: listening socket and open websockets."""
        self.stopped = True
        with self.lock:
            socks = list(self.sockets.values())
        for _w, _l, conn in socks:
            try:
                conn.shutdown(2)
            except OSError:
                pass
        threading.Thread(target=self.httpd.shutdown, daemon=True).start()
        self.httpd.server_close()


@pytest.fixture
def servers(tmp_path):
    made = []

    def make(name="a", **kw):
        root = tmp_path / f"srv_{name}"
        s = FakeComfy(root, **kw)
        rgba = np.zeros((16, 16, 4), np.uint8)
        rgba[4:12, 4:12] = [250, 40, 40, 255]
        Image.fromarray(rgba).save(root / "input" / "sprite.png")
        made.append(s)
        return s

    yield make
    for s in made:
        if not s.stopped:
            s.stop()


def _wf(prefix="hero", factor=2):
    return G.fill_defaults({
        "1": {"class_type": "LoadImage", "inputs": {"image": "sprite.png"}},
        "2": {"class_type": "SpriteForgePixelDownscale",
              "inputs": {"image": ["1", 0], "method": "box", "mode": "factor", "factor": factor, "width": 8, "height": 8}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    })


def test_websocket_client_roundtrip(servers):
    s = servers()
    ws = WebSocket(s.url.replace("http", "ws") + "/ws?clientId=abc", timeout=5)
    first = ws.recv_json()
    assert first["type"] == "status" and first["data"]["sid"] == "abc"
    ws.send("hello")  # masked client frame; the fake reads and drops it
    ws.close()


def test_single_run_downloads_outputs(servers, tmp_path):
    s = servers()
    events = []
    jobs = submit_workflow(_wf(), [s.url], out_dir=tmp_path / "out", on_event=lambda k, d: events.append(k),
                           timeout=60, poll_interval=0.2)
    assert [j.status for j in jobs] == ["done"]
    f = tmp_path / "out" / "hero_00001_.png"
    assert jobs[0].files == [f] and np.asarray(Image.open(f)).shape[:2] == (8, 8)
    assert s.received[0]["client_id"] == ComfyServer(s.url).client_id or s.received[0]["client_id"]
    assert "executing" in events and "done" in events
    # again: same server file name -> a counter suffix locally, never an overwrite
    submit_workflow(_wf(), [s.url], out_dir=tmp_path / "out", timeout=60, poll_interval=0.2)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["hero_00001_.png", "hero_00002_.png"]


def test_graph_format_uses_server_object_info(servers, tmp_path):
    s = servers()
    graph = G.api_to_graph(_wf("graph"))
    jobs = submit_workflow(graph, [s.url], out_dir=tmp_path / "o", timeout=60, poll_interval=0.2)
    assert jobs[0].status == "done" and jobs[0].files[0].name == "graph_00001_.png"
    assert s.received[0]["extra_data"]["extra_pnginfo"]["workflow"]["nodes"]


def test_refused_workflow_is_explained(servers, tmp_path):
    s = servers()
    with pytest.raises(SpriteForgeError) as ei:
        submit_workflow(_wf(factor=0), [s.url], out_dir=tmp_path, timeout=30, overrides=["2.method=\"fancy\""])
    msg = str(ei.value)
    assert "node 2 (SpriteForgePixelDownscale), input 'factor': 0 is below the minimum 1. Set it to at least 1." in msg
    assert "input 'method': \"fancy\" is not one of the choices" in msg


def test_execution_error_is_readable(servers, tmp_path):
    s = servers()
    wf = _wf()
    wf["1"]["inputs"]["image"] = "sprite.png"
    (s.root / "input" / "broken.png").write_bytes(b"not a png")  # listed, but unreadable
    wf["1"]["inputs"]["image"] = "broken.png"
    jobs = submit_workflow(wf, [s.url], out_dir=tmp_path, timeout=60, poll_interval=0.2)
    assert jobs[0].status == "failed"
    assert "node 1 (LoadImage) failed: [BAD_INPUT]" in jobs[0].error and "is not a readable image" in jobs[0].error


def test_batch_prompts_spread_over_least_loaded_servers(servers, tmp_path):
    a = servers("a", node_delay=0.05)
    b = servers("b", node_delay=0.05, extra_load=5)  # busy with other people's work
    lines = [f"line{i}" for i in range(4)]
    jobs = submit_workflow(_wf(), [b.url, a.url], prompts=lines, prompt_input="3.filename_prefix",
                           out_dir=tmp_path / "out", timeout=90, poll_interval=0.2, max_inflight=2)
    assert [j.status for j in jobs] == ["done"] * 4
    # the first jobs went to the idle server, none to the busy one while the idle one had room
    assert jobs[0].server.url == a.url and jobs[1].server.url == a.url
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [f"line{i}_00001_.png" for i in range(4)]
    sent = [r["prompt"]["3"]["inputs"]["filename_prefix"] for r in a.received + b.received]
    assert sorted(sent) == lines


def test_job_retried_when_its_server_drops(servers, tmp_path):
    dead = servers("dead", crash_on_start=True)
    ok = servers("ok")
    events = []
    jobs = submit_workflow(_wf("retry"), [dead.url, ok.url], out_dir=tmp_path / "out", timeout=60,
                           poll_interval=0.2, on_event=lambda k, d: events.append(k))
    assert jobs[0].status == "done" and jobs[0].server.url == ok.url
    assert jobs[0].servers_tried == [dead.url, ok.url]
    assert "server_down" in events and "retry" in events
    assert (tmp_path / "out" / "retry_00001_.png").exists()


def test_unreachable_server(tmp_path):
    with pytest.raises(SpriteForgeError) as ei:
        submit_workflow(_wf(), ["http://127.0.0.1:9"], out_dir=tmp_path, timeout=10, http_timeout=2)
    assert ei.value.code == "ENGINE_UNAVAILABLE" and "cannot reach ComfyUI" in str(ei.value)


def test_stop_interrupts_runs_on_the_server(servers, tmp_path):
    s = servers(node_delay=5.0)
    stop = threading.Event()
    out: dict = {}

    def go():
        out["jobs"] = submit_workflow(_wf(), [s.url], prompts=["a", "b", "c"], prompt_input="3.filename_prefix",
                                      out_dir=tmp_path, timeout=60, poll_interval=0.1, stop=stop)

    t = threading.Thread(target=go)
    t.start()
    deadline = time.monotonic() + 20
    while not s.running and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    t.join(30)
    assert not t.is_alive()
    assert s.interrupts and s.interrupts[0] == s.history.get(s.interrupts[0], {}).get("prompt", [0, s.interrupts[0]])[1]
    assert s.deleted  # the queued one was removed
    assert {j.status for j in out["jobs"]} == {"interrupted"}


def test_cli_submit_batch_and_ctrl_c(servers, tmp_path):
    s = servers(node_delay=0.0)
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(_wf()))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# comment\nknight\n\nwizard\n")
    env = {**os.environ, "PYTHONPATH": PACK_PARENT}
    r = subprocess.run([sys.executable, "-m", "spriteforge.cli.main", "submit", str(wf), "--server", s.url,
                        "--prompts", str(prompts), "--prompt-input", "3.filename_prefix", "--out", str(tmp_path / "o"),
                        "--timeout", "60"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert sorted(Path(p).name for p in r.stdout.split()) == ["knight_00001_.png", "wizard_00001_.png"]

    slow = servers("slow", node_delay=30.0)
    # Ctrl-C as a terminal gives it: a shell runs a background job (CI started with `&`) with SIGINT ignored, and an
    # ignored SIGINT is inherited, and kept by Python, so the child gets the default disposition back
    p = subprocess.Popen([sys.executable, "-m", "spriteforge.cli.main", "submit", str(wf), "--server", slow.url,
                          "--out", str(tmp_path / "o2"), "--timeout", "60"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 40
    while not slow.running and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    _out, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert slow.interrupts, err


# --------------------------------------------------------------------------- every wait bounded (issue 22.5)

class RawServer:
    """A TCP server on 127.0.0.1 whose every connection is given to ``serve(conn, stopped)`` in a thread."""

    def __init__(self, serve):
        self.stopped = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list = []

        def accept():
            while not self.stopped.is_set():
                try:
                    conn, _ = self.sock.accept()
                except OSError:
                    return
                self.conns.append(conn)
                threading.Thread(target=self._serve, args=(serve, conn), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()

    def _serve(self, serve, conn):
        try:
            conn.recv(65536)
            serve(conn, self.stopped)
        except OSError:
            pass

    def close(self):
        self.stopped.set()
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def raw_server():
    made = []

    def make(serve):
        made.append(RawServer(serve))
        return made[-1]

    yield make
    for s in made:
        s.close()


def _silent(conn, stopped):
    stopped.wait()  # accepts, reads the request, never answers


def _dripping(conn, stopped):
    for byte in itertools.chain(b"HTTP/1.1 200 OK\r\nX-Slow: ", itertools.repeat(ord("y"))):
        if stopped.wait(0.1):
            return
        conn.sendall(bytes([byte]))


def _answers(status: str, body: bytes, ctype: str = "text/plain"):
    def serve(conn, stopped):
        conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                     f"Connection: close\r\n\r\n".encode() + body)
    return serve


def _in_thread(fn, limit: float = 120):
    """Run ``fn`` in a thread; (returned value, raised exception). Fails the test when it has not ended after
    ``limit`` seconds: a generous bound so that a regression fails instead of hanging the suite."""
    out: dict = {}

    def go():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(limit)
    assert not t.is_alive(), "the submit did not end: a wait is unbounded"
    return out.get("value"), out.get("error")


@pytest.mark.parametrize("serve", [_silent, _dripping], ids=["silent", "dripping"])
def test_timeout_bounds_connecting(raw_server, tmp_path, serve):
    s = raw_server(serve)
    _, err = _in_thread(lambda: submit_workflow(_wf(), [s.url], out_dir=tmp_path, timeout=1.5, http_timeout=600))
    assert isinstance(err, SpriteForgeError) and err.code == "ENGINE_UNAVAILABLE", err
    assert "no server answered within the time limit (--timeout 1.5 s)" in err.message


def test_dripping_answer_is_cut_at_the_request_limit_without_timeout(raw_server, tmp_path):
    # no --timeout: each request still ends after http_timeout, however often a byte arrives
    s = raw_server(_dripping)
    _, err = _in_thread(lambda: submit_workflow(_wf(), [s.url], out_dir=tmp_path, http_timeout=1))
    assert isinstance(err, SpriteForgeError) and err.code == "ENGINE_UNAVAILABLE", err
    assert "no complete answer within 1 s" in err.message


def test_dripping_history_mid_run_ends_at_the_timeout(servers, tmp_path):
    s = servers(drip="/history")  # runs the prompt, then drips every /history answer
    jobs, err = _in_thread(lambda: submit_workflow(_wf(), [s.url], out_dir=tmp_path / "o", timeout=8,
                                                   http_timeout=600, poll_interval=0.2))
    assert err is None, err
    assert [j.status for j in jobs] == ["timed_out"] and jobs[0].code == "ENGINE_UNAVAILABLE"
    assert "did not finish within the time limit (--timeout 8 s)" in jobs[0].error
    assert jobs[0].prompt_id in jobs[0].error


def test_dripping_history_without_timeout_drops_the_server(servers, tmp_path):
    s = servers(drip="/history")
    jobs, err = _in_thread(lambda: submit_workflow(_wf(), [s.url], out_dir=tmp_path / "o", http_timeout=1,
                                                   poll_interval=0.2, max_attempts=1))
    assert err is None, err
    assert [j.status for j in jobs] == ["failed"] and "no complete answer within 1 s" in jobs[0].error


def test_lost_prompt_is_reported(servers, tmp_path):
    s = servers(forget=True)  # says "queued", then shows the prompt nowhere
    events = []
    jobs, err = _in_thread(lambda: submit_workflow(_wf(), [s.url], out_dir=tmp_path, poll_interval=0.1,
                                                   max_attempts=2, on_event=lambda k, d: events.append(k)))
    assert err is None, err
    assert [j.status for j in jobs] == ["failed"] and jobs[0].attempts == 2 and jobs[0].code == "ENGINE_UNAVAILABLE"
    assert "in neither its queue nor its history" in jobs[0].error
    assert events.count("lost") == 2 and len(s.received) == 2


def test_lost_prompt_is_queued_again_elsewhere(servers, tmp_path):
    lossy, ok = servers("lossy", forget=True), servers("ok")
    events = []
    jobs, err = _in_thread(lambda: submit_workflow(_wf("again"), [lossy.url, ok.url], out_dir=tmp_path / "o",
                                                   poll_interval=0.1, on_event=lambda k, d: events.append(k)))
    assert err is None, err
    assert [j.status for j in jobs] == ["done"] and jobs[0].servers_tried == [lossy.url, ok.url]
    assert "lost" in events and "retry" in events and (tmp_path / "o" / "again_00001_.png").is_file()


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999", "http://[::1", "http://127.0.0.1:0", "ftp://127.0.0.1:21",
                                 "http://", "http://127.0.0.1:port", "http://user@127.0.0.1:8188",
                                 "http://127.0.0.1:8188/?q=1", "http://bad host:8188"])
def test_bad_server_addresses_are_refused(tmp_path, url):
    with pytest.raises(SpriteForgeError) as ei:
        submit_workflow(_wf(), [url], out_dir=tmp_path, timeout=5)
    assert ei.value.code == "BAD_INPUT" and "is not a server address" in ei.value.message, ei.value


def test_server_addresses_normalised():
    assert server_url("127.0.0.1:8188") == "http://127.0.0.1:8188"
    assert server_url(" http://[::1]:8188/ ") == "http://[::1]:8188"
    assert server_url("https://example.org/comfy/") == "https://example.org/comfy"


@pytest.mark.parametrize("answer", [_answers("500 Internal Server Error", b"500 Internal Server Error"),
                                    _answers("200 OK", b"<html>a web page</html>", "text/html"),
                                    _answers("200 OK", b'{"hello": "world"}', "application/json"),
                                    lambda conn, stopped: conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")],
                         ids=["500", "html", "other-json", "not-http"])
def test_a_server_that_answers_wrongly_is_not_unreachable(raw_server, tmp_path, answer):
    s = raw_server(answer)
    _, err = _in_thread(lambda: submit_workflow(_wf(), [s.url], out_dir=tmp_path, timeout=30))
    assert isinstance(err, SpriteForgeError) and err.code == "ENGINE_UNAVAILABLE", err
    assert "answered, but not as ComfyUI does" in err.message and "cannot reach" not in err.message
    assert s.url in err.message


def test_graph_workflow_on_a_server_that_answers_wrongly(raw_server, tmp_path):
    # a graph needs the server's /object_info first: a 500 there is named as such too
    s = raw_server(_answers("500 Internal Server Error", b"boom"))
    _, err = _in_thread(lambda: submit_workflow(G.api_to_graph(_wf()), [s.url], out_dir=tmp_path, timeout=30))
    assert isinstance(err, SpriteForgeError) and err.code == "ENGINE_UNAVAILABLE", err
    assert "/object_info answered 500" in err.message and "not as ComfyUI does" in err.message


@pytest.mark.parametrize("framing", ["content-length", "chunked", "until-close"])
def test_http_answers_in_every_framing(raw_server, framing):
    body = json.dumps({"queue_running": [[0, "p1", {}, {}, []]], "queue_pending": [[1, "p2", {}, {}, []]]}).encode()
    if framing == "chunked":
        head, payload = "Transfer-Encoding: chunked\r\n", b"".join(
            b"%x;ext=1\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7]) for i in range(0, len(body), 7)) + b"0\r\n\r\n"
    elif framing == "content-length":
        head, payload = f"Content-Length: {len(body)}\r\n", body
    else:
        head, payload = "", body

    def serve(conn, stopped):
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{head}\r\n".encode() + payload)
        if framing == "until-close":
            conn.shutdown(socket.SHUT_WR)
        else:
            stopped.wait()  # keeps the connection open: the answer's own framing must end the read

    s = raw_server(serve)
    srv = ComfyServer(s.url, timeout=60)
    assert srv.queue() == ["p1", "p2"] and srv.queue_load() == 2


def test_outputs_named_outside_the_folder_are_not_written(servers, tmp_path):
    s = servers(subfolder="../../escape")
    out = tmp_path / "deep" / "out"
    jobs = submit_workflow(_wf(), [s.url], out_dir=out, timeout=60, poll_interval=0.2)
    assert jobs[0].status == "failed" and jobs[0].code == "BAD_INPUT" and "outside the output folder" in jobs[0].error
    assert not (tmp_path / "escape").exists() and not any(out.rglob("*.png"))


def test_an_output_folder_that_is_a_file_is_refused_before_anything_is_queued(servers, tmp_path):
    s = servers()
    out = tmp_path / "out"
    out.write_text("my notes")
    with pytest.raises(SpriteForgeError) as e:
        submit_workflow(_wf(), [s.url], out_dir=out, timeout=60, poll_interval=0.2)
    assert e.value.code == "BAD_INPUT" and "existing file" in e.value.message
    assert out.read_text() == "my notes" and s.history == {}  # nothing ran on the server


def test_a_server_subfolder_through_a_link_out_of_the_folder_creates_nothing_outside(servers, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "lnk").symlink_to(outside, target_is_directory=True)
    s = servers(subfolder="lnk/made_outside")
    jobs = submit_workflow(_wf(), [s.url], out_dir=out, timeout=60, poll_interval=0.2)
    assert jobs[0].status == "failed" and jobs[0].code == "BAD_INPUT" and "leads outside" in jobs[0].error
    assert list(outside.iterdir()) == [] and s.views == 0  # not even the sub-folder is made there


@pytest.mark.parametrize("name", ["../../escape.png", "{tmp}/escape.png", "sub/../../escape.png"])
def test_output_file_names_with_a_path_are_not_written(servers, tmp_path, name):
    s = servers(filename=name.format(tmp=tmp_path))  # ComfyUI reports a plain name; a path in it is refused
    out = tmp_path / "deep" / "out"
    jobs = submit_workflow(_wf(), [s.url], out_dir=out, timeout=60, poll_interval=0.2)
    assert jobs[0].status == "failed" and jobs[0].code == "BAD_INPUT" and "plain file name" in jobs[0].error
    assert not (tmp_path / "escape.png").exists() and not any(out.rglob("*.png")) and s.views == 0


def test_downloads_never_follow_a_link(servers, tmp_path):
    s = servers()
    out = tmp_path / "out"
    out.mkdir()
    (out / "hero_00001_.png").symlink_to(tmp_path / "target.png")  # dangling: writing through it lands outside
    jobs = submit_workflow(_wf(), [s.url], out_dir=out, timeout=60, poll_interval=0.2)
    assert jobs[0].status == "done" and jobs[0].files == [out / "hero_00001__1.png"]
    assert not (tmp_path / "target.png").exists() and (out / "hero_00001_.png").is_symlink()


def test_cli_submit_help_and_bad_values(tmp_path):
    from spriteforge.cli.main import build_parser, main

    sub = build_parser()._subparsers._group_actions[0].choices["submit"]
    text = sub.format_help()
    assert "``" not in text and ":func:" not in text and ":class:" not in text
    shown = re.findall(r"\bexample_workflows/\S+\.json", text)
    assert shown and all((REPO / p).is_file() for p in shown), shown
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(_wf()))
    for bad in (["--timeout", "0"], ["--timeout", "nan"], ["--max-inflight", "0"], ["--retries", "-1"],
                ["--server", "http://127.0.0.1:99999"]):
        assert main(["-q", "submit", str(wf), "--out", str(tmp_path / "o"), *bad]) == 19, bad
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- a real ComfyUI (opt-in)

@pytest.mark.skipif(not os.environ.get("SPRITEFORGE_COMFYUI"), reason="set SPRITEFORGE_COMFYUI=/path/to/ComfyUI "
                    "(see tests/comfyui_server.py) to run submit and the routes against a real ComfyUI")
def test_real_comfyui_submit_routes_and_palette_file(tmp_path):
    """The HTTP/WebSocket client, the routes' statuses and Palette Load's confinement in a real ComfyUI running
    this checkout (``--base-directory`` with only this pack in its custom_nodes)."""
    import urllib.error
    import urllib.request

    from spriteforge.tests.comfyui_server import server

    base_dir = tmp_path / "base"
    for d in ("custom_nodes", "input", "user", "temp", "models"):
        (base_dir / d).mkdir(parents=True)
    (base_dir / "custom_nodes" / "spriteforge").symlink_to(Path(spriteforge.__file__).parent, target_is_directory=True)
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[4:12, 4:12] = [250, 40, 40, 255]
    Image.fromarray(rgba).save(base_dir / "input" / "sprite.png")
    (base_dir / "input" / "mine.hex").write_text("ff0000\n0000ff\n")
    cfg = tmp_path / "extra_model_paths.yaml"
    cfg.write_text(f"sf_submit:\n    base_path: {base_dir / 'models'}\n")
    with server(tmp_path, cfg, tmp_path / "server_out", "--base-directory", str(base_dir), "--database-url",
                "sqlite:///:memory:", ready="SpriteForgePixelPaletteLoad") as (_proc, base, _info):
        jobs = submit_workflow(_wf("real"), [base], prompts=["a", "b"], prompt_input="3.filename_prefix",
                               out_dir=tmp_path / "o", timeout=240)
        assert [j.status for j in jobs] == ["done", "done"], [j.error for j in jobs]
        assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a_00001_.png", "b_00001_.png"]

        def palette(file):
            wf = _wf("pal")
            wf["0"] = {"class_type": "SpriteForgePixelPaletteLoad", "inputs": {"name": "pico-8", "file": file}}
            wf["4"] = {"class_type": "SpriteForgePixelQuantize", "inputs": {"image": ["2", 0], "palette": ["0", 0]}}
            wf["3"]["inputs"]["images"] = ["4", 0]
            return submit_workflow(G.fill_defaults(wf), [base], out_dir=tmp_path / "p", timeout=240)[0]

        assert palette("mine.hex").status == "done"
        for bad in ("/etc/passwd.hex", "../../../../etc/x.hex"):
            job = palette(bad)
            assert job.status == "failed" and "[BAD_INPUT]" in job.error, job.error

        def status(path):
            try:
                with urllib.request.urlopen(base + path, timeout=60) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

        got = {n: status(f"/spriteforge/model_family?name={urllib.parse.quote(n)}")[0]
               for n in (".", "..", "/etc/passwd", "missing.safetensors")}
        assert got == {".": 400, "..": 400, "/etc/passwd": 400, "missing.safetensors": 404}
        code, caps = status("/spriteforge/capabilities")
        assert code == 200 and str(tmp_path) not in caps and str(REPO) not in caps
