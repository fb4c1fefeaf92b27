"""Tiny real-format Qwen-Image 2.1 files, built with diffusers' own classes (``QwenImage21Transformer2DModel``,
``AutoencoderKLQwenImage21``) and saved in the layouts users hold:

    make_qwenimage21(root, layout="diffusers" | "original" | "folder")
        diffusers' names (``qwen_image_2.1.safetensors``); ComfyUI's single file (``model.diffusion_model.`` prefix,
        each block's SwiGLU gate and up fused into ``img_mlp.gate_up.weight``, gate rows first: the layout diffusers'
        ``convert_qwen_image21_transformer_checkpoint_to_diffusers`` reads); or a diffusers folder (``transformer/``
        saved by ``save_pretrained``, ``model_index.json`` naming QwenImage21Pipeline).
    make_qwenimage21_folder(root): a complete ``QwenImage21Pipeline`` folder (transformer/, vae/, text_encoder/ = the full
        ``Qwen3VLForConditionalGeneration``, processor/ = the tokenizer's files and the image processor's config, as
        the release holds them: no tokenizer/, scheduler/), with the same weights as the single files above.
    make_qwen21_vae(root): the VAE in diffusers' names.
    make_qwen3_vl_8b(root): Qwen3-VL with the 8B's untied head (``lm_head.weight`` stored), the tiny Qwen tokenizer
        (with the vision tokens) beside it as ``<name>_tokenizer``.
    processor(tok): transformers' ``Qwen3VLProcessor`` over it, with the real template's rendering of content lists
        (QwenImage21Pipeline counts the system turn's tokens through it).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# a 2-block model of 2 heads 32 wide, the text 32 wide (tiny_krea2's Qwen3-VL) (the release: 32 blocks, 32 x 128, Qwen3-VL 4096)
CONFIG = {"num_layers": 2, "attention_head_dim": 32, "num_attention_heads": 2, "context_in_dim": 32,
          "axes_dims_rope": [4, 14, 14], "in_channels": 64, "out_channels": 64, "mlp_ratio": 3}
VAE_CONFIG = {"base_dim": 8, "decoder_base_dim": 12, "z_dim": 64, "dim_mult": [1, 2, 2, 2, 2]}


TOKENIZER = "qwen_vl_tokenizer"  # the tiny Qwen tokenizer with the vision tokens (its own folder: Krea 2's has none)
VAE_SCALE = 0.2  # the VAE's weights: large enough that its images span most of 0..1 (through its RMS norms)


def _randomize(model, seed: int, scale: float = 0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def build_transformer(seed: int = 0):
    from diffusers import QwenImage21Transformer2DModel

    return _randomize(QwenImage21Transformer2DModel(**CONFIG), seed)


def comfy_state_dict(sd: dict) -> dict:
    """diffusers' names -> ComfyUI's single file: the prefix, each block's gate and up projections fused (gate first)."""
    out = {}
    for k, v in sd.items():
        if k.endswith("img_mlp.gate_layer.weight"):
            out["model.diffusion_model." + k.replace("gate_layer", "gate_up")] = torch.cat(
                [v, sd[k.replace("gate_layer", "proj")]], 0)
        elif not k.endswith("img_mlp.proj.weight"):
            out["model.diffusion_model." + k] = v
    return out


def make_qwenimage21(root, layout: str = "diffusers", seed: int = 0) -> Path:
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    model = build_transformer(seed)
    if layout == "folder":
        folder = root / "qwen-image-2.1"
        model.save_pretrained(folder / "transformer")
        (folder / "model_index.json").write_text(json.dumps({"_class_name": "QwenImage21Pipeline",
                                                             "transformer": ["diffusers", "QwenImage21Transformer2DModel"]}))
        return folder
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if layout == "original":
        sd = comfy_state_dict(sd)
    path = root / f"qwen_image_2.1_{layout}.safetensors"
    save_file(sd, str(path))
    return path


