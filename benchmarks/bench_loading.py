"""Load time and peak RSS of SpriteForge's loader against diffusers' own, on the same file, in one run.

A PixArt-Sigma-XL-sized transformer (0.61B parameters, the real config) with random weights is
written once as a diffusers component folder (``config.json`` + ``diffusion_pytorch_model.safetensors``).
Each loader then runs in a fresh subprocess that reports ``ru_maxrss``:

* ``diffusers``: ``PixArtTransformer2DModel.from_pretrained(folder, torch_dtype=...)``
* ``spriteforge``: ``load_model(engine, folder/diffusion_pytorch_model.safetensors)`` (the single-file path:
  header detection, meta build, memory-mapped reads)

Scenarios: the file's dtype equals the target (fp32 -> fp32: SpriteForge maps the file, zero copy) and a
cast (bf16 file -> fp32, what a CPU or a no-bf16 GPU does). After loading, every parameter is summed once
(``touch``), so pages a mapping would load lazily are counted too. Prints seconds, peak RSS, RSS growth
over the imports, and the ratios spriteforge/diffusers.

    python benchmarks/bench_loading.py [--workdir DIR] [--keep] [--scenarios fp32,bf16]

``--single-file`` measures instead what a user's bf16 single file costs on torch-CPU: a PixArt-Sigma transformer of
the real widths (hidden 1152, caption 4096) with ``--layers`` blocks (4: about 100M parameters, a 0.2 GB file) is
written in the original PixArt layout (fused qkv, the pos-embed table) in bfloat16, and loaded by
``load_model(engine, file)`` with the CPU's defaults (float32 compute), then run once (every weight used). The
figure: peak RSS growth over the imports (``VmHWM`` reset after them) divided by the file size, with the largest
layer's float32 size (what a per-layer cast holds at once) beside it. diffusers' ``from_pretrained`` on the same
weights as a diffusers folder (it has no PixArt single-file loader) gives the load-time ratio and its own growth.
``--mlx`` adds the MLX engine's load of the same file (``engines/mlx_models/loading.py``: read lazily, evaluated block
by block) and its own line: the peak RSS growth of the load alone (before the first forward) over the file, over the file
plus one block, and over what it must hold, its parameters (MLX on the CPU computes in float32: twice a bf16 file) plus
one block; ``--mlx-dtype float16`` loads the weights in Metal's dtype instead (the size of the file).

``--single-file --family qwenimage,zimage,krea2`` does the same for today's families, each file written from the
released file's manifest (``../shared/reference/checkpoints/``: the key names, real widths and dtypes of
``qwen_image_bf16`` (diffusers names, bf16), ``z_image_turbo_bf16`` (original layout, bf16) and ``krea2_*_bf16``
(krea's names, bf16 matrices and f32 norms/modulation)) with one block of each kind (the smallest file the real
widths give: 0.76, 1.1 and 2.5 GB), loaded by ``load_model(engine, file)`` and run for two forwards (64 text and 256
image tokens). diffusers' ``from_pretrained`` (float32) on a folder of the same weights in its names (diffusers' own
single-file converter) beside it. ``--blocks`` sets the count of each kind of block. Besides the largest layer in
float32, the largest layer our loader casts (bf16 -> f32) is named: in a mixed file the largest layer may be stored
in f32 already (Krea 2's ``tproj``), and is then a view of the mapping like the file's other f32 tensors.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PIXART_SIGMA_1024 = {
    "_class_name": "PixArtTransformer2DModel",
    "activation_fn": "gelu-approximate",
    "attention_bias": True,
    "attention_head_dim": 72,
    "attention_type": "default",
    "caption_channels": 4096,
    "cross_attention_dim": 1152,
    "dropout": 0.0,
    "in_channels": 4,
    "interpolation_scale": 2,
    "norm_elementwise_affine": False,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "norm_type": "ada_norm_single",
    "num_attention_heads": 16,
    "num_embeds_ada_norm": 1000,
    "num_layers": 28,
    "out_channels": 8,
    "patch_size": 2,
    "sample_size": 128,
    "upcast_attention": False,
    "use_additional_conditions": False,
}

CHILD = r"""
import json, os, resource, sys, time
def rss_mb():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0
which, folder, dtype = sys.argv[1], sys.argv[2], sys.argv[3]
import torch, diffusers, transformers  # noqa: F401  (imports are not what we measure)
from diffusers.models.transformers.pixart_transformer_2d import PixArtTransformer2DModel
from spriteforge.engines import get_engine
from spriteforge.engines.torch_models import loading  # noqa: F401
get_engine("torch", "cpu", dtype)
base = rss_mb()
peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
if which == "diffusers":
    model = PixArtTransformer2DModel.from_pretrained(folder, torch_dtype=getattr(torch, dtype), local_files_only=True)
