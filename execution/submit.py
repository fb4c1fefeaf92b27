"""Queue workflows on running ComfyUI servers and collect the results (``spriteforge submit``).

Standard library only: a small HTTP/1.1 client and a small WebSocket client (:class:`WebSocket`, RFC 6455,
text/binary/ping/close, for ComfyUI's ``/ws`` messages) over one buffered reader, :class:`_Wire`, whose every
read ends by a fixed time: a server that sends one byte at a time cannot make a wait longer.

* :class:`Deadline`: the whole submit's time limit; connecting, every request and every poll take their
  waits from what is left of it.
* :func:`server_url`: a ``--server`` value checked and normalised (BAD_INPUT for what cannot be an address).
* :class:`ComfyServer`: one server: ``object_info``, ``queue``/``queue_load``, ``queue_prompt`` (POST /prompt
  with a ``client_id``; a refusal raises a :class:`SpriteForgeError` listing ``node_errors`` readably),
  ``history``, ``view``, ``interrupt``, ``delete_queued``. No answer in time raises :class:`ServerDown`; an
  answer that is not ComfyUI's (an HTTP error, not JSON, not HTTP) raises :class:`BadAnswer`.
* :func:`submit_workflow`: queue one run, or one run per batch prompt, spread over one or more servers:
  each job goes to the alive server with the shortest ``/queue`` (running + pending), follows ``/ws``
  for progress, downloads the outputs listed by ``/history`` through ``/view`` into one folder (through
  :class:`~spriteforge.paths.OutputFolder`: never replacing a file, never leaving it), and queues a job again
  (elsewhere when it can) when its server drops or loses it. Ctrl-C (``KeyboardInterrupt``) or the ``stop``
  event interrupts the runs on the servers (POST /interrupt, queued ones deleted).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import math
import os
import queue
import re
import socket
import ssl
import struct
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ..errors import BAD_INPUT, ENGINE_UNAVAILABLE, HINTS, SpriteForgeError
from ..paths import OutputFolder

Event = Callable[[str, dict], None]
_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# --------------------------------------------------------------------------- time limits and bounded reading

class TimeUp(Exception):
    """The whole submit's time limit (``timeout``) has passed."""


class Deadline:
    """When the whole submit must end (``seconds=None``: never). Every connect, read and poll waits at most
    what is left of it, so no server, however slowly it answers, can make a wait outlast it."""

    def __init__(self, seconds: float | None = None):
        self.seconds = seconds
        self.end = math.inf if seconds is None else time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def within(self, seconds: float) -> float:
        """``seconds``, or what is left when that is less; :class:`TimeUp` when nothing is left."""
        left = self.left()
        if left <= 0:
            raise TimeUp(f"the time limit of {self.seconds:g} s has passed")
        return min(seconds, left)


def _seconds_until(until: float) -> float | None:
    """A socket timeout that ends at ``until`` (``time.monotonic()`` clock; inf = block); TimeoutError when past."""
    if until == math.inf:
        return None
    left = until - time.monotonic()
    if left <= 0:
        raise TimeoutError("no complete answer in time")
    return left


def _open_socket(u: urllib.parse.SplitResult, until: float) -> socket.socket:
    """A connected (TLS for https/wss) socket to ``u``'s host, every address tried within the time to ``until``."""
    port = u.port or (443 if u.scheme in ("https", "wss") else 80)
    err: OSError = ConnectionError("the host name resolves to no address")
    for family, kind, proto, _name, addr in socket.getaddrinfo(u.hostname, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(_seconds_until(until))
            sock.connect(addr)
            if u.scheme in ("https", "wss"):
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=u.hostname)
            return sock
        except OSError as exc:
            sock.close()
            err = exc
    raise err