def make_qwen21_vae(root, seed: int = 0) -> Path:
    from diffusers import AutoencoderKLQwenImage21
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    vae = _randomize(AutoencoderKLQwenImage21(**VAE_CONFIG), seed, VAE_SCALE)
    path = root / "qwen_image_2.1_vae.safetensors"
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(path))
    return path


# Qwen3-VL's chat template reduced to what the pipeline renders: a message's content as a string or a list of parts
CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
                 "{{ message['content'] }}{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}"
                 "{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_qwen3_vl_8b(seed: int = 0, vocab_size: int = 400):
    """tiny_krea2's Qwen3-VL (5 layers, 32 wide, a 1-block vision tower) with an untied head, as Qwen3-VL-8B's."""
    import transformers

    from spriteforge.tests.tiny_krea2 import build_qwen3_vl

    cfg = build_qwen3_vl(seed, vocab_size).config
    cfg.tie_word_embeddings = False
    return _randomize(transformers.Qwen3VLForConditionalGeneration(cfg), seed)


def make_qwen3_vl_8b(root, seed: int = 0, name: str = "qwen3_vl_8b") -> Path:
    from safetensors.torch import save_file

    from spriteforge.tests.tiny_qwen import make_qwen_tokenizer, tokenizer_size

    root = Path(root)
    tok = make_qwen_tokenizer(root, TOKENIZER, vision=True)
    path = root / f"{name}.safetensors"
    if not path.exists():
        sd = build_qwen3_vl_8b(seed, tokenizer_size(root, TOKENIZER, vision=True)).state_dict()
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
        side = root / f"{name}_tokenizer"
        side.mkdir(parents=True, exist_ok=True)
        for f in tok.iterdir():
            (side / f.name).write_bytes(f.read_bytes())
    return path


def processor(tok):
    """transformers' ``Qwen3VLProcessor`` over ``tok`` and the PIL image processor, without a video processor (as
    tests/tiny_qwenimage_edit.processor: the class check of the absent one needs torchvision)."""
    import transformers

    class Qwen3VLProcessor(transformers.Qwen3VLProcessor):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument is None and argument_name == "video_processor":
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    return Qwen3VLProcessor(image_processor=transformers.Qwen2VLImageProcessorPil(), tokenizer=tok, chat_template=CHAT_TEMPLATE)


def make_qwenimage21_folder(root, seed: int = 0) -> Path:
    import diffusers
    import transformers

    from spriteforge.models import configs
    from spriteforge.tests.tiny_models import _done, _write_pipeline
    from spriteforge.tests.tiny_qwen import make_qwen_tokenizer, tokenizer_size

    root = Path(root)
    d = root / "Qwen-Image-2.1-tiny"
    if _done(d):
        return d
    tok = transformers.AutoTokenizer.from_pretrained(str(make_qwen_tokenizer(root, TOKENIZER, vision=True)), local_files_only=True)
    sched = configs.load("qwen-image-2.1")["scheduler"]
    sched.pop("_class_name")
    _write_pipeline(d, "QwenImage21Pipeline", {
        "transformer": build_transformer(seed),
        "vae": _randomize(diffusers.AutoencoderKLQwenImage21(**VAE_CONFIG), seed, VAE_SCALE),
        "text_encoder": build_qwen3_vl_8b(seed, tokenizer_size(root, TOKENIZER, vision=True)), "processor": None,
        "scheduler": diffusers.FlowMatchEulerDiscreteScheduler.from_config(sched)})
    # processor/ (transformers 5.25 cannot save a processor without its video processor: its parts one by one)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(d / "processor"))
    transformers.Qwen2VLImageProcessorPil().save_pretrained(str(d / "processor"))
    index = json.loads((d / "model_index.json").read_text())
    index["processor"] = ["transformers", "Qwen3VLProcessor"]
    (d / "model_index.json").write_text(json.dumps(index, indent=2))
    return d
