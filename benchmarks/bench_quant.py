"""Quantized files against the bf16 original, in one run: memory, output difference and speed, torch CPU and MLX.

A Flux transformer of real layout but small size (``--hidden 512 --double 2 --single 4``: about 35M parameters,
original layout, bf16) is written once, then quantized into each format the loaders read: ComfyUI's per-layer
formats (fp8 e4m3fn with scales, legacy scaled_fp8, int8 per row, int8 ConvRot, MXFP8, NVFP4) and GGUF (Q8_0, Q5_1,
Q5_0, Q4_1, Q4_0, and Q6_K / Q4_K with seeded random blocks: these have no quantizer in the gguf package, so their
output difference means nothing and is not reported). The writers are the tests' (``tests/test_quant.py``,
``tests/test_gguf.py``).

Each file is loaded in a fresh subprocess through the engine's ``load_model`` (torch: bf16 weights; MLX: float32, the
only dtype MLX has on a CPU), then the transformer runs ``--steps`` forward passes on fixed inputs
(``--tokens`` image tokens, 32 text tokens). Reported per format:

* ``file``: the file's size; ``peak``: the child's peak resident memory (sampled every 2 ms) through the load and
  the first step, over what it held after its imports; ``act``: what the bf16 original's run holds beyond its
  weights in the compute dtype (activations, the step's temporaries); ``ratio = (peak - act) / file`` (goal: at most
  1.15 on torch, which keeps the weights stored; MLX decodes all but GGUF Q4_0/Q4_1/Q8_0 at load, so there the
  figure to read is the peak against the original's);
* ``max``/``mean``: the first step's output against the bf16 original's, both mapped to 8 bits by the original's
  range (``(out - lo) / (hi - lo) * 255``), in /255;
* ``speed``: seconds a step (the fastest of the steps after the first) over the original's, measured in the same run.

Run: ``python benchmarks/bench_quant.py [--hidden 512] [--double 2] [--single 4] [--tokens 256] [--steps 3]
[--engines torch,mlx] [--json]``. Not a test: prints the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, threading, time
import numpy as np
engine_name, path, out_path, steps, tokens, dtype = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
from spriteforge.engines import get_engine
import torch, gguf, diffusers.models.transformers.transformer_flux  # every import before the baseline
if engine_name == "mlx":
    import mlx.core, spriteforge.engines.mlx_models.flux


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


peak = [0.0]
done = threading.Event()


def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss_mb())
        time.sleep(0.002)


base = rss_mb()
threading.Thread(target=sample, daemon=True).start()
rng = np.random.default_rng(0)
side = int(tokens ** 0.5)
x, enc = rng.standard_normal((1, side * side, 64)).astype(np.float32), rng.standard_normal((1, 32, 4096 // 8)).astype(np.float32)
pooled = rng.standard_normal((1, 768 // 8)).astype(np.float32)
ids = np.zeros((side * side, 3), np.float32); ids[:, 1] = np.repeat(np.arange(side), side); ids[:, 2] = np.tile(np.arange(side), side)
times = []
if engine_name == "torch":
    eng = get_engine("torch", "cpu")
    h = eng.load_model(path, dtype=dtype)
    m = h.transformer
    dt = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    args = dict(hidden_states=torch.from_numpy(x).to(dt), encoder_hidden_states=torch.from_numpy(enc[..., :m.config.joint_attention_dim]).to(dt),
                pooled_projections=torch.from_numpy(pooled[..., :m.config.pooled_projection_dim]).to(dt), timestep=torch.tensor([0.5]),
                img_ids=torch.from_numpy(ids), txt_ids=torch.zeros(32, 3), guidance=torch.tensor([3.5]))
    with torch.no_grad():
        for i in range(steps):
            t0 = time.perf_counter(); out = m(**args).sample.float().numpy(); times.append(time.perf_counter() - t0)
            first_peak = max(peak[0], rss_mb()) if i == 0 else first_peak
else:
    import mlx.core as mx
    eng = get_engine("mlx")
    h = eng.load_model(path, dtype=dtype)
    m = h.transformer
    cfg = h.config
    for i in range(steps):
        t0 = time.perf_counter()
        y = m(mx.array(x), mx.array(enc[..., :cfg["joint_attention_dim"]]), mx.array(pooled[..., :cfg["pooled_projection_dim"]]),
              mx.array([0.5]), img_ids=mx.array(ids), txt_ids=mx.zeros((32, 3)), guidance=mx.array([3.5]))
        out = np.array(y.astype(mx.float32)); times.append(time.perf_counter() - t0)
        first_peak = max(peak[0], rss_mb()) if i == 0 else first_peak
done.set()
np.save(out_path, out)
print(json.dumps({"base_mb": base, "peak_mb": first_peak, "times": times}))
"""