else:
    from spriteforge.engines.torch_models.loading import load_model
    engine = get_engine("torch", "cpu", dtype)
    model = load_model(engine, os.path.join(folder, "diffusion_pytorch_model.safetensors")).transformer
load_s = time.perf_counter() - t0
with torch.no_grad():
    total = sum(float(p.float().sum()) for p in model.parameters())
touch_s = time.perf_counter() - t0
n = sum(p.numel() for p in model.parameters())
dt = str(next(model.parameters()).dtype)
print(json.dumps({"load_s": load_s, "touch_s": touch_s, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "base_mb": base, "peak_before_mb": peak_before, "params": n, "dtype": dt, "checksum": total}))
"""


def write_model(folder: Path, dtype: str) -> Path:
    import torch
    from diffusers import PixArtTransformer2DModel
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    f = folder / "diffusion_pytorch_model.safetensors"
    if f.exists():
        return folder
    cfg = {k: v for k, v in PIXART_SIGMA_1024.items() if not k.startswith("_")}
    with torch.device("meta"):
        model = PixArtTransformer2DModel.from_config(cfg)
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, v in model.state_dict().items():
        sd[k] = (torch.randn(v.shape, generator=g) * 0.02).to(getattr(torch, dtype))
    save_file(sd, str(f))
    del sd
    (folder / "config.json").write_text(json.dumps(PIXART_SIGMA_1024, indent=2))
    return folder


def run_child(which: str, folder: Path, dtype: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore")
    out = subprocess.run([sys.executable, "-c", CHILD, which, str(folder), dtype], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{which} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


SINGLE_CHILD = r"""
import json, sys, time
def status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
which, path, folder, mlx_dtype = sys.argv[1:5]
import numpy as np, torch, diffusers, transformers  # noqa: F401  (imports are not what is measured)
from diffusers.models.transformers.pixart_transformer_2d import PixArtTransformer2DModel
from spriteforge.engines import get_engine
if which == "mlx":
    import mlx.core as mx
    from spriteforge.engines.mlx_models import loading as mlx_loading  # noqa: F401
    engine = get_engine("mlx", "cpu")
else:
    from spriteforge.engines.torch_models import loading  # noqa: F401
    engine = get_engine("torch", "cpu")
torch.set_num_threads(1)
if which != "mlx":  # what the first load imports (accelerate, the class's module: some 200 MB) is not the load's
    from spriteforge.engines.torch_models.building import build_empty
    build_empty(lambda: PixArtTransformer2DModel(num_layers=1, num_attention_heads=1, attention_head_dim=8, cross_attention_dim=8,
                                                 caption_channels=8, sample_size=8, norm_num_groups=1))
else:  # the same for MLX: the diffusers class its config is completed from, and the port's module
    mlx_loading.full_config("PixArtTransformer2DModel", {})
    mlx_loading.port("pixart")
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # the peak (VmHWM) starts again from here
base = status("VmRSS")
t0 = time.perf_counter()
if which == "diffusers":
    model = PixArtTransformer2DModel.from_pretrained(folder, torch_dtype=torch.float32, local_files_only=True).eval()
elif which == "mlx" and mlx_dtype != "float32":  # a dtype the CPU engine's policy does not take: loading's own steps
    from pathlib import Path
    from spriteforge.engines.model_files import diffusion_model_in
    from spriteforge.engines.torch_models.tensors import open_tensors
    src = open_tensors(path)
    det = diffusion_model_in(src.tensors, Path(path))
    model = mlx_loading._transformer(det, mlx_loading._read(src, det.components.get("transformer", "")), getattr(mx, mlx_dtype))[0]
    src.close()
else:
    model = engine.load_model(path).transformer
