"""Tiny Qwen-Image-Edit parts built with the REAL classes and saved in the REAL layouts (see tests/tiny_models.py).

    build_qwen25_vl_edit(root, seed=0) -> Qwen2_5_VLForConditionalGeneration with a 2-block vision tower (one window
        block, one full-attention block: window attention is exercised) whose image/video/vision-start token ids are
        the tiny tokenizer's (``make_qwen_tokenizer(..., vision=True)``)
    make_qwen25_vl_edit(root) -> ``qwen_2.5_vl_7b.safetensors``' layout (legacy names, visual.*, untied lm_head) with
        its tokenizer (vision tokens included) beside it
    build_qwenimage_edit(seed=0, zero_cond_t=False) -> QwenImageTransformer2DModel (2511: ``zero_cond_t``)
    make_qwenimage_edit(root, release="2509") -> the transformer as ComfyUI users hold it (diffusers names)
    make_qwenimage_edit_folder(root, release="2509"|"2511"|"edit") -> a QwenImageEditPlusPipeline (or
        QwenImageEditPipeline) folder with its processor
"""

from __future__ import annotations

import json
from pathlib import Path

TOKENIZER = "qwen25vl_tokenizer"  # the tiny tokenizer with Qwen2.5-VL's vision tokens


def processor(tok):
    """transformers' ``Qwen2VLProcessor`` over ``tok`` and the PIL image processor, without a video processor.
    (transformers 5.25 checks every processor part's class, the absent video processor's too, and that check needs
    torchvision; images never reach the video processor, so the check is skipped for it alone.)"""
    import transformers

    class Qwen2VLProcessor(transformers.Qwen2VLProcessor):  # (the real name: a saved folder's model_index names it)
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument is None and argument_name == "video_processor":
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    return Qwen2VLProcessor(image_processor=transformers.Qwen2VLImageProcessorPil(), tokenizer=tok)


def _tokenizer(root):
    import transformers

    from spriteforge.tests.tiny_qwen import make_qwen_tokenizer

    return transformers.Qwen2Tokenizer.from_pretrained(str(make_qwen_tokenizer(root, TOKENIZER, vision=True)), local_files_only=True)


def build_qwen25_vl_edit(root, seed: int = 0):
    """A tiny real ``Qwen2_5_VLForConditionalGeneration``: the txt2img tests' language model, a 2-block vision tower
    (160 wide, 2 heads of the release's 80; window attention in block 0, full attention in block 1, the release's 14-pixel patches,
    2x2 merge and 112-pixel windows), the special token ids of the tiny tokenizer."""
    import transformers

    from spriteforge.tests.tiny_models import _randomize
    from spriteforge.tests.tiny_qwenimage import QWEN25_DIM

    tok = _tokenizer(root)
    ids = {n: tok.convert_tokens_to_ids(t) for n, t in (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                                                        ("vision_start_token_id", "<|vision_start|>"),
                                                        ("vision_end_token_id", "<|vision_end|>"))}
    vision = dict(depth=2, hidden_size=160, num_heads=2, intermediate_size=64, out_hidden_size=QWEN25_DIM, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1], in_channels=3,
                  hidden_act="silu", tokens_per_second=2)
    text = dict(vocab_size=len(tok), hidden_size=QWEN25_DIM, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=2048,
                rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    cfg = transformers.Qwen2_5_VLConfig(vision_config=vision, text_config=text, tie_word_embeddings=False, bos_token_id=None,
                                        eos_token_id=None, **ids)
    return _randomize(transformers.Qwen2_5_VLForConditionalGeneration(cfg), seed)


def make_qwen25_vl_edit(root, seed: int = 0, name: str = "qwen_2.5_vl_7b_vision") -> Path:
    """``qwen_2.5_vl_7b.safetensors`` as ComfyUI users hold it (legacy transformers-4 names, ``visual.*`` and the
    untied ``lm_head`` included) with ``<name>_tokenizer/`` (vision tokens included) beside it."""
    from spriteforge.tests.tiny_models import _save_file
    from spriteforge.tests.tiny_qwen import make_qwen_tokenizer
    from spriteforge.tests.tiny_qwenimage import qwen25_vl_legacy_names

    root = Path(root)
    path = root / f"{name}.safetensors"
    if not path.exists():
        _save_file(qwen25_vl_legacy_names(build_qwen25_vl_edit(root, seed).state_dict()), path)
        side = root / f"{name}_tokenizer"
        side.mkdir(parents=True, exist_ok=True)
        for f in make_qwen_tokenizer(root, TOKENIZER, vision=True).iterdir():
            (side / f.name).write_bytes(f.read_bytes())
    return path


def load_qwen25_vl_edit(path):
    """The tiny file back in the real class (the reference)."""
    from safetensors.torch import load_file

    root = Path(path).parent
    model = build_qwen25_vl_edit(root)
    sd = load_file(str(path))
    new = {}
    for k, v in sd.items():
        if k.startswith("visual."):
            k = "model." + k
        elif k.startswith("model."):
            k = "model.language_model." + k[len("model."):]
        new[k] = v
    model.load_state_dict(new)
    return model.eval()


def build_qwenimage_edit(seed: int = 0, zero_cond_t: bool = False):
    """A tiny real ``QwenImageTransformer2DModel`` as the txt2img tests' (Edit 2511: ``zero_cond_t``)."""
    from diffusers import QwenImageTransformer2DModel

    from spriteforge.tests.tiny_models import _randomize
    from spriteforge.tests.tiny_qwenimage import QWEN25_DIM

    tr = QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=16,
                                     num_attention_heads=2, joint_attention_dim=QWEN25_DIM, axes_dims_rope=(4, 6, 6),
                                     zero_cond_t=zero_cond_t)
    return _randomize(tr, seed)


