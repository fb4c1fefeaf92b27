"""Qwen-Image-Edit's prompt side: the reference images through Qwen2.5-VL's vision tower, on both engines.

The processor (numpy, no torchvision) against transformers' ``Qwen2VLImageProcessorPil``; the vision tower's 2-D
positions and window order and the language model's 3-D rotary positions against transformers' own functions; the
prompt embeddings of our encoding (``qwen_2.5_vl_7b.safetensors``' layout, vision tower included, loaded the way a
user's file is) against ``QwenImageEditPlusPipeline.encode_prompt`` on the real ``Qwen2_5_VLForConditionalGeneration``;
the MLX vision tower port against the real class; MLX prompt embeddings against torch's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from spriteforge.engines import get_engine
from spriteforge.engines import vision_inputs as vi
from spriteforge.tests.parity import assert_close

PROMPT = "make the knight's armour red"
GRIDS = [(1, 16, 24), (1, 8, 6), (1, 10, 14)]


def _images(n=2, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [(96, 128), (80, 60), (70, 70)]
    return [(rng.random((*sizes[i], 3)) * 255).astype(np.uint8) for i in range(n)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from spriteforge.tests.tiny_qwenimage import make_qwen_vae
    from spriteforge.tests.tiny_qwenimage_edit import make_qwen25_vl_edit, make_qwenimage_edit

    d = tmp_path_factory.mktemp("qwenimage_edit_prompt")
    return make_qwenimage_edit(d), make_qwen_vae(d), make_qwen25_vl_edit(d)


def _load(engine_name, files):
    m, v, te = files
    eng = get_engine(engine_name, "cpu")
    return eng, eng.load_model(str(m), vae=str(v), text_encoders=[str(te)], dtype="float32")


@pytest.mark.parametrize("size", [(150, 230), (28, 28), (20, 700), (1200, 1100)])
def test_pixels_are_the_image_processors(size):
    """Resize to multiples of 28 within the pixel bounds (upscaled, downscaled, kept), normalisation, the 14x14x2
    temporal patches in merge-block order and the grid: exactly transformers' Qwen2VLImageProcessor (PIL backend)."""
    import transformers

    img = (np.random.default_rng(1).random((*size, 3)) * 255).astype(np.uint8)
    ref = transformers.Qwen2VLImageProcessorPil()(images=[Image.fromarray(img)], return_tensors="np")
    patches, grid = vi.qwen_vl_pixels(img)
    assert tuple(ref["image_grid_thw"][0]) == grid
    np.testing.assert_allclose(patches, ref["pixel_values"], atol=1e-6)


def test_vision_and_rotary_indices_are_transformers():
    """The vision tower's patch positions and window order, and the language model's 3-D rotary positions of a
    padded batch with several images, as transformers computes them."""
    from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

    grids = torch.tensor(GRIDS)
    assert np.array_equal(get_vision_position_ids(grids, 2).numpy(), vi.vision_positions(GRIDS))
    order, bounds = get_vision_window_index(grids, 2, 112, 14)
    mine = vi.window_index(GRIDS)
    assert np.array_equal(order.numpy(), mine[0]) and np.array_equal(bounds.numpy(), mine[1])


def test_rope_index_is_qwen25_vl_s(files):
    from spriteforge.tests.tiny_qwenimage_edit import _tokenizer, load_qwen25_vl_edit

    te = files[2]
    model = load_qwen25_vl_edit(te)
    tok = _tokenizer(te.parent)
    img = "<|vision_start|><|image_pad|><|vision_end|>"
    texts = [f"a {img} then {img} and {img} the end", f"short {img}{img}{img}"]
    ti = tok([vi.expand_image_pads(t, GRIDS) for t in texts], padding=True, return_tensors="pt")
    image_token = model.config.image_token_id
    ref, _ = model.model.get_rope_index(ti["input_ids"], (ti["input_ids"] == image_token).int(), image_grid_thw=torch.tensor(GRIDS * 2),
                                        attention_mask=ti["attention_mask"])
    assert np.array_equal(ref.numpy(), vi.rope_index(ti["input_ids"].numpy(), ti["attention_mask"].numpy(), image_token, GRIDS))


