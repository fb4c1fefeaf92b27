"""Guidance-embedding Sana models (SANA-Sprint): both engines scale the guidance as diffusers' pipeline does.

diffusers' ``SanaSprintPipeline`` passes ``guidance_scale * transformer.config.guidance_embeds_scale`` to the
transformer (0.1 by default). The reference here is the real pipeline, run for its two SCM steps on a tiny
transformer whose forward is hooked to record the guidance it receives; our torch denoiser must hand the same
guidance to the same (reloaded) transformer, and the MLX denoiser must give the torch denoiser's output.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_models as tm  # noqa: E402

from spriteforge import pipeline  # noqa: E402
from spriteforge.engines.base import Conditioning  # noqa: E402


def _sprint(scale):
    kw = {} if scale is None else {"guidance_embeds_scale": scale}
    m = diffusers.SanaTransformer2DModel(in_channels=32, out_channels=32, num_attention_heads=2, attention_head_dim=32,
                                         num_layers=1, num_cross_attention_heads=2, cross_attention_head_dim=32,
                                         cross_attention_dim=64, caption_channels=tm.GEMMA_DIM, sample_size=8, patch_size=1,
                                         guidance_embeds=True, qk_norm="rms_norm_across_heads", timestep_scale=0.5, **kw)
    return tm._randomize(m, 3).eval()


def _record(module):
    seen = []
    module.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs["guidance"].detach().clone()), with_kwargs=True)
    return seen


def _pipeline_guidance(model, emb, keep, guidance):
    pipe = diffusers.SanaSprintPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=model,
                                        scheduler=diffusers.SCMScheduler())
    seen = _record(model)
    with torch.no_grad():
        pipe(prompt_embeds=torch.from_numpy(emb), prompt_attention_mask=torch.from_numpy(keep), guidance_scale=guidance,
             num_inference_steps=2, height=256, width=256, use_resolution_binning=False, output_type="latent")
    assert len(seen) == 2
    return seen[0]


@pytest.mark.parametrize("scale", [None, 0.25])  # the config's default (0.1) and another value
def test_guidance_is_scaled_as_in_sana_sprint_pipeline(tmp_path, scale):
    from spriteforge.engines import get_engine

    model = _sprint(scale)
    model.save_pretrained(str(tmp_path / "sprint"))
    rng = np.random.default_rng(5)
    emb = rng.standard_normal((1, 6, tm.GEMMA_DIM)).astype(np.float32)
    keep = np.array([[1, 1, 1, 1, 1, 0]])
    ref = _pipeline_guidance(model, emb, keep, 2.5)
    assert abs(float(ref[0]) - 2.5 * (0.1 if scale is None else scale)) < 1e-6  # the pipeline's own scaling

    te = get_engine("torch", "cpu")
    h = te.load_model(str(tmp_path / "sprint"))
    seen = _record(h.transformer)
    cond = Conditioning(family="sana", embeds=te.from_numpy(emb), mask=te.from_numpy(keep, "int32"), guidance=2.5)
    x = rng.standard_normal((1, 32, 8, 8)).astype(np.float32)
    dn = te.denoiser(h, cond, model_schedule=pipeline.model_schedule(h, 256, 256))
    out_t = dn(x, 0.7)
    assert len(seen) == 1
    assert seen[0].dtype == ref.dtype and torch.equal(seen[0], ref), (seen[0], ref)

    # the guidance matters: with the raw (unscaled) guidance the transformer gives another output
    t = float(pipeline.model_schedule(h, 256, 256).timestep(0.7)) * 0.5
    with torch.no_grad():
        kw = dict(encoder_hidden_states=torch.from_numpy(emb), encoder_attention_mask=torch.from_numpy(keep),
                  timestep=torch.tensor([t]), return_dict=False)
        a = h.transformer(torch.from_numpy(x), guidance=ref, **kw)[0]
        b = h.transformer(torch.from_numpy(x), guidance=torch.tensor([2.5]), **kw)[0]
    assert float((a - b).abs().max()) > 1e-3

    mx = pytest.importorskip("mlx.core")
    me = get_engine("mlx", "cpu")
    hm = me.load_model(str(tmp_path / "sprint"))
    cm = Conditioning(family="sana", embeds=me.from_numpy(emb), mask=me.from_numpy(keep, "int32"), guidance=2.5)
    out_m = me.denoiser(hm, cm, model_schedule=pipeline.model_schedule(hm, 256, 256))(x, 0.7)
    diff = float(np.abs(out_t - out_m).max())
    print(f"Sana-Sprint guidance scale {scale}: max |torch - mlx| = {diff:.3g}")
    assert diff <= 1e-4 * (1 + float(np.abs(out_t).max()))