class _Wire:
    """A socket read through a buffer where every read ends by ``until``: a server that sends one byte at a
    time cannot stretch an exchange past it (a per-read timeout alone would restart on every byte)."""

    def __init__(self, sock: socket.socket, until: float = math.inf):
        self.sock, self.until, self.buf = sock, until, bytearray()

    def _more(self) -> bool:
        self.sock.settimeout(_seconds_until(self.until))
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def send(self, data: bytes) -> None:
        self.sock.settimeout(_seconds_until(self.until))
        self.sock.sendall(data)

    def read_until(self, marker: bytes, limit: int) -> bytes:
        start = 0
        while (i := self.buf.find(marker, start)) < 0:
            if len(self.buf) > limit:
                raise BadAnswer(f"sent more than {limit} bytes without a line end")
            start = max(0, len(self.buf) - len(marker) + 1)
            if not self._more():
                raise ConnectionError("the connection closed in the middle of an answer")
        out = bytes(self.buf[:i])
        del self.buf[:i + len(marker)]
        return out

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._more():
                raise ConnectionError("the connection closed in the middle of an answer")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def rest(self, limit: int) -> bytes:
        while self._more():
            if len(self.buf) > limit:
                raise BadAnswer(f"sent more than {limit} bytes")
        out, self.buf = bytes(self.buf), bytearray()
        return out

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


# --------------------------------------------------------------------------- HTTP

class ServerDown(Exception):
    """The server cannot be used: it does not answer (refused, reset, too slow), or see :class:`BadAnswer`."""


class BadAnswer(ServerDown):
    """The server answered, but not as ComfyUI does: an HTTP error status, not JSON, not HTTP at all."""


_JSON_MAX = 256 << 20  # an answer's size limits: JSON, a downloaded file, a WebSocket frame
_FILE_MAX = 4 << 30
_WS_FRAME_MAX = 256 << 20


def _http(url: str, method: str, body: bytes | None, until: float, max_bytes: int) -> tuple[int, bytes]:
    """One HTTP/1.1 exchange (``Connection: close``) that is over by ``until`` however the server answers."""
    u = urllib.parse.urlsplit(url)
    wire = _Wire(_open_socket(u, until), until)
    try:
        head = [f"{method} {u.path or '/'}{'?' + u.query if u.query else ''} HTTP/1.1", f"Host: {u.netloc}",
                "Connection: close", "Accept: */*", "User-Agent: spriteforge"]
        if body is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        wire.send("\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + (body or b""))
        status, headers = _read_head(wire)
        if status in (204, 304):
            return status, b""
        return status, _read_body(wire, headers, max_bytes)
    finally:
        wire.close()


def _read_head(wire: _Wire) -> tuple[int, dict]:
    """The status and headers of an answer; BadAnswer as soon as its first bytes show it is not HTTP."""
    while len(wire.buf) < 5 and wire._more():
        pass
    if not wire.buf:
        raise ConnectionError("the server closed the connection without answering")
    if wire.buf[:5] != b"HTTP/":
        raise BadAnswer(f"answered {_snippet(bytes(wire.buf))!r}, which is not HTTP")
    return _parse_head(wire.read_until(b"\r\n\r\n", 1 << 16))


def _parse_head(head: bytes) -> tuple[int, dict]:
    lines = head.decode("latin-1").split("\r\n")
    m = re.fullmatch(r"HTTP/1\.[01] (\d{3})( .*)?", lines[0])
    if not m:
        raise BadAnswer(f"answered {_snippet(head)!r}, which is not HTTP")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(m.group(1)), headers


def _read_body(wire: _Wire, headers: dict, max_bytes: int) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        out = bytearray()
        while size := _chunk_size(wire.read_until(b"\r\n", 1024)):
            if len(out) + size > max_bytes:
                raise BadAnswer(f"sent more than {max_bytes} bytes")
            out += wire.exact(size)
            wire.exact(2)
        return bytes(out)
    if "content-length" in headers:
        n = _chunk_size(headers["content-length"].encode(), base=10)
        if n > max_bytes:
            raise BadAnswer(f"announced {n} bytes, more than the {max_bytes} expected")
        return wire.exact(n)
    return wire.rest(max_bytes)


def _chunk_size(text: bytes, base: int = 16) -> int:
    try:
        n = int(text.split(b";", 1)[0].strip(), base)
    except ValueError:
        raise BadAnswer(f"sent a malformed length {_snippet(text)!r}") from None
    if n < 0:
        raise BadAnswer("sent a negative length")
    return n


def _snippet(data: bytes | str, n: int = 60) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, (bytes, bytearray)) else str(data)
    text = " ".join(text.split())
    return text[:n] + ("..." if len(text) > n else "")


