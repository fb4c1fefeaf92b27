"""The integrity record of an MLX cache's source (``spriteforge convert --engine mlx``): for every source file
its size, mtime and the sha256 of the safetensors header and of the tensor bytes (other files: the whole
file), computed streaming in 16 MiB chunks, and the check of such a record on load (see :mod:`.cache` for
when the tensor bytes are re-hashed). Plain files and hashlib: no mlx, no torch."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CHUNK = 16 << 20
SMALL = 64 << 20  # files below this are always hashed whole on load


def _sha256_stream(f):
    """sha256 of the rest of file ``f``, read in CHUNK pieces."""
    h = hashlib.sha256()
    while b := f.read(CHUNK):
        h.update(b)
    return h.hexdigest()


def sha256_file(path) -> str:
    with open(path, "rb") as f:
        return _sha256_stream(f)


def _safetensors_split(f, size: int):
    """``(header bytes incl. the 8-byte length, data offset)``, or None when this is not a safetensors file."""
    head = f.read(8)
    if len(head) < 8:
        return None
    n = int.from_bytes(head, "little")
    if n <= 0 or n > min(size - 8, 100 << 20):
        return None
    return head + f.read(n), 8 + n


def safetensors_hashes(path) -> tuple[str, str] | None:
    """``(sha256 of the header, sha256 of the tensor bytes)`` of a safetensors file, streaming; None if it is not one."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        split = _safetensors_split(f, size)
        if split is None:
            return None
        header, _ = split
        return hashlib.sha256(header).hexdigest(), _sha256_stream(f)


def _header_hash(path) -> str | None:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        split = _safetensors_split(f, size)
    return None if split is None else hashlib.sha256(split[0]).hexdigest()


def _file_record(f: Path) -> dict:
    st = f.stat()
    rec = {"path": str(f), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    hs = safetensors_hashes(f) if f.suffix in (".safetensors", ".sft") else None
    if hs is not None:
        rec["header_sha256"], rec["tensors_sha256"] = hs
    else:
        rec["sha256"] = sha256_file(f)
    return rec


def check_record(rec: dict) -> str | None:
    """None when the source file still is what it was; else what changed."""
    f = Path(rec["path"])
    if not f.is_file():
        return f"{f} is gone"
    st = f.stat()
    if st.st_size != rec["size"]:
        return f"{f.name} changed size ({rec['size']} -> {st.st_size} bytes)"
    if "header_sha256" in rec:
        if _header_hash(f) != rec["header_sha256"]:
            return f"the safetensors header of {f.name} changed"
        if st.st_mtime_ns == rec["mtime_ns"]:
            return None  # same size, header and mtime: not re-read (see the module doc)
        if safetensors_hashes(f)[1] != rec["tensors_sha256"]:
            return f"the tensor data of {f.name} changed"
        return None
    if st.st_size >= SMALL and st.st_mtime_ns == rec["mtime_ns"]:
        return None
    return None if sha256_file(f) == rec["sha256"] else f"{f.name} changed"


def source_files(p: Path) -> list[Path]:
    """The files a load of ``p`` reads: the file itself; a diffusers folder's model_index.json and the files of the
    components it names; any other folder's own files."""
    p = Path(p)
    if p.is_file():
        return [p]
    if (p / "model_index.json").is_file():
        files = [p / "model_index.json"]
        index = json.loads((p / "model_index.json").read_text())
        for name, entry in sorted(index.items()):
            if name.startswith("_") or not isinstance(entry, list) or not entry or entry[0] is None:
                continue
            if (p / name).is_dir():
                files += sorted(f for f in (p / name).iterdir() if f.is_file())
        return files
    return sorted(f for f in p.iterdir() if f.is_file())


def source_record(paths) -> dict:
    """The integrity record of the source paths (model, then any VAE/text encoders given with it)."""
    from ...progress import Progress

    files = [f for p in paths for f in source_files(Path(p))]
    recs = []
    with Progress(max(1, len(files)), "hashing the source") as bar:
        for f in files:
            recs.append(_file_record(f))
            bar.update()
    digest = hashlib.sha256(json.dumps([{k: r.get(k) for k in ("size", "header_sha256", "tensors_sha256", "sha256")}
                                        for r in recs], sort_keys=True).encode()).hexdigest()
    return {"files": recs, "sha256": digest}


__all__ = ["sha256_file", "safetensors_hashes", "source_files", "source_record", "check_record"]
