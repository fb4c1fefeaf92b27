"""Our Qwen-Image sampling loop against diffusers' QwenImagePipeline: ``bench_generate`` for Qwen-Image alone.

  python -m spriteforge.benchmarks.bench_qwenimage [--steps 20] [--pairs 15] [--threads 1] [--json]
      = python -m spriteforge.benchmarks.bench_generate --families qwenimage --edits '' ...

A small random-weight Qwen-Image transformer (the real class, 6 double-stream blocks, 4 heads of 32) written as a
single file in ``qwen_image_bf16.safetensors``' layout (diffusers names) and loaded as a user's file is, sampled with
Euler and true CFG 4 (a prompt and a shorter negative, both precomputed) by ``spriteforge.pipeline.sample`` (one
batched call for both prompts) and by QwenImagePipeline (two calls a step) given the same sigmas and initial latents;
interleaved pairs, the ratio's median and quartiles (see bench_generate). ``--edits qwenedit-2511`` on bench_generate
gives Qwen-Image-Edit-2511 against QwenImageEditPlusPipeline.
"""

from __future__ import annotations

import sys


def main(argv=None) -> int:
    from spriteforge.benchmarks import bench_generate

    return bench_generate.main(["--families", "qwenimage", "--edits", ""] + list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    raise SystemExit(main())