def _pipeline_embeds(files, images, prompt):
    """``QwenImageEditPlusPipeline.encode_prompt`` on the real class with the file's weights, the condition images
    resized by the pipeline's own image processor. transformers 5.25 computes Qwen2.5-VL's 3-D rotary positions only
    when ``mm_token_type_ids`` reaches the model, and diffusers 0.42's pipeline does not pass it (the language model
    then numbers image tokens as text: huggingface/diffusers#14194, fix proposed in #14189); the hook hands the model
    what the processor made, so the reference is the model as released (and as ComfyUI runs it)."""
    import diffusers
    import transformers

    from spriteforge.models.families.qwenimage import CONDITION_AREA, calculate_dimensions
    from spriteforge.tests.tiny_qwenimage import build_qwen_vae
    from spriteforge.tests.tiny_qwenimage_edit import build_qwenimage_edit, load_qwen25_vl_edit, processor

    te = files[2]
    tok = transformers.AutoTokenizer.from_pretrained(str(te.parent / f"{te.stem}_tokenizer"), local_files_only=True)
    enc = load_qwen25_vl_edit(te)
    pipe = diffusers.QwenImageEditPlusPipeline(transformer=build_qwenimage_edit(), vae=build_qwen_vae(), text_encoder=enc, tokenizer=tok,
                                               processor=processor(tok), scheduler=diffusers.FlowMatchEulerDiscreteScheduler())
    shown = []
    for im in images:
        pil = Image.fromarray(im)
        w, h = calculate_dimensions(CONDITION_AREA, pil.size[0] / pil.size[1])
        shown.append(pipe.image_processor.resize(pil, h, w))
    image_token = enc.config.image_token_id
    hook = enc.register_forward_pre_hook(lambda _m, a, kw: (a, {**kw, "mm_token_type_ids": (kw["input_ids"] == image_token).int()}),
                                         with_kwargs=True)
    try:
        with torch.no_grad():
            emb, mask = pipe.encode_prompt(prompt, image=shown)
    finally:
        hook.remove()
    return emb.numpy(), mask


@pytest.mark.parametrize("n", [1, 2, 3])
def test_torch_prompt_embeddings_match_the_edit_pipeline(files, n):
    """Template with "Picture i:" per reference, 64 dropped tokens, vision features in the image places, 3-D
    positions: our torch encoding equals QwenImageEditPlusPipeline's ``encode_prompt``."""
    images = _images(n)
    eng, h = _load("torch", files)
    cond = eng.encode_text(h, [PROMPT], images=[i.astype(np.float32) / 255 for i in images])
    ref, _ = _pipeline_embeds(files, images, PROMPT)
    assert_close(eng.to_numpy(cond.embeds), ref, f"edit prompt embeds ({n} images)")
    assert eng.to_numpy(cond.mask).all()


def test_too_many_references_are_refused(files):
    from spriteforge.errors import SpriteForgeError

    eng, h = _load("torch", files)
    with pytest.raises(SpriteForgeError) as e:
        eng.encode_text(h, [PROMPT], images=[np.zeros((32, 32, 3), np.float32)] * 4)
    assert e.value.code == "BAD_INPUT"


def test_a_text_encoder_without_its_vision_tower_is_refused_for_editing(files):
    """A Qwen2.5-VL text encoder held without its vision tower still encodes text prompts; editing with it says what
    is missing (MODEL_NOT_FOUND), never a bare AttributeError."""
    from spriteforge.errors import SpriteForgeError

    eng, h = _load("torch", files)
    del h.text_encoders["qwen25_7b"].visual
    assert eng.encode_text(h, [PROMPT]).embeds.shape[0] == 1
    with pytest.raises(SpriteForgeError) as e:
        eng.encode_text(h, [PROMPT], images=[np.zeros((32, 32, 3), np.float32)])
    assert e.value.code == "MODEL_NOT_FOUND"