load_s = time.perf_counter() - t0
loaded, load_peak = status("VmRSS"), status("VmHWM")
g = torch.Generator().manual_seed(0)
x, emb = torch.randn(1, 4, 32, 32, generator=g), torch.randn(1, 300, 4096, generator=g)
def forward():
    if which == "mlx":
        out = model(mx.array(x.numpy()), mx.array(emb.numpy()), mx.array([500.0]))
        mx.eval(out)
        return np.array(out.astype(mx.float32))
    with torch.no_grad():
        return model(x, encoder_hidden_states=emb, timestep=torch.tensor([500.0]),
                     added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0].float().numpy()
out = forward()
run_s = time.perf_counter() - t0
t1 = time.perf_counter()
forward()  # a sampling step's forward, the weights now resident
step_s = time.perf_counter() - t1
if which != "mlx":  # the largest single layer and the largest transformer block, in float32; the model's parameters
    layer = max(sum(p.numel() * 4 for p in m.parameters(recurse=False)) for m in model.modules())
    block = max(sum(p.numel() * 4 for p in b.parameters()) for b in model.transformer_blocks)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
else:  # the port's own: leaf modules, its blocks, all of its parameters (as loaded: float32 on the CPU)
    from mlx.utils import tree_flatten
    def nbytes(m):
        return sum(v.nbytes for _, v in tree_flatten(m.parameters()))
    layer = max(sum(v.nbytes for v in m.values() if isinstance(v, mx.array)) for _, m in model.named_modules())
    block = max(nbytes(b) for b in model.transformer_blocks)
    params = nbytes(model)
print(json.dumps({"load_s": load_s, "run_s": run_s, "step_s": step_s, "base": base, "loaded": loaded, "load_peak": load_peak,
                  "peak": status("VmHWM"), "layer": layer, "block": block, "params": params, "out": float(np.abs(out).sum())}))