# --------------------------------------------------------------------------- WebSocket client

class WebSocketClosed(Exception):
    pass


class WebSocket:
    """A minimal RFC 6455 client: enough for ComfyUI's ``/ws`` (server frames unmasked, ours masked).

    The handshake is over within ``timeout`` seconds; afterwards :meth:`recv` waits for messages without limit
    (a quiet socket is normal while a long run executes; :meth:`close` ends the wait from another thread)."""

    def __init__(self, url: str, timeout: float = 10.0, headers: dict | None = None):
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("ws", "wss"):
            raise ValueError(f"not a ws:// or wss:// URL: {url}")
        until = time.monotonic() + timeout
        self._wire = wire = _Wire(_open_socket(u, until), until)
        key = base64.b64encode(os.urandom(16)).decode()
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        lines = [f"GET {path} HTTP/1.1", f"Host: {u.netloc}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        try:
            wire.send(("\r\n".join(lines) + "\r\n\r\n").encode())
            status, hdrs = _read_head(wire)
        except BaseException:
            wire.close()
            raise
        accept = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()
        if status != 101 or hdrs.get("sec-websocket-accept") != accept:
            wire.close()
            raise ConnectionError(f"WebSocket upgrade refused (status {status})" if status != 101 else
                                  "WebSocket upgrade answered with a wrong Sec-WebSocket-Accept")
        wire.until = math.inf
        self.sock = wire.sock
        self.sock.settimeout(None)
        self._send_lock = threading.Lock()
        self.closed = False

    def _exact(self, n: int) -> bytes:
        try:
            return self._wire.exact(n)
        except OSError as exc:
            raise WebSocketClosed(str(exc)) from exc

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
            if n > _WS_FRAME_MAX:
                raise WebSocketClosed(f"the server sent a {n}-byte frame")
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

def _unreachable(problems: list[ServerDown]) -> SpriteForgeError:
    return SpriteForgeError(ENGINE_UNAVAILABLE, f"cannot reach ComfyUI ({'; '.join(str(p) for p in problems)}). "
                            "Start it (python main.py --listen) or check the --server address.", hint="")


def _not_comfyui(problems: list[BadAnswer]) -> SpriteForgeError:
    return SpriteForgeError(ENGINE_UNAVAILABLE, "a server answered, but not as ComfyUI does (or it failed): "
                            + "; ".join(str(p) for p in problems) + ". Check that --server gives ComfyUI's address "
                            "and port (8188 unless it was started with --port), and look at the server's log.", hint="")


def server_url(text: str) -> str:
    """``text`` as a ComfyUI base URL (``http://`` added when no scheme is given, no trailing ``/``); BAD_INPUT
    for what cannot be one: another scheme, no host, a port outside 1..65535, a query, a fragment, a user name."""
    s = str(text).strip()
    if "://" not in s:
        s = "http://" + s
    why = None
    try:
        u = urllib.parse.urlsplit(s)
        port = u.port
    except ValueError as exc:
        why = str(exc)
    else:
        host = u.hostname or ""
        if u.scheme not in ("http", "https"):
            why = f"the scheme {u.scheme!r} is not http or https"
        elif not re.fullmatch(r"[A-Za-z0-9._-]+|[0-9A-Fa-f:.]+(%[\w.-]+)?", host):
            why = "it has no valid host name" if host else "it has no host"
        elif port == 0:
            why = "port 0 is not a server's port"
        elif u.query or u.fragment or u.username is not None:
            why = "it has a query, a fragment or a user name"
    if why:
        raise SpriteForgeError(BAD_INPUT, f"--server {text!r} is not a server address ({why}). Give it as "
                               "http://HOST:PORT with a port in 1..65535, e.g. http://127.0.0.1:8188.",
                               details={"server": str(text)})
    return urllib.parse.urlunsplit((u.scheme, u.netloc, u.path.rstrip("/"), "", ""))


class ComfyServer:
    """One ComfyUI server. Every request is over within ``timeout`` seconds (longer for object_info and
    downloads) and within what is left of ``deadline``, the whole submit's time limit."""

    def __init__(self, url: str, timeout: float = 30.0, deadline: Deadline | None = None):
        self.url = server_url(url)
        self.timeout = timeout
        self.deadline = deadline or Deadline()
        self.client_id = uuid.uuid4().hex
        self.last_node_errors: dict = {}

    def __repr__(self):
        return f"ComfyServer({self.url})"

    @property
    def name(self) -> str:
        return urllib.parse.urlsplit(self.url).netloc

    def _request(self, method: str, path: str, body=None, *, limit: float | None = None, max_bytes: int = _JSON_MAX,
                 own_limit: bool = False) -> tuple[int, bytes]:
        """(status, payload). ServerDown when there is no complete answer in time, BadAnswer when it is not HTTP,
        TimeUp when the deadline passed (``own_limit``: only ``limit`` applies, for clean-up requests)."""
        limit = limit or self.timeout
        seconds = limit if own_limit else self.deadline.within(limit)
        data = json.dumps(body).encode() if body is not None else None
        try:
            return _http(self.url + path, method, data, time.monotonic() + seconds, max_bytes)
        except BadAnswer as exc:
            raise BadAnswer(f"{self.url}{path} {exc}") from None
        except (OSError, ValueError) as exc:
            if not own_limit and self.deadline.left() <= 0:
                raise TimeUp(f"the time limit of {self.deadline.seconds:g} s has passed") from None
            why = f"no complete answer within {seconds:.3g} s" if isinstance(exc, TimeoutError) else \
                (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)
            raise ServerDown(f"{self.url}: {why}") from None

    def _json(self, method: str, path: str, body=None, **kw) -> tuple[int, object]:
        status, payload = self._request(method, path, body, **kw)
        try:
            return status, json.loads(payload.decode("utf-8")) if payload else None
        except ValueError:
            raise BadAnswer(f"{self.url}{path} answered {status} with {_snippet(payload)!r}, not JSON") from None

    def object_info(self) -> dict:
        status, data = self._json("GET", "/object_info", limit=max(self.timeout, 60))
        if status != 200 or not isinstance(data, dict):
            raise BadAnswer(f"{self.url}/object_info answered {status} {_snippet(str(data))!r}")
        return data

    def queue(self) -> list:
        """The prompt ids on the server (running, then pending; everyone's), from GET /queue."""
        status, data = self._json("GET", "/queue", limit=min(self.timeout, 10))
        lists = [data.get("queue_running"), data.get("queue_pending")] if isinstance(data, dict) else [None]
        if status != 200 or not all(isinstance(x, list) for x in lists):
            raise BadAnswer(f"{self.url}/queue answered {status} {_snippet(str(data))!r}, not ComfyUI's queue")
        return [str(it[1]) if isinstance(it, list) and len(it) > 1 else None for x in lists for it in x]

    def queue_load(self) -> int:
        """Running + pending prompts (everyone's)."""
        return len(self.queue())

    def queue_prompt(self, prompt: dict, *, client_id: str | None = None, extra_data: dict | None = None,
                     prompt_id: str | None = None) -> str:
        body = {"prompt": prompt, "client_id": client_id or self.client_id}
        if extra_data:
            body["extra_data"] = extra_data
        if prompt_id:
            body["prompt_id"] = prompt_id
        status, data = self._json("POST", "/prompt", body)
        if status == 200 and isinstance(data, dict) and data.get("prompt_id"):
            self.last_node_errors = data.get("node_errors") or {}
            return str(data["prompt_id"])
        if status < 500 and isinstance(data, dict) and ("node_errors" in data or "error" in data):
            from .graph import format_node_errors

            err = data.get("error") if isinstance(data.get("error"), dict) else {"message": str(data.get("error"))}
            lines = format_node_errors(data.get("node_errors") or {}, prompt, err)
            raise SpriteForgeError(BAD_INPUT, f"{self.url} refused the workflow:\n  - " + "\n  - ".join(lines),
                                   hint="", details={"node_errors": data.get("node_errors"), "error": err})
        raise BadAnswer(f"{self.url}/prompt answered {status} {_snippet(str(data))!r}")

    def history(self, prompt_id: str) -> dict | None:
        """The prompt's history entry; None while it has none."""
        status, data = self._json("GET", f"/history/{urllib.parse.quote(prompt_id)}")
        if status != 200 or not isinstance(data, dict):
            raise BadAnswer(f"{self.url}/history answered {status} {_snippet(str(data))!r}")
        entry = data.get(prompt_id)
        return entry if isinstance(entry, dict) else None

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        q = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder or "", "type": type or "output"})
        status, data = self._request("GET", f"/view?{q}", limit=max(self.timeout, 120), max_bytes=_FILE_MAX)
        if status != 200:
            raise SpriteForgeError(ENGINE_UNAVAILABLE, f"{self.url}/view could not give {subfolder}/{filename} "
                                   f"({status}) although its history lists it. Check the server's output folder.",
                                   hint="")
        return data

    def interrupt(self, prompt_id: str | None = None) -> None:
        self._request("POST", "/interrupt", {"prompt_id": prompt_id} if prompt_id else {}, limit=5, own_limit=True)

    def delete_queued(self, prompt_ids: Iterable[str]) -> None:
        ids = list(prompt_ids)
        if ids:
            self._request("POST", "/queue", {"delete": ids}, limit=5, own_limit=True)

    def ws_url(self) -> str:
        u = urllib.parse.urlsplit(self.url)
        scheme = "wss" if u.scheme == "https" else "ws"
        return f"{scheme}://{u.netloc}{u.path}/ws?clientId={self.client_id}"