def make_qwenimage_edit(root, release: str = "2509", seed: int = 0) -> Path:
    """The Edit transformer as one file (diffusers names, no prefix: ``qwen_image_edit_2509_bf16.safetensors``)."""
    from spriteforge.tests.tiny_models import _save_file

    path = Path(root) / f"qwen_image_edit_{release}_tiny.safetensors"
    if not path.exists():
        _save_file(build_qwenimage_edit(seed, zero_cond_t=release == "2511").state_dict(), path)
    return path


def make_qwenimage_edit_folder(root, release: str = "2509", seed: int = 0) -> Path:
    """A complete diffusers folder as Qwen/Qwen-Image-Edit-2509 (-2511; ``"edit"``: Qwen/Qwen-Image-Edit) is laid
    out: transformer/, vae/, text_encoder/ (vision tower included), tokenizer/, processor/, scheduler/."""
    import diffusers
    import transformers

    from spriteforge.models import configs
    from spriteforge.tests.tiny_models import _done, _write_pipeline
    from spriteforge.tests.tiny_qwenimage import build_qwen_vae

    root = Path(root)
    d = root / f"Qwen-Image-Edit-{release}-tiny"
    if _done(d):
        return d
    tok = _tokenizer(root)
    sched = configs.load("qwen-image")["scheduler"]
    sched.pop("_class_name")
    cls = "QwenImageEditPipeline" if release == "edit" else "QwenImageEditPlusPipeline"
    _write_pipeline(d, cls, {
        "transformer": build_qwenimage_edit(seed, zero_cond_t=release == "2511"), "vae": build_qwen_vae(seed + 1),
        "text_encoder": build_qwen25_vl_edit(root, seed + 2), "tokenizer": tok, "processor": None,
        "scheduler": diffusers.FlowMatchEulerDiscreteScheduler.from_config(sched)})
    # processor/ as the releases hold it (the tokenizer's files and preprocessor_config.json): transformers 5.25
    # cannot save a processor without its video processor, so its parts are saved one by one
    tok.save_pretrained(str(d / "processor"))
    transformers.Qwen2VLImageProcessorPil().save_pretrained(str(d / "processor"))
    index = json.loads((d / "model_index.json").read_text())
    index["processor"] = ["transformers", "Qwen2VLProcessor"]
    (d / "model_index.json").write_text(json.dumps(index, indent=2))
    return d
