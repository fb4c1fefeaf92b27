"""FLUX.2 [dev]'s Mistral-3 text encoder (Mistral Small 3.1's language model) runs on both engines: the file ComfyUI
users hold (``mistral_3_small_flux2_bf16.safetensors``: ``model.*`` names, detected from the shapes) and a diffusers
folder's ``text_encoder/`` (``Mistral3ForConditionalGeneration``, vision tower unread); the prompt through BFL's
system message in the Mistral-Small-3 chat template (the tokenizer's own, or ours for a bare ``tokenizer.json``),
padded on the right to 512 tokens (as diffusers' reference pads with FLUX.2 [dev]'s own tokenizer), hidden states 10/20/30 side by side: equal to diffusers' ``Flux2Pipeline.encode_prompt``
on the same tiny model and tokenizer (torch), and the MLX port close to it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_flux2 as tf  # noqa: E402
import tiny_mistral as tm  # noqa: E402

from spriteforge import pipeline  # noqa: E402
from spriteforge.engines import get_engine  # noqa: E402
from spriteforge.models.detect import detect  # noqa: E402
from spriteforge.models.families.flux2 import SYSTEM_MESSAGE, _chat, mistral_chat  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PROMPTS = ["a red knight", "a small green dragon on a hill, pixel art"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("mistral")


def _reference(root, layout="comfy"):
    """diffusers' own [dev] prompt embeddings (Flux2Pipeline.encode_prompt) on the tiny model and templated tokenizer
    (``tekken``: transformers' conversion of the same tekken.json, given the template)."""
    from diffusers import Flux2Pipeline

    if layout == "tekken":
        from transformers.integrations.mistral.tokenizer import convert_tekken_tokenizer

        tok = convert_tekken_tokenizer(str(tm.make_tekken(root / "tekken" / "tokenizers")), chat_template=tm.CHAT_TEMPLATE)
    else:
        tok = transformers.AutoTokenizer.from_pretrained(str(tm.make_mistral_tokenizer(root / "tokenizers")), local_files_only=True)
    pipe = Flux2Pipeline(scheduler=tf._scheduler(), vae=tf.build_flux2_vae(), text_encoder=tm.build_mistral3(), tokenizer=tok,
                         transformer=tf.build_flux2("dev"))
    with torch.no_grad():
        return pipe.encode_prompt(PROMPTS, device=torch.device("cpu"))[0].float().numpy()


def _ours(root, engine, layout):
    eng = get_engine(engine, "cpu")
    te = tm.make_mistral3(root / layout, layout="comfy" if layout == "tekken" else layout, template=layout == "folder",
                          tekken=layout == "tekken")
    h = eng.load_model(str(tf.make_flux2(root, layout="original", variant="dev")),
                       vae=str(tf.make_flux2_vae(root, layout="original", name="flux2-vae.safetensors")),
                       text_encoders=[str(te)], dtype="float32")
    assert set(h.text_encoders) == {"mistral3"}
    cond = pipeline.encode(eng, h, PROMPTS, with_negative=False)
    return np.asarray(cond.embeds, dtype=np.float32), cond


def test_the_chat_template_without_one_is_the_mistral_small_3_template(root):
    """A bare tokenizer.json has no template: ours renders what transformers renders with the Mistral-Small-3 one."""
    with_t = transformers.AutoTokenizer.from_pretrained(str(tm.make_mistral_tokenizer(root / "tokenizers")), local_files_only=True)
    bare = transformers.AutoTokenizer.from_pretrained(str(tm.make_mistral_tokenizer(root / "tokenizers", template=False)),
                                                      local_files_only=True)
    assert bare.chat_template is None and with_t.chat_template
    for p in PROMPTS + ["[IMG]a knight"]:
        conv = _chat(p)
        want = with_t.apply_chat_template(conv, tokenize=False, add_generation_prompt=False)
        assert mistral_chat(bare, conv) == want == f"<s>[SYSTEM_PROMPT]{SYSTEM_MESSAGE}[/SYSTEM_PROMPT][INST]{p.replace('[IMG]', '')}[/INST]"


def test_comfyui_s_file_is_detected_as_the_dev_text_encoder(root):
    """From the header: no q/k norm, no q/k/v bias, Mistral's vocabulary and embedded tekken tokenizer; the release's
    128-wide heads and rope theta; loaded, not refused."""
    det = detect(tm.make_mistral3(root / "tekken", tekken=True))
    assert (det.kind, det.variant) == ("text_encoder", "mistral3") and "recognised_as" not in det.extras
    assert (det.config["head_dim"], det.config["num_hidden_layers"], det.config["rope_theta"]) == (128, tm.MISTRAL_LAYERS, 1e9)
    assert det.extras["tokenizer"] == "embedded (tekken_model)"


LAYOUTS = ["comfy", "tekken", "folder"]  # tokenizer.json beside the file, ComfyUI's embedded tekken.json, a diffusers folder


@pytest.mark.parametrize("layout", LAYOUTS)
def test_torch_prompt_embeddings_match_flux2_pipeline(root, layout):
    ours, cond = _ours(root, "torch", layout)
    ref = _reference(root, layout)
    diff = float(np.abs(ours - ref).max())
    print(f"Mistral-3 ({layout}) torch: max |ours - Flux2Pipeline.encode_prompt| = {diff:.2e} (scale {np.abs(ref).max():.2f})")
    assert ours.shape == ref.shape == (2, 512, 3 * tm.QWEN3_DIM) and diff <= 1e-5
    assert cond.guidance == 4.0


@pytest.mark.parametrize("layout", LAYOUTS)
def test_mlx_prompt_embeddings_match_torch(root, layout):
    pytest.importorskip("mlx.core")
    ref, _ = _ours(root, "torch", layout)
    ours, _ = _ours(root, "mlx", layout)
    diff = float(np.abs(ours - ref).max())
    print(f"Mistral-3 ({layout}) MLX: max |MLX - torch| = {diff:.2e} (scale {np.abs(ref).max():.2f})")
    assert ours.shape == ref.shape and diff <= 1e-4 * max(1.0, float(np.abs(ref).max()))


@pytest.mark.parametrize("engine", ["torch", "mlx"])
def test_comfyui_s_pruned_30_layer_file_gives_the_full_model_s_embeddings(root, engine):
    """ComfyUI's Mistral-3 cut after layer 30: hidden state 30 is that layer's output, not the final norm's (as in the
    full model, whose state 30 is read before any norm)."""
    if engine == "mlx":
        pytest.importorskip("mlx.core")
    path = tm.make_mistral3(root / "pruned", tekken=True, pruned=True)
    det = detect(path)
    assert det.config["num_hidden_layers"] == 30 and det.config["final_norm"] is False
    full, _ = _ours(root, "torch", "tekken")
    eng = get_engine(engine, "cpu")
    h = eng.load_model(str(tf.make_flux2(root, layout="original", variant="dev")),
                       vae=str(tf.make_flux2_vae(root, layout="original", name="flux2-vae.safetensors")),
                       text_encoders=[str(path)], dtype="float32")
    ours = np.asarray(pipeline.encode(eng, h, PROMPTS, with_negative=False).embeds, dtype=np.float32)
    diff = float(np.abs(ours - full).max())
    print(f"Mistral-3 pruned ({engine}): max |pruned - full| = {diff:.2e}")
    assert diff <= (0.0 if engine == "torch" else 1e-4 * float(np.abs(full).max()))


def _release_header(layers: int) -> dict:
    """Mistral Small 3.1's language model as ComfyUI's mistral_3_small_flux2_bf16.safetensors names and shapes it
    (``model.*``, 5120 wide, 32 query heads and 8 key/value heads of 128, a 32768-wide MLP, 131072 tokens)."""
    t = {"model.embed_tokens.weight": [131072, 5120], "model.norm.weight": [5120]}
    for i in range(layers):
        p = f"model.layers.{i}."
        t.update({p + "self_attn.q_proj.weight": [4096, 5120], p + "self_attn.k_proj.weight": [1024, 5120],
                  p + "self_attn.v_proj.weight": [1024, 5120], p + "self_attn.o_proj.weight": [5120, 4096],
                  p + "mlp.gate_proj.weight": [32768, 5120], p + "mlp.up_proj.weight": [32768, 5120],
                  p + "mlp.down_proj.weight": [5120, 32768], p + "input_layernorm.weight": [5120],
                  p + "post_attention_layernorm.weight": [5120]})
    return {k: {"dtype": "bf16", "shape": s} for k, s in t.items()}


@pytest.mark.parametrize("layers", [40, 30])
def test_the_real_size_file_is_named_from_its_header(tmp_path, capsys, layers):
    """The 48 GB file (and ComfyUI's 30-layer cut) from the header alone: the release's config, not refused."""
    from test_inspect_cli import _fake_file

    from spriteforge.cli.main import main

    path = _fake_file(tmp_path / "mistral_3_small_flux2_bf16.safetensors", _release_header(layers))
    det = detect(path)
    assert (det.kind, det.variant) == ("text_encoder", "mistral3") and "recognised_as" not in det.extras
    cfg = det.config
    assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"], cfg["intermediate_size"],
            cfg["num_hidden_layers"], cfg["vocab_size"], cfg["rope_theta"]) == (5120, 32, 8, 128, 32768, layers, 131072, 1e9)
    assert cfg.get("final_norm", True) is (layers == 40)
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "mistral3" in text and "recognised:" not in text and "generation:" not in text


def test_mlx_decoder_gives_torch_s_states_on_left_padded_rows_too():
    """A left-padded row's pads see no key at all: torch's attention gives them a zero output, so does the MLX port
    (every position's state equal, not only the real tokens')."""
    mx = pytest.importorskip("mlx.core")
    from spriteforge.engines.mlx_models.decoder_lm import DecoderLM, map_weights

    lm = tm.build_mistral3().model.language_model
    ids = np.random.default_rng(0).integers(0, 300, (2, 12))
    mask = np.ones_like(ids)
    mask[0, :5] = 0
    with torch.no_grad():
        ref = lm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True).hidden_states
    port = DecoderLM(tm.mistral_config().to_dict())
    port.load_weights([(k, mx.array(v.numpy())) for k, v in map_weights(lm.state_dict()).items()])
    ours = port(mx.array(ids), mx.array(mask), layers=[10, 20, 30])
    for i, o in zip((10, 20, 30), ours):
        assert float(np.abs(np.array(o) - ref[i].numpy()).max()) <= 1e-4 * float(ref[i].abs().max())