# --------------------------------------------------------------------------- jobs

LOST_AFTER = 3  # polls in a row that find a queued prompt in neither the server's queue nor its history


@dataclass(eq=False)
class Job:
    index: int
    prompt: dict
    label: str = ""
    attempts: int = 0
    server: "ComfyServer | None" = None
    prompt_id: str | None = None
    status: str = "pending"  # pending, queued, running, done, failed, interrupted, timed_out
    error: str | None = None
    code: str | None = None  # the error code of a job that did not end with its own node's error
    files: list = field(default_factory=list)
    outputs: dict = field(default_factory=dict)
    node: str | None = None
    servers_tried: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    misses: int = 0  # polls in a row that found the queued prompt nowhere on its server


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
        """Open the /ws listener; False when the server does not upgrade (it is then followed by polling)."""
        try:
            self.ws = WebSocket(self.server.ws_url(), timeout=self.server.deadline.within(self.server.timeout))
        except (OSError, ValueError, ServerDown):
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


def _output_items(outputs: dict):
    """The file entries (``{"filename", "subfolder", "type"}``) of a history entry's outputs."""
    for ui in outputs.values():
        for items in (ui.values() if isinstance(ui, dict) else ()):
            for it in (items if isinstance(items, list) else ()):
                if isinstance(it, dict) and "filename" in it:
                    yield it


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
        elif kind in ("failed", "timed_out"):
            stream.write(f"{tag} FAILED: {job.error}\n")
        elif kind == "retry":
            stream.write(f"{tag} queueing the job again ({d.get('reason')})\n")
        elif kind == "lost":
            stream.write(f"{tag} the server lost the prompt ({d.get('reason')})\n")
        elif kind == "server_down":
            stream.write(f"server {d['server'].url} is down ({d.get('reason')})\n")
        elif kind == "interrupted":
            stream.write("interrupting the runs on the servers...\n")
        stream.flush()
    return on_event