"""


REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "checkpoints"
# family -> the released file's manifest, its block lists (kept: the first ``--blocks`` of each), the diffusers config's
# counts of them, diffusers' single-file converter (None: the file holds diffusers' names), the diffusers class
NEW_FAMILIES = {
    "qwenimage": {"manifest": "qwen-image.transformer.diffusers", "blocks": ("transformer_blocks",), "counts": ("num_layers",),
                  "convert": None, "cls": "QwenImageTransformer2DModel", "file": "qwen_image"},
    "zimage": {"manifest": "z-image-turbo.transformer.original", "config": "z-image-turbo.transformer.diffusers",
               "blocks": ("layers", "noise_refiner", "context_refiner"), "counts": ("n_layers", "n_refiner_layers"),
               "convert": "convert_z_image_transformer_checkpoint_to_diffusers", "cls": "ZImageTransformer2DModel",
               "file": "z_image_turbo"},
    "krea2": {"manifest": "krea2.transformer.original", "config": "krea2.transformer.diffusers",
              "blocks": ("blocks", "txtfusion.layerwise_blocks", "txtfusion.refiner_blocks"),
              "counts": ("num_layers", "num_layerwise_text_blocks", "num_refiner_text_blocks"),
              "convert": "convert_krea2_transformer_checkpoint_to_diffusers", "cls": "Krea2Transformer2DModel", "file": "krea2_raw"},
}
DTYPES = {"bf16": "bfloat16", "f32": "float32", "f16": "float16"}


def family_inputs(family: str, config: dict):
    """One forward's inputs (seeded; 64 text tokens, a 32x32 latent) and how to call the transformer with them."""
    import torch

    g = torch.Generator().manual_seed(0)
    n_txt, lat = 64, 32
    t = torch.tensor([0.5])
    if family == "zimage":
        x, cap = torch.randn(config["in_channels"], 1, lat, lat, generator=g), torch.randn(n_txt, config["cap_feat_dim"], generator=g)
        return lambda m: m([x], t, [cap], return_dict=False)[0][0]
    tokens = (lat // 2) ** 2
    hs = torch.randn(1, tokens, 64, generator=g)
    if family == "qwenimage":
        txt = torch.randn(1, n_txt, config["joint_attention_dim"], generator=g)
        return lambda m: m(hidden_states=hs, encoder_hidden_states=txt, encoder_hidden_states_mask=torch.ones(1, n_txt), timestep=t,
                           img_shapes=[(1, lat // 2, lat // 2)], return_dict=False)[0]
    txt = torch.randn(1, n_txt, config["num_text_layers"], config["text_hidden_dim"], generator=g)
    grid = torch.stack(torch.meshgrid(torch.arange(lat // 2), torch.arange(lat // 2), indexing="ij"), -1).reshape(-1, 2).float()
    ids = torch.cat([torch.zeros(n_txt, 3), torch.cat([torch.zeros(tokens, 1), grid], 1)])
    return lambda m: m(hidden_states=hs, encoder_hidden_states=txt, timestep=t, position_ids=ids,
                       encoder_attention_mask=torch.ones(1, n_txt, dtype=torch.bool), return_dict=False)[0]


FAMILY_CHILD = r"""
import json, sys, time
def status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
which, family, path, folder = sys.argv[1:5]
import numpy as np, torch, diffusers, transformers  # noqa: F401  (imports are not what is measured)
from spriteforge.benchmarks.bench_loading import NEW_FAMILIES, family_inputs
from spriteforge.engines import get_engine
from spriteforge.engines.torch_models import loading  # noqa: F401
from spriteforge.engines.torch_models.building import build_empty
torch.set_num_threads(1)
cls = getattr(diffusers, NEW_FAMILIES[family]["cls"])
config = json.load(open(folder + "/config.json"))
engine = get_engine("torch", "cpu")
build_empty(lambda: cls.from_config({**config, **{k: 0 for k in NEW_FAMILIES[family]["counts"]}}).to("meta"))  # the class's imports
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # the peak (VmHWM) starts again from here
base = status("VmRSS")
t0 = time.perf_counter()
if which == "diffusers":
    model = cls.from_pretrained(folder, torch_dtype=torch.float32, local_files_only=True).eval()
else:
    model = engine.load_model(path).transformer
load_s = time.perf_counter() - t0
loaded = status("VmRSS")
forward = family_inputs(family, config)
with torch.no_grad():
    out = forward(model).float().numpy()
run_s = time.perf_counter() - t0
t1 = time.perf_counter()
with torch.no_grad():
    forward(model)  # a sampling step's forward, the weights now resident
step_s = time.perf_counter() - t1
peak = status("VmHWM")
layer = max(sum(p.numel() * 4 for p in m.parameters(recurse=False)) for m in model.modules())  # in float32
block = max(sum(p.numel() * 4 for p in b.parameters()) for ml in model.modules() if isinstance(ml, torch.nn.ModuleList) for b in ml)
half = (torch.bfloat16, torch.float16)  # the largest layer a per-layer cast makes a float32 copy of (0 where all is float32)
cast = max(sum(p.numel() * 4 for p in m.parameters(recurse=False) if p.dtype in half) for m in model.modules())
print(json.dumps({"load_s": load_s, "run_s": run_s, "step_s": step_s, "base": base, "loaded": loaded, "peak": peak, "layer": layer,
                  "block": block, "cast": cast, "after": status("VmRSS"),
                  "out": float(np.abs(out).sum())}))
"""


def write_family_file(work: Path, family: str, blocks: int) -> tuple[Path, Path]:
    """The released file's keys, shapes and dtypes (its manifest), the first ``blocks`` of each block list, seeded random
    values; and a diffusers folder of the same weights (diffusers' converter where the file is not in its names)."""
    import torch
    from safetensors.torch import save_file

    spec = NEW_FAMILIES[family]
    single = work / f"{spec['file']}_{blocks}b_bf16.safetensors"
    folder = work / f"{spec['file']}_{blocks}b_diffusers"
    if single.exists() and (folder / "config.json").exists():
        return single, folder
    manifest = json.loads((REFERENCE / f"{spec['manifest']}.json").read_text())
    config = dict(json.loads((REFERENCE / f"{spec.get('config', spec['manifest'])}.json").read_text())["diffusers_config"])
    config.update({k: blocks for k in spec["counts"]})
    keep = re.compile(r"^(%s)\.(\d+)\." % "|".join(re.escape(b) for b in spec["blocks"]))
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, v in manifest["tensors"].items():
        m = keep.match(k)
        if m and int(m.group(2)) >= blocks:
            continue
        w = torch.randn(v["shape"], generator=g) * (0.02 if len(v["shape"]) > 1 else 0.1)
        sd[k] = w.to(getattr(torch, DTYPES[v["dtype"]])).contiguous()
    save_file(sd, str(single))
    if spec["convert"]:
        from diffusers.loaders import single_file_utils

        sd = getattr(single_file_utils, spec["convert"])(sd)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"_class_name": spec["cls"], **config}, indent=2))
    return single, folder


def family_file(work: Path, family: str, blocks: int, repeat: int) -> dict:
    single, folder = write_family_file(work, family, blocks)
    size = single.stat().st_size
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore")
    res = {}
    sides = ("spriteforge", "diffusers")
    for r in range(repeat):  # interleaved, the order alternating
        for which in (sides if r % 2 == 0 else sides[::-1]):
            out = subprocess.run([sys.executable, "-c", FAMILY_CHILD, which, family, str(single), str(folder)], capture_output=True,
                                 text=True, env=env)
            if out.returncode != 0:
                raise RuntimeError(f"{family} {which} failed:\n{out.stderr[-3000:]}")
            res.setdefault(which, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = {}
    cast = res["spriteforge"][0]["cast"]  # the largest layer our loader casts (bf16 -> f32): what it holds at once
    for which, runs in res.items():
        growth = max(r["peak"] - r["base"] for r in runs)
        layer, block = runs[0]["layer"], runs[0]["block"]
        rows[which] = {"load_s": round(min(r["load_s"] for r in runs), 2), "load_run_s": round(min(r["run_s"] for r in runs), 2),
                       "step_s": round(min(r["step_s"] for r in runs), 2), "growth_mib": round(growth / 2**20),
                       "after_load_mib": round(max(r["loaded"] - r["base"] for r in runs) / 2**20),
                       "after_run_mib": round(max(r["after"] - r["base"] for r in runs) / 2**20),
                       "growth_over_file": round(growth / size, 3), "growth_over_file_plus_layer": round(growth / (size + layer), 3),
                       "growth_over_file_plus_block": round(growth / (size + block), 3), "layer_mib": round(layer / 2**20, 1),
                       "growth_over_file_plus_cast_layer": round(growth / (size + cast), 3), "cast_layer_mib": round(cast / 2**20, 1),
                       "block_mib": round(block / 2**20, 1), "out": runs[0]["out"]}
    sf, d = rows["spriteforge"], rows["diffusers"]
    print(f"{family}: {single.name} {size / 2**20:.0f} MiB ({blocks} block(s) of each kind, the release's widths and dtypes), "
          f"torch-CPU float32 compute, {repeat} run(s) each (interleaved)")
    for which, row in rows.items():
        print(f"  {which:11s} load {row['load_s']:.2f}s  peak RSS growth {row['growth_mib']} MiB = {row['growth_over_file']}x the file, "
              f"{row['growth_over_file_plus_layer']}x file + largest layer ({row['layer_mib']} MiB f32), "
              f"{row['growth_over_file_plus_cast_layer']}x file + largest bf16 layer cast ({row['cast_layer_mib']} MiB f32), "
              f"{row['growth_over_file_plus_block']}x file + largest block ({row['block_mib']} MiB f32); RSS growth after "
              f"the load {row['after_load_mib']} MiB, after the forwards {row['after_run_mib']} MiB")
    print(f"  time spriteforge/diffusers: load {sf['load_s'] / d['load_s']:.2f}x, load + first forward "
          f"{sf['load_run_s'] / d['load_run_s']:.2f}x, a later forward {sf['step_s'] / d['step_s']:.2f}x; same output: "
          f"{abs(sf['out'] - d['out']) <= 1e-3 * abs(d['out'])}", flush=True)
    return {"family": family, "file_mib": round(size / 2**20), "load_ratio": round(sf["load_s"] / d["load_s"], 2),
            "load_run_ratio": round(sf["load_run_s"] / d["load_run_s"], 2), "step_ratio": round(sf["step_s"] / d["step_s"], 2), **rows}


def write_single_file(work: Path, layers: int) -> tuple[Path, Path]:
    """A PixArt-Sigma transformer of the real widths with ``layers`` blocks, bf16, as an original-layout single file and
    as a diffusers folder holding the same weights."""
    import torch
    from diffusers import PixArtTransformer2DModel
    from safetensors.torch import save_file

    from spriteforge.tests.tiny_models import _randomize, pixart_to_original

    single, folder = work / f"pixart-sigma-{layers}l-bf16.safetensors", work / f"pixart-sigma-{layers}l-bf16"
    if single.exists() and (folder / "config.json").exists():
        return single, folder
    cfg = {k: v for k, v in PIXART_SIGMA_1024.items() if not k.startswith("_")}
    model = _randomize(PixArtTransformer2DModel.from_config({**cfg, "num_layers": layers}), 0)
    sd = {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    del model
    original = pixart_to_original(sd, tokens=300, hidden=1152, caption=4096, n_pos=64 * 64)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in original.items()}, str(single))
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps({**PIXART_SIGMA_1024, "num_layers": layers}, indent=2))
    return single, folder


def single_file(work: Path, layers: int, repeat: int, mlx: bool, mlx_dtype: str = "float32") -> dict:
    single, folder = write_single_file(work, layers)
    size = single.stat().st_size
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore")
    res = {}
    sides = ("spriteforge", "diffusers") + (("mlx",) if mlx else ())
    for r in range(repeat):  # interleaved, the order alternating
        for which in (sides if r % 2 == 0 else sides[::-1]):
            out = subprocess.run([sys.executable, "-c", SINGLE_CHILD, which, str(single), str(folder), mlx_dtype], capture_output=True,
                                 text=True, env=env)
            if out.returncode != 0:
                raise RuntimeError(f"{which} failed:\n{out.stderr[-3000:]}")
            res.setdefault(which, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = {}
    for which, runs in res.items():
        growth = max(r["peak"] - r["base"] for r in runs)
        load_growth = max(r["load_peak"] - r["base"] for r in runs)  # the load alone, before the first forward
        params, block = runs[0]["params"], runs[0]["block"]
        rows[which] = {"load_s": min(r["load_s"] for r in runs), "load_run_s": min(r["run_s"] for r in runs),
                       "step_s": min(r["step_s"] for r in runs),
                       "load_growth_mib": round(load_growth / 2**20), "load_growth_over_file": round(load_growth / size, 3),
                       "params_mib": round(params / 2**20),
                       "load_growth_over_params_plus_block": round(load_growth / (params + block), 3),
                       "load_growth_over_file_plus_block": round(load_growth / (size + block), 3),
                       "growth_mib": round(growth / 2**20),
                       "growth_over_file": round(growth / size, 3), "layer_mib": round(runs[0]["layer"] / 2**20, 1),
                       "growth_over_file_plus_layer": round(growth / (size + runs[0]["layer"]), 3),
                       "block_mib": round(runs[0]["block"] / 2**20, 1),
                       "growth_over_file_plus_block": round(growth / (size + runs[0]["block"]), 3), "out": runs[0]["out"]}
    sf, d = rows["spriteforge"], rows["diffusers"]
    print(f"bf16 original-layout single file {size / 2**20:.0f} MiB ({layers} PixArt-Sigma blocks), torch-CPU float32 compute, "
          f"{repeat} runs each (interleaved)")
    for which, row in rows.items():
        print(f"  {which:11s} load {row['load_s']:.2f}s  peak RSS growth {row['growth_mib']} MiB = {row['growth_over_file']}x the file "
              f"({row['growth_over_file_plus_layer']}x file + largest layer of {row['layer_mib']} MiB, "
              f"{row['growth_over_file_plus_block']}x file + one block of {row['block_mib']} MiB in "
              f"{mlx_dtype if which == 'mlx' else 'float32'})")
    if "mlx" in rows:  # MLX holds its parameters (in float32 twice the bf16 file): the load's own peak against them
        m = rows["mlx"]
        print(f"  mlx load alone (before the first forward), weights in {mlx_dtype}: peak RSS growth {m['load_growth_mib']} MiB = "
              f"{m['load_growth_over_file']}x the file = {m['load_growth_over_file_plus_block']}x (the file + one block of "
              f"{m['block_mib']} MiB) = {m['load_growth_over_params_plus_block']}x (its parameters of {m['params_mib']} MiB + one block)")
    print(f"  time spriteforge/diffusers: load {sf['load_s'] / d['load_s']:.2f}x (the weights are mapped, read when first used), "
          f"load + first forward {sf['load_run_s'] / d['load_run_s']:.2f}x, a later forward (each layer cast from bf16 "
          f"again) {sf['step_s'] / d['step_s']:.2f}x; same output: "
          f"{abs(sf['out'] - d['out']) <= 1e-3 * abs(d['out'])}")
    return {"file_mib": round(size / 2**20), "load_ratio": round(sf["load_s"] / d["load_s"], 2),
            "load_run_ratio": round(sf["load_run_s"] / d["load_run_s"], 2), "step_ratio": round(sf["step_s"] / d["step_s"], 2),
            **rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default=None, help="where to write the test model (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the written model files")
    ap.add_argument("--scenarios", default="fp32,bf16", help="file dtypes to test (loaded as fp32): fp32,bf16,fp16")
    ap.add_argument("--repeat", type=int, default=1, help="runs per loader (best time, max RSS reported)")
    ap.add_argument("--single-file", action="store_true", help="a bf16 original-layout single file on torch-CPU (see above)")
    ap.add_argument("--layers", type=int, default=4, help="--single-file: PixArt-Sigma blocks (4: a 0.2 GB file)")
    ap.add_argument("--mlx", action="store_true", help="--single-file: the MLX engine's load too")
    ap.add_argument("--mlx-dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                    help="--mlx: the weight dtype MLX loads the transformer into (float16: Metal's policy; the CPU engine "
                         "takes float32 only, so another dtype loads through loading's own steps)")
    ap.add_argument("--family", default="", help="--single-file: today's families instead (qwenimage,zimage,krea2; see above)")
    ap.add_argument("--blocks", type=int, default=1, help="--family: blocks of each kind (1: the smallest file)")
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="sf-bench-"))
    if args.single_file:
        try:
            if args.family:
                rows = [family_file(work, f.strip(), args.blocks, args.repeat) for f in args.family.split(",") if f.strip()]
                print(json.dumps(rows, indent=1))
                return 0
            print(json.dumps(single_file(work, args.layers, args.repeat, args.mlx, args.mlx_dtype), indent=1))
        finally:
            if not args.keep and args.workdir is None:
                shutil.rmtree(work, ignore_errors=True)
        return 0
    names = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
    rows = []
    try:
        for sc in [s.strip() for s in args.scenarios.split(",") if s.strip()]:
            file_dtype = names[sc]
            t0 = time.perf_counter()
            folder = write_model(work / f"pixart-sigma-{sc}", file_dtype)
            size_mb = (folder / "diffusion_pytorch_model.safetensors").stat().st_size / 2**20
            print(f"[{sc}] file {size_mb:.0f} MiB written/found in {time.perf_counter() - t0:.1f}s", flush=True)
            res = {}
            for which in ("diffusers", "spriteforge"):
                runs = [run_child(which, folder, "float32") for _ in range(args.repeat)]
                best = min(runs, key=lambda r: r["load_s"])
                best["peak_mb"] = max(r["peak_mb"] for r in runs)
                res[which] = best
                print(f"  {which:11s} load {best['load_s']:.2f}s  load+touch {best['touch_s']:.2f}s  peak RSS {best['peak_mb']:.0f} MiB "
                      f"(+{best['peak_mb'] - best['base_mb']:.0f} over imports)  {best['params'] / 1e9:.3f}B params {best['dtype']}", flush=True)
            d, s = res["diffusers"], res["spriteforge"]
            assert abs(d["checksum"] - s["checksum"]) <= 1e-3 * max(1.0, abs(d["checksum"])), "the two loaders disagree on the weights"
            growth_d, growth_s = d["peak_mb"] - d["base_mb"], s["peak_mb"] - s["base_mb"]
            row = {
                "scenario": f"{sc} file -> fp32",
                "file_mib": round(size_mb),
                "load_s": (round(s["load_s"], 2), round(d["load_s"], 2)),
                "load_ratio": round(s["load_s"] / d["load_s"], 2),
                "touch_ratio": round(s["touch_s"] / d["touch_s"], 2),
                "peak_mib": (round(s["peak_mb"]), round(d["peak_mb"])),
                "peak_ratio": round(s["peak_mb"] / d["peak_mb"], 2),
                "growth_mib": (round(growth_s), round(growth_d)),
                "growth_ratio": round(growth_s / max(growth_d, 1), 2),
                "growth_over_file_sf": round(growth_s / size_mb, 2),
                "growth_over_file_diffusers": round(growth_d / size_mb, 2),
            }
            rows.append(row)
            print(f"  ratio spriteforge/diffusers: load {row['load_ratio']}x, load+touch {row['touch_ratio']}x, "
                  f"peak RSS {row['peak_ratio']}x, RSS growth {row['growth_ratio']}x "
                  f"(growth/file: spriteforge {row['growth_over_file_sf']}, diffusers {row['growth_over_file_diffusers']})", flush=True)
        print(json.dumps(rows, indent=1))
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
