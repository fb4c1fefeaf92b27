"""Booting a real ComfyUI for the opt-in tests (``SPRITEFORGE_COMFYUI=/path/to/ComfyUI``).

``SPRITEFORGE_COMFY_PYTHON`` names ComfyUI's interpreter, ``SPRITEFORGE_COMFY_PYTHONPATH`` goes in front of its
``PYTHONPATH``, and ``SPRITEFORGE_COMFY_TORCHVISION_STUB=1`` writes a torchvision stand-in there (for a CPU-only
environment without torchvision; it raises when torchvision is really used).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

COMFY = os.environ.get("SPRITEFORGE_COMFYUI")
_STUB = '"""torchvision stand-in for starting ComfyUI without torchvision; raises if actually used."""\nimport sys, types\n\nclass _Missing:\n    def __init__(self, name): self._name = name\n    def __getattr__(self, item):\n        if item.startswith("__"): raise AttributeError(item)\n        return _Missing(f"{self._name}.{item}")\n    def __call__(self, *a, **k): raise RuntimeError(f"torchvision stand-in: {self._name} is not available")\n\ndef __getattr__(name):\n    if name.startswith("__"): raise AttributeError(name)\n    return _Missing(f"torchvision.{name}")\n\nclass _Mod(types.ModuleType):\n    __path__ = []\n    def __getattr__(self, item):\n        if item.startswith("__"): raise AttributeError(item)\n        return _Missing(f"{self.__name__}.{item}")\n\nfor sub in ("transforms", "transforms.functional", "transforms.v2", "transforms.v2.functional", "ops", "models", "io", "utils"):\n    sys.modules[f"torchvision.{sub}"] = _Mod(f"torchvision.{sub}")\ntransforms = sys.modules["torchvision.transforms"]\ntransforms.v2 = sys.modules["torchvision.transforms.v2"]\ntransforms.v2.functional = sys.modules["torchvision.transforms.v2.functional"]\ntransforms.functional = sys.modules["torchvision.transforms.functional"]\nops = sys.modules["torchvision.ops"]\n__version__ = "0.0.0"\n'


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def get(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def post(url, data):
    req = urllib.request.Request(url, data=json.dumps(data).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def wait(base, pid, proc, timeout=300):
    """The history entry of prompt ``pid`` once it completed; AssertionError with its status when it failed."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError("ComfyUI exited")
        h = get(f"{base}/history/{pid}")
        if pid in h and h[pid].get("status", {}).get("completed") is not None:
            st = h[pid]["status"]
            if st.get("status_str") == "error":
                raise AssertionError(json.dumps(st, indent=1)[:4000])
            return h[pid]
        time.sleep(0.5)
    raise TimeoutError("prompt did not finish")


def python() -> str:
    return os.environ.get("SPRITEFORGE_COMFY_PYTHON", sys.executable)


def env(tmp_path: Path, *front: str) -> dict:
    """The environment for a ComfyUI process: ``front`` paths, then the stand-in and the user's PYTHONPATH."""
    e = dict(os.environ)
    extra = [*front, os.environ.get("SPRITEFORGE_COMFY_PYTHONPATH")]
    if os.environ.get("SPRITEFORGE_COMFY_TORCHVISION_STUB") == "1":
        (tmp_path / "stub" / "torchvision").mkdir(parents=True, exist_ok=True)
        (tmp_path / "stub" / "torchvision" / "__init__.py").write_text(_STUB)
        extra.insert(0, str(tmp_path / "stub"))
    e["PYTHONPATH"] = os.pathsep.join(filter(None, extra + [e.get("PYTHONPATH")]))
    return e


@contextlib.contextmanager
def server(tmp_path: Path, cfg: Path, out: Path, *args: str, ready: str = "SpriteForgeSampler", tries: int = 240):
    """A ComfyUI server on a free port with ``--extra-model-paths-config cfg`` and ``--output-directory out``:
    yields ``(proc, base_url, object_info_of_ready)`` once ``/object_info/<ready>`` answers; stops it afterwards."""
    port = free_port()
    log = open(tmp_path / "comfy.log", "w")
    proc = subprocess.Popen([python(), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                             "--disable-auto-launch", "--extra-model-paths-config", str(cfg), "--output-directory",
                             str(out), *args], cwd=COMFY, stdout=log, stderr=subprocess.STDOUT, env=env(tmp_path))
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(tries):
            try:
                info = get(f"{base}/object_info/{ready}")
                break
            except Exception:
                if proc.poll() is not None:
                    raise RuntimeError((tmp_path / "comfy.log").read_text()[-3000:])
                time.sleep(0.5)
        else:
            raise TimeoutError("ComfyUI did not start")
        yield proc, base, info
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