def _positive(name: str, value, minimum: float = 0.0, *, integer: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > minimum
    if not ok or (integer and value != int(value)):
        raise SpriteForgeError(BAD_INPUT, f"{name} is {value!r}. Give a{' whole' if integer else ''} number above "
                               f"{minimum:g}.", details={name: repr(value)})


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
    ``download_temp``) are saved under ``out_dir``/subfolder, never overwriting. A job whose server drops,
    or whose prompt the server loses (in neither its queue nor its history), is queued again, on another
    server when there is one (up to ``max_attempts`` in all). ``KeyboardInterrupt`` or ``stop`` interrupts
    the servers' runs (POST /interrupt, queued ones deleted) and re-raises / returns.

    Every wait is bounded: each request by ``http_timeout`` seconds (however slowly the server sends), and
    everything together, connecting included, by ``timeout``: jobs unfinished then end ``timed_out``.
    A refused workflow raises at once (it would be refused everywhere).
    """
    if timeout is not None:
        _positive("--timeout", timeout)
    _positive("--http-timeout", http_timeout)
    _positive("poll_interval", poll_interval)
    _positive("--max-inflight", max_inflight, integer=True)
    _positive("max_attempts", max_attempts, integer=True)
    out = OutputFolder(out_dir).check()  # an existing file or a read-only place: refused before anything is queued
    deadline = Deadline(timeout)
    srvs = [s if isinstance(s, ComfyServer) else ComfyServer(s, timeout=http_timeout) for s in servers]
    if not srvs:
        raise SpriteForgeError(BAD_INPUT, "no --server given. Give the address of a running ComfyUI.")
    for s in srvs:
        s.deadline = deadline
    if on_event is None and progress_stream is not None:
        on_event = _printer(progress_stream)
    try:
        prompt, graph = _load_for_servers(workflow, srvs, overrides)
        extra = {"extra_pnginfo": {"workflow": graph}} if graph is not None else None
        sched = _Scheduler(srvs, make_jobs(prompt, prompts, prompt_input), emit=on_event or (lambda k, d: None),
                           out=out, extra=extra,
                           max_inflight=max_inflight, max_attempts=max_attempts, download_temp=download_temp)
        sched.connect()
    except TimeUp:
        raise SpriteForgeError(ENGINE_UNAVAILABLE, f"no server answered within the time limit (--timeout "
                               f"{timeout:g} s): {', '.join(s.url for s in srvs)}. Check the addresses, or give "
                               "a longer --timeout.", hint="") from None
    sched.run(poll_interval=poll_interval, deadline=deadline, stop=stop)
    return sched.jobs


def _load_for_servers(workflow, srvs: list[ComfyServer], overrides) -> tuple[dict, dict | None]:
    """(API prompt with the overrides, graph or None): a graph is converted with a server's own node descriptions."""
    from . import graph as G

    data = G.read_workflow(workflow)
    info = None
    if G.is_graph_format(data):
        problems = []
        for s in srvs:
            try:
                info = s.object_info()
                break
            except ServerDown as exc:
                problems.append(exc)
        if info is None:
            answered = [p for p in problems if isinstance(p, BadAnswer)]
            raise _not_comfyui(answered) if answered else _unreachable(problems)
    prompt, graph = G.load_workflow(data, info=info or {})
    G.apply_overrides(prompt, overrides, info)
    return prompt, graph