# --------------------------------------------------------------------------- MLX
def test_mlx_vision_tower_port_matches_the_real_class(files):
    """The MLX port (window and full attention, 2-D rope, merger) on the tiny file's ``visual.*`` against transformers'
    ``Qwen2_5_VisionTransformerPretrainedModel`` with the same weights, three images of different grids at once."""
    pytest.importorskip("mlx.core")
    from spriteforge.engines.mlx_models.loading import _te_config, _text_encoder
    from spriteforge.models.detect import detect
    from spriteforge.tests.tiny_qwenimage_edit import load_qwen25_vl_edit

    te = files[2]
    images = _images(3)
    pix = [vi.qwen_vl_pixels(im) for im in images]
    patches, grids = np.concatenate([p for p, _ in pix]), [g for _, g in pix]
    ref = load_qwen25_vl_edit(te).model.visual
    with torch.no_grad():
        want = ref(torch.from_numpy(patches), grid_thw=torch.tensor(grids)).pooler_output.numpy()
    from safetensors.torch import load_file

    import mlx.core as mx

    det = detect(te)
    enc = _text_encoder(det.variant, _te_config(det.variant, det.config), dict(load_file(str(te))), mx.float32, "qwenimage",
                        vision=det.config["vision_config"])
    got = np.asarray(enc._sf_visual(patches, grids))
    assert_close(got, want, "MLX vision tower")


def test_mlx_prompt_embeddings_match_torch_batch_independent(files):
    """Edit prompt embeddings on MLX equal torch's, two prompts of different lengths in one batch (padded), each row
    equal to the prompt encoded alone."""
    pytest.importorskip("mlx.core")
    images = [i.astype(np.float32) / 255 for i in _images(2)]
    prompts = [PROMPT, "turn the sprite to face left, keep the palette"]
    out = {}
    for name in ("torch", "mlx"):
        eng, h = _load(name, files)
        out[name] = eng.to_numpy(eng.encode_text(h, prompts, images=images).embeds)
        if name == "mlx":
            alone = eng.to_numpy(eng.encode_text(h, prompts[:1], images=images).embeds)
            assert_close(out[name][:1, :alone.shape[1]], alone, "MLX row 0 in a batch vs alone")
    assert_close(out["mlx"], out["torch"], "MLX vs torch edit prompt embeds")


def test_the_released_vision_tower_fits_the_classes_the_engines_build(shared_dir):
    """What detection reads from qwen_2.5_vl_7b.safetensors' ``visual.*`` header (plus the release's facts no shape
    tells) is Qwen2.5-VL-7B-Instruct's vision_config, builds transformers' vision tower (meta device) whose every
    tensor name and shape the file's fill, and the MLX port whose parameters are the file's after ``map_weights``."""
    import json

    from spriteforge.engines.torch_models.qwen_vision import build_vision
    from spriteforge.models.detect import detect_tensors
    from spriteforge.models.safetensors_header import header_from_manifest

    man = json.loads((shared_dir / "checkpoints" / "qwen2.5-vl-7b.text-encoder.json").read_text())
    det = detect_tensors(header_from_manifest(man).tensors, name="qwen_2.5_vl_7b.safetensors")
    vc = det.config["vision_config"]
    want = man["transformers_config"]["vision_config"]
    for k in ("depth", "hidden_size", "num_heads", "intermediate_size", "out_hidden_size", "patch_size", "temporal_patch_size",
              "spatial_merge_size", "window_size", "fullatt_block_indexes", "hidden_act", "tokens_per_second"):
        assert vc[k] == want[k], k
    visual = {k[len("visual."):]: tuple(v["shape"]) for k, v in man["tensors"].items() if k.startswith("visual.")}
    assert {k: tuple(v.shape) for k, v in build_vision(vc).state_dict().items()} == visual
    pytest.importorskip("mlx.core")
    from mlx.utils import tree_flatten

    from spriteforge.engines.mlx_models.qwen_vision import VisionTower, map_weights

    port = {k: tuple(v.shape) for k, v in tree_flatten(VisionTower(vc).parameters())}
    mapped = map_weights({k: np.zeros(s, np.float32) if "patch_embed" in k else np.empty(0) for k, s in visual.items()})
    assert set(port) == set(mapped) and port["patch_embed.proj.weight"] == mapped["patch_embed.proj.weight"].shape