def build(root: Path, hidden: int, double: int, single: int) -> Path:
    """The bf16 original: a randomised Flux (seeded) in the original layout."""
    sys.path.insert(0, str(REPO / "tests"))
    import tiny_models as tm
    import torch
    from diffusers import FluxTransformer2DModel

    heads = hidden // 128
    m = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=double, num_single_layers=single,
                               attention_head_dim=128, num_attention_heads=heads, joint_attention_dim=512,
                               pooled_projection_dim=96, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    m = tm._randomize(m, 0)
    sd = {k: v.to(torch.bfloat16) for k, v in tm.flux_to_original(m.state_dict()).items()}
    return tm._save_file(sd, root / "flux-bf16.safetensors")


def write_formats(src: Path, root: Path, only=()) -> dict:
    sys.path.insert(0, str(REPO / "tests"))
    import test_gguf as G
    import test_quant as Q
    from gguf import GGMLQuantizationType as T
    from safetensors.torch import load_file

    files = {"bf16": (src, True)}
    for fmt in ("float8_e4m3fn", "scaled_fp8", "int8_rows", "int8_convrot", "mxfp8", "nvfp4"):
        if not only or fmt in only:
            files[fmt] = (Q.write_quantized(src, root / f"flux-{fmt}.safetensors", fmt), True)
    sd = load_file(str(src))
    for q in (T.Q8_0, T.Q5_1, T.Q5_0, T.Q4_1, T.Q4_0, T.Q6_K, T.Q4_K):
        if not only or f"gguf {q.name}" in only or q.name in only:
            files[f"gguf {q.name}"] = (G.write_gguf(sd, root / f"flux-{q.name}.gguf", q), q not in G.F16_FIELDS)
    return files


def rows_peak(rows: list, engine: str, default: float) -> float:
    """The peak of the original's run on ``engine`` (the first row of that engine)."""
    return next((r["peak_mib"] for r in rows if r["engine"] == engine), default)


def run(engine: str, path: Path, out: Path, steps: int, tokens: int, dtype: str) -> dict:
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-c", CHILD, engine, str(path), str(out), str(steps), str(tokens), dtype],
                       capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"{engine} {path.name} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--double", type=int, default=2)
    ap.add_argument("--single", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--engines", default="torch,mlx")
    ap.add_argument("--formats", default="", help="comma-separated subset of the formats (the bf16 original always runs)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        only = tuple(f for f in args.formats.split(",") if f)
        files = write_formats(build(root, args.hidden, args.double, args.single), root, only)
        for engine in args.engines.split(","):
            dtype = "bfloat16" if engine == "torch" else "float32"
            ref = None
            for name, (path, real) in files.items():
                out = root / f"{engine}-{name.replace(' ', '_')}.npy"
                r = run(engine, path, out, args.steps, args.tokens, dtype)
                size = path.stat().st_size / 2**20
                grown = r["peak_mb"] - r["base_mb"]
                step = min(r["times"][1:] or r["times"])  # the CPU is shared: the least disturbed step
                y = np.load(out)
                if ref is None:
                    lo, hi = np.percentile(y, 0.5), np.percentile(y, 99.5)
                    # what the original's run holds beyond its weights in the compute dtype (MLX on a CPU: float32,
                    # twice the bf16 file)
                    ref = {"y": y, "act": grown - size * (2 if dtype == "float32" else 1), "step": step, "lo": lo, "hi": hi}
                to8 = lambda a: np.clip((a - ref["lo"]) / (ref["hi"] - ref["lo"]) * 255, 0, 255).round()  # noqa: E731
                diff = np.abs(to8(y) - to8(ref["y"]))
                row = {"engine": engine, "format": name, "file_mib": round(size, 1), "peak_mib": round(grown, 1),
                       "act_mib": round(ref["act"], 1), "ratio": round((grown - max(ref["act"], 0)) / size, 2),
                       "peak_vs_original": round(grown / rows_peak(rows, engine, grown), 2),
                       "max_255": int(diff.max()) if real else None, "mean_255": round(float(diff.mean()), 2) if real else None,
                       "speed": round(step / ref["step"], 2), "step_s": round(step, 3)}
                rows.append(row)
                if not args.json:
                    d = f"max {row['max_255']:3d}/255 mean {row['mean_255']:5.2f}/255" if real else "diff n/a (random blocks)   "
                    print(f"{engine:5s} {name:15s} file {row['file_mib']:7.1f} MiB  peak +{row['peak_mib']:7.1f} MiB  "
                          f"(peak - act) / file {row['ratio']:.2f} = {row['peak_vs_original']:.2f}x the original's peak  {d}  step {row['step_s']:.3f}s = {row['speed']:.2f}x bf16",
                          flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