class _Scheduler:
    """Spreads the jobs over the servers, follows them (WebSocket messages, history polls), downloads the results
    and queues a job again (elsewhere when it can) when its server drops or loses it."""

    def __init__(self, srvs, jobs, *, emit, out, extra, max_inflight, max_attempts, download_temp):
        self.events: queue.Queue = queue.Queue()
        self.conns = [_Conn(s, self.events) for s in srvs]
        self.jobs = jobs
        self.pending = list(jobs)
        self.by_pid: dict[str, Job] = {}
        self.emit, self.out, self.extra = emit, out, extra
        self.max_inflight, self.max_attempts, self.download_temp = max_inflight, max_attempts, download_temp
        self.last_problem = ""

    # ----------------------------------------------------------------- connections

    def connect(self) -> None:
        """Open every server's /ws (a server without one is still used, by polling); raise when none is usable:
        "cannot reach" when none answered, "not as ComfyUI does" when one answered wrongly."""
        problems = []
        for c in self.conns:
            if c.start():
                continue
            try:
                c.server.queue()
            except ServerDown as exc:
                c.alive = False
                problems.append(exc)
                self.emit("server_down", {"server": c.server, "reason": str(exc)})
        if any(c.alive for c in self.conns):
            return
        answered = [p for p in problems if isinstance(p, BadAnswer)]
        if answered:
            raise _not_comfyui(answered)
        raise _unreachable(problems)

    def mark_down(self, conn: _Conn, reason: str) -> None:
        """``conn``'s server is gone: its jobs go back to the front of the queue (or fail after max_attempts)."""
        if not conn.alive:
            return
        conn.alive = False
        conn.stop()
        self.last_problem = reason
        self.emit("server_down", {"server": conn.server, "reason": reason})
        jobs = list(conn.inflight.values())
        for pid in conn.inflight:
            self.by_pid.pop(pid, None)
        conn.inflight.clear()
        for job in jobs:
            self._again(job, f"server dropped: {reason}")

    def _again(self, job: Job, reason: str) -> None:
        """Queue ``job`` again at the front, or fail it when it has had its attempts."""
        job.status, job.prompt_id, job.node, job.misses = "pending", None, None, 0
        if job.attempts >= self.max_attempts:
            self._end(job, "failed", f"gave up after {job.attempts} attempt(s) ({reason})", ENGINE_UNAVAILABLE)
        elif job not in self.pending:
            self.emit("retry", {"job": job, "reason": reason})
            self.pending.insert(0, job)

    def _end(self, job: Job, status: str, error: str, code: str | None = None) -> None:
        job.status, job.error, job.code = status, error, code
        self.emit("timed_out" if status == "timed_out" else "failed", {"job": job})

    def _socket_closed(self, conn: _Conn) -> None:
        if conn.ws is not None:
            conn.ws.close()
        conn.ws = None
        try:  # a dropped socket: is the server still there?
            conn.server.queue()
            conn.start()
        except ServerDown as exc:
            self.mark_down(conn, str(exc))

    def _forget(self, conn: _Conn, job: Job) -> None:
        conn.inflight.pop(job.prompt_id, None)
        self.by_pid.pop(job.prompt_id, None)

    # ----------------------------------------------------------------- a job's end

    def finish(self, conn: _Conn, job: Job, entry: dict | None = None) -> None:
        """The job ran: read its history entry (unless given), download its outputs, mark it done."""
        self._forget(conn, job)
        try:
            entry = entry if entry is not None else self._history_when_written(conn, job)
            job.outputs = entry.get("outputs") or {}
            self._download(conn, job)
        except ServerDown as exc:
            self._lost_while_downloading(conn, job, exc)
            return
        except SpriteForgeError as exc:
            self._end(job, "failed", exc.message, exc.code)
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
        for it in _output_items(job.outputs):
            kind = str(it.get("type") or "output")
            if kind == "output" or self.download_temp:
                job.files.append(self._save(conn, it, kind))

    def _save(self, conn: _Conn, it: dict, kind: str) -> Path:
        """One output of the server under ``out``/its subfolder (previews under ``out/temp``): the new file is made
        (never replacing, never through a link) and then downloaded into; BAD_INPUT, nothing downloaded nor written,
        when the server names a place outside the output folder."""
        sub, name = str(it.get("subfolder") or ""), str(it["filename"])
        where = sub if kind == "output" else f"temp/{sub}"
        try:
            with self.out.create(name, sub=where) as (path, f):
                f.write(conn.server.view(name, sub, kind))
        except SpriteForgeError as exc:
            shown = f"{where.rstrip('/')}/{name}".lstrip("/")
            raise SpriteForgeError(exc.code, f"the server's output {shown!r} was not saved: {exc.message}",
                                   hint=exc.hint, details=exc.details) from None
        return path

    def _lost_while_downloading(self, conn: _Conn, job: Job, exc: Exception) -> None:
        for f in job.files:  # a partial download: the retry brings every output again, each once
            try:
                f.unlink()
            except OSError:
                pass
        job.files, job.outputs = [], {}
        self.mark_down(conn, str(exc))
        self._again(job, f"server dropped while downloading: {exc}")

    def fail(self, conn: _Conn, job: Job, text: str, status: str = "failed") -> None:
        self._forget(conn, job)
        self._end(job, status, text)

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
        job.prompt_id, job.status, job.misses = pid, "queued", 0
        partial = conn.server.last_node_errors
        if partial:  # ComfyUI queued the valid outputs only
            job.warnings = format_node_errors(partial, job.prompt)
            self.emit("warning", {"job": job, "lines": job.warnings})
        conn.inflight[pid] = job
        self.by_pid[pid] = job
        self.emit("queued", {"job": job})

    # ----------------------------------------------------------------- following the jobs

    def poll_history(self) -> None:
        """Catch what the WebSocket missed (a finished, failed or interrupted job in a server's history) and
        prompts the server lost: in neither its queue nor its history for LOST_AFTER polls in a row."""
        for c in self.conns:
            if not c.alive or not c.inflight:
                continue
            try:
                on_server = set(c.server.queue())  # asked first: a prompt leaves the queue for the history
                for pid, job in list(c.inflight.items()):
                    if c.inflight.get(pid) is not job:  # ended or re-queued while this loop ran
                        continue
                    if pid in on_server:
                        job.misses = 0
                    elif (entry := c.server.history(pid)) is not None:
                        self._ended(c, job, entry)
                    else:
                        self._missing(c, job)
            except ServerDown as exc:
                self.mark_down(c, str(exc))

    def _ended(self, conn: _Conn, job: Job, entry: dict) -> None:
        st = entry.get("status") or {}
        if st.get("status_str") == "error" or (st.get("completed") is False and st.get("status_str")):
            msgs = [m for m in st.get("messages") or [] if m and m[0] in ("execution_error", "execution_interrupted")]
            if msgs and msgs[-1][0] == "execution_error":
                self.fail(conn, job, _explain_error(msgs[-1][1]))
            else:
                self.fail(conn, job, "interrupted on the server", "interrupted")
        elif st.get("completed", True):
            self.finish(conn, job, entry)

    def _missing(self, conn: _Conn, job: Job) -> None:
        job.misses += 1
        if job.misses < LOST_AFTER:
            return
        reason = (f"{conn.server.url} accepted prompt {job.prompt_id} but it is in neither its queue nor its "
                  "history: the queue was cleared or the server restarted")
        self._forget(conn, job)
        self.last_problem = reason
        self.emit("lost", {"job": job, "reason": reason})
        self._again(job, reason)

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

    def time_up(self, deadline: Deadline) -> None:
        """The time limit passed: every job that has not ended ends ``timed_out`` (queued ones are left to run)."""
        limit = f"the time limit (--timeout {deadline.seconds:g} s)"
        for job in self.jobs:
            if job.status in ("queued", "running"):
                self._end(job, "timed_out", f"did not finish within {limit}; it may still run on {job.server.url} "
                          f"as prompt {job.prompt_id}", ENGINE_UNAVAILABLE)
            elif job.status == "pending":
                self._end(job, "timed_out", f"not started within {limit}", ENGINE_UNAVAILABLE)
        for c in self.conns:
            c.inflight.clear()
        self.pending.clear()
        self.by_pid.clear()

    # ----------------------------------------------------------------- the loop

    def run(self, *, poll_interval: float, deadline: Deadline, stop: threading.Event | None) -> None:
        """Dispatch and follow until every job has ended, every server is down, ``stop`` is set or time is up."""
        last_poll = time.monotonic()
        try:
            while self._step_dispatch(stop):
                self._next_event(deadline.within(min(poll_interval, 0.25)))
                if time.monotonic() - last_poll >= poll_interval:
                    last_poll = time.monotonic()
                    self.poll_history()
        except TimeUp:
            self.time_up(deadline)
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
                self._end(job, "failed", f"every server is down or failing (last: {self.last_problem})",
                          ENGINE_UNAVAILABLE)
            self.pending.clear()
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


__all__ = ["WebSocket", "WebSocketClosed", "ComfyServer", "ServerDown", "BadAnswer", "Deadline", "TimeUp", "Job",
           "server_url", "submit_workflow", "make_jobs", "load_prompts_file"]
