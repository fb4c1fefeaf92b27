"""LoRA apply / remove / forward overhead / peak memory on a ~0.6B-parameter model.

The model is a real ``PixArtTransformer2DModel`` with PixArt-Σ XL/2's shape (28 blocks,
width 1152, 16 heads, T5 caption width 4096): 0.61B parameters, random weights. The LoRA
is rank 16 on every attention projection (self and cross: to_q, to_k, to_v, to_out.0 of
attn1 and attn2 in all 28 blocks = 224 layers), written as a kohya file.

Measured in one run, against a reference measured in the same run (naive approach: deep
copy of the model + patched weights merged into the copy):

* apply: ``apply_loras`` (on-the-fly patching, and ``merge=True``) vs the naive copy+merge
* remove: dropping the LoRA handle (the base handle is the model without it)
* forward: first and steady forward of the patched model vs the base (one 16x16 latent by default)
* memory: peak RSS growth while applying + running, as a fraction of the model's bytes

Run: ``python benchmarks/bench_lora.py [--layers 28] [--latent 32] [--dtype float32]``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import resource
import sys
import tempfile
import time
from pathlib import Path


def rss_mb() -> float:
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--latent", type=int, default=16, help="latent side (tokens = (latent/2)^2)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--skip-naive", action="store_true", help="skip the deep-copy reference (needs 2x model memory)")
    args = ap.parse_args(argv)

    import torch
    from diffusers import PixArtTransformer2DModel
    from safetensors.torch import save_file

    from spriteforge.engines.base import ModelHandle
    from spriteforge.engines.devices import DeviceInfo
    from spriteforge.engines.policy import decide
    from spriteforge.engines.torch_engine import TorchEngine
    from spriteforge.engines.torch_models.lora import is_patched
    from spriteforge.lora import apply_loras

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    rss0 = rss_mb()
    t = time.perf_counter()
    with torch.no_grad():
        model = PixArtTransformer2DModel(
            num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=args.layers,
            cross_attention_dim=1152, caption_channels=4096, sample_size=args.latent, patch_size=2,
            norm_type="ada_norm_single", use_additional_conditions=False, interpolation_scale=1,
        ).to(dtype).eval()
    build_s = time.perf_counter() - t
    n_params = sum(p.numel() for p in model.parameters())
    model_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    dev = DeviceInfo(kind="cpu")
    handle = ModelHandle(family="pixart", variant="sigma-shaped", engine=TorchEngine(dev, decide(dev)), transformer=model)

    # the LoRA file: kohya naming, alpha = rank/2
    g = torch.Generator().manual_seed(1)
    sd = {}
    targets = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
               and (".attn1." in n or ".attn2." in n)]
    for n in targets:
        w = model.get_submodule(n).weight
        key = "lora_unet_" + n.replace(".", "_")
        sd[key + ".lora_down.weight"] = (torch.randn(args.rank, w.shape[1], generator=g) * 0.01).to(torch.bfloat16)
        sd[key + ".lora_up.weight"] = (torch.randn(w.shape[0], args.rank, generator=g) * 0.01).to(torch.bfloat16)
        sd[key + ".alpha"] = torch.tensor(args.rank / 2)
    tmp = Path(tempfile.mkdtemp())
    path = tmp / "bench_lora_r16.safetensors"
    save_file(sd, str(path))
    lora_mb = path.stat().st_size / 2**20
    del sd
    gc.collect()

    side = args.latent
    inp = dict(hidden_states=torch.randn(1, 4, side, side, generator=g).to(dtype),
               encoder_hidden_states=torch.randn(1, 120, 4096, generator=g).to(dtype),
               timestep=torch.tensor([500.0]), added_cond_kwargs={"resolution": None, "aspect_ratio": None})

    def fwd(m):
        with torch.inference_mode():
            t0 = time.perf_counter()
            y = m(**inp, return_dict=False)[0]
            return time.perf_counter() - t0, y

    base_first, y0 = fwd(model)
    base_steady = min(fwd(model)[0] for _ in range(2))
    gc.collect()
    rss_base = rss_mb()
    peak_base = peak_mb()

    # on-the-fly patching
    t0 = time.perf_counter()
    h1 = apply_loras(handle, [(str(path), 1.0)])
    apply_s = time.perf_counter() - t0
    patched = sum(1 for m in h1.transformer.modules() if is_patched(m))
    rss_after_apply = rss_mb()
    lora_first, y1 = fwd(h1.transformer)
    lora_steady = min(fwd(h1.transformer)[0] for _ in range(2))
    peak_lora = peak_mb()
    diff = (y1.float() - y0.float()).abs().max().item()
    t0 = time.perf_counter()
    del h1  # removing a LoRA = dropping its handle; the base handle is the model without it
    remove_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    gc.collect()
    gc_s = time.perf_counter() - t0
    _, y_back = fwd(handle.transformer)
    exact_back = torch.equal(y_back, y0)

    # merge mode
    t0 = time.perf_counter()
    h2 = apply_loras(handle, [(str(path), 1.0)], merge=True)
    merge_apply_s = time.perf_counter() - t0
    merge_first, _ = fwd(h2.transformer)
    merge_steady = min(fwd(h2.transformer)[0] for _ in range(2))
    peak_merge = peak_mb()
    t0 = time.perf_counter()
    del h2
    merge_remove_s = time.perf_counter() - t0
    gc.collect()

    # reference: naive deep copy + merge into the copy
    naive_s = naive_peak = None
    if not args.skip_naive:
        from safetensors.torch import load_file

        t0 = time.perf_counter()
        ref = copy.deepcopy(model)
        sdl = load_file(str(path))
        with torch.no_grad():
            for n in targets:
                key = "lora_unet_" + n.replace(".", "_")
                d, u = sdl[key + ".lora_down.weight"].float(), sdl[key + ".lora_up.weight"].float()
                w = ref.get_submodule(n).weight
                w += ((u @ d) * (float(sdl[key + ".alpha"]) / args.rank)).to(w.dtype)
        naive_s = time.perf_counter() - t0
        naive_first, _ = fwd(ref)
        naive_peak = peak_mb()
        del ref, sdl
        gc.collect()

    print(f"model: PixArt-Σ-shaped PixArtTransformer2DModel, {args.layers} blocks, width 1152: {n_params / 1e9:.3f}B params, "
          f"{args.dtype}, {model_mb:.0f} MiB (built in {build_s:.1f}s); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load avg {os.getloadavg()[0]:.1f}")
    print(f"LoRA: kohya, rank {args.rank}, {len(targets)} attention projections, {lora_mb:.1f} MiB on disk (bf16); "
          f"{patched} layers patched; max |Δoutput| at strength 1 = {diff:.3g}")
    print(f"forward: {side}x{side} latent ({(side // 2) ** 2} tokens), 120 caption tokens")
    print(f"apply (on the fly):   {apply_s * 1000:8.1f} ms")
    print(f"remove (drop handle): {remove_s * 1000:8.1f} ms (+ a full gc.collect() {gc_s * 1000:.0f} ms); "
          f"base output afterwards bit-identical: {exact_back}")
    print(f"apply (merge=True):   {merge_apply_s * 1000:8.1f} ms; remove {merge_remove_s * 1000:.1f} ms")
    if naive_s is not None:
        print(f"reference deepcopy+merge: {naive_s * 1000:8.1f} ms  -> apply is {naive_s / apply_s:.0f}x faster on the fly, "
              f"{naive_s / merge_apply_s:.1f}x with merge")
    print(f"forward base: first {base_first:.3f}s, steady {base_steady:.3f}s")
    print(f"forward LoRA on the fly: first {lora_first:.3f}s ({lora_first / base_steady:.2f}x base steady), "
          f"steady {lora_steady:.3f}s ({lora_steady / base_steady:.2f}x)")
    print(f"forward LoRA merged: first {merge_first:.3f}s ({merge_first / base_steady:.2f}x), steady {merge_steady:.3f}s "
          f"({merge_steady / base_steady:.2f}x)")
    print(f"memory: process RSS {rss0:.0f} MiB before the model, {rss_base:.0f} MiB with it; "
          f"RSS right after apply +{rss_after_apply - rss_base:.0f} MiB")
    print(f"peak RSS: base phase {peak_base:.0f} MiB; with LoRA (on the fly, apply+forward) {peak_lora:.0f} MiB "
          f"(+{peak_lora - peak_base:.0f} MiB = {(peak_lora - peak_base) / model_mb:.3f}x model); "
          f"merge {peak_merge:.0f} MiB (+{peak_merge - peak_base:.0f} MiB = {(peak_merge - peak_base) / model_mb:.3f}x model)"
          + (f"; naive copy {naive_peak:.0f} MiB (+{naive_peak - peak_base:.0f} MiB = {(naive_peak - peak_base) / model_mb:.2f}x model)"
             if naive_peak is not None else ""))
    print(f"peak RSS / (RSS with base model loaded): on the fly {peak_lora / rss_base:.3f}, merge {peak_merge / rss_base:.3f}"
          + (f", naive {naive_peak / rss_base:.3f}" if naive_peak is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
