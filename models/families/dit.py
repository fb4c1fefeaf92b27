"""DiT (Peebles & Xie): class-conditional ImageNet DiT, adaLN-zero blocks, no text encoder."""

from __future__ import annotations

import math

from ...errors import BAD_INPUT, SpriteForgeError
from ..detection import heads
from ..keymaps import Q3, rule as _r
from .base import Family, learned_sigma

_TB = "transformer_blocks.{i}"


class DiT(Family):
    name = "dit"
    label = "DiT"
    original_markers = (("x_embedder.proj.weight", "y_embedder.embedding_table.weight"),)
    diffusers_markers = (("transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight",),)
    detect_order = 50
    folder_classes = ("Transformer2DModel",)  # diffusers' older name for DiT's transformer
    transformer_class = "DiTTransformer2DModel"
    transformer_module = "diffusers.models.transformers.dit_transformer_2d"
    keymap = (
        _r("x_embedder.proj", "pos_embed.proj"),
        # facebookresearch DiT has one timestep/class embedder; diffusers gives every block its own (the same tensors)
        _r("t_embedder.mlp.0", f"{_TB}.norm1.emb.timestep_embedder.linear_1", kind="shared", per="blocks.{i}"),
        _r("t_embedder.mlp.2", f"{_TB}.norm1.emb.timestep_embedder.linear_2", kind="shared", per="blocks.{i}"),
        _r("y_embedder.embedding_table", f"{_TB}.norm1.emb.class_embedder.embedding_table", kind="shared", per="blocks.{i}"),
        _r("blocks.{i}.adaLN_modulation.1", f"{_TB}.norm1.linear"),
        _r("blocks.{i}.attn.qkv", [f"{_TB}.attn1.{q}" for q in Q3]),
        _r("blocks.{i}.attn.proj", f"{_TB}.attn1.to_out.0"),
        _r("blocks.{i}.mlp.fc1", f"{_TB}.ff.net.0.proj"),
        _r("blocks.{i}.mlp.fc2", f"{_TB}.ff.net.2"),
        _r("final_layer.adaLN_modulation.1", "proj_out_1"),
        _r("final_layer.linear", "proj_out_2"),
    )
    dropped = ("pos_embed",)  # the fixed sin-cos position table diffusers recomputes
    vae_by_latent = {4: "vae-kl4-sd"}
    class_conditional = True
    square_only = True
    defaults = {"cfg": 4.0, "steps": 25, "sampler": "dpmpp_2m", "schedule": "normal"}
    mlx_port = "dit"
    lora_names = (r"(^|_)(proj_out_[12]|norm1_emb|adaLN_modulation)(_|$)", "names (adaLN in blocks, proj_out_1/2)")
    lora_unless = r"(^|_)(attn2|cross_attn)_"  # adaLN in a cross-attention DiT: PixArt's or Sana's
    lora_shared = ("self",)
    lora_rank = 50
    widgets_unused = ("negative",)
    widget_labels = {"positive": "class label (0-999 or ImageNet name)"}

    def detect(self, t, original):
        n, blocks = self.names(t, original)
        pe = t[n("pos_embed.proj.weight")].shape
        layers = blocks("transformer_blocks.")
        classes = t[n("transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight")].shape[0]
        out = t[n("proj_out_2.weight")].shape[0]
        sample = 32  # the original layout's position table tells the sample size
        if original and "pos_embed" in t:
            sample = int(round(math.sqrt(t["pos_embed"].shape[1]))) * pe[2]
        hidden, in_ch, patch = pe[0], pe[1], pe[2]
        size = {1152: "XL", 1024: "L", 768: "B", 384: "S"}.get(hidden)
        res = "512" if sample == 64 else "256"
        rel = self.release(f"dit-{(size or 'xl').lower()}-2-{res}")
        nh, hd = {1152: (16, 72), 1024: (16, 64), 768: (12, 64), 384: (6, 64)}.get(hidden) or heads(hidden, (64, 72))
        cfg = rel["transformer"]
        self.patch_config(cfg, nh, hd, in_ch, out, patch, layers, sample_size=sample, num_embeds_ada_norm=1000)
        det = self.detection(f"{size or 'custom'}/{patch}-{res}", cfg, original)
        det.extras["num_classes"] = classes - 1 if classes % 2 == 1 else classes
        det.extras["sigma_learned"] = cfg["out_channels"] == 2 * in_ch
        return self.finish(det, rel)

    def handle_extras(self, det, cfg):
        n = cfg.get("num_embeds_ada_norm") or 1000
        return {"num_classes": det.extras.get("num_classes", n), "sigma_learned": learned_sigma(cfg)}

    # ------------------------------------------------------------------ prompts and the model call
    def encode(self, te, prompts, cond, *, class_labels=None, negative=False, **_):
        """The class labels: the null class for a negative, ``class_labels`` if given, else each prompt's class."""
        if negative:
            cond.class_labels = [self.num_classes(te.handle)] * len(prompts)
        elif class_labels is not None:
            cond.class_labels = [int(c) for c in class_labels]
        else:
            cond.class_labels = self.class_labels(te.handle, prompts)

    def forward(self, den, x, t, cond):
        return den.run(hidden_states=x, timestep=t, class_labels=cond["labels"])

    def num_classes(self, handle):
        return int((handle.extras or {}).get("num_classes") or (handle.config or {}).get("num_embeds_ada_norm") or 1000)

    def class_labels(self, handle, prompts) -> list[int]:
        """Each prompt's class: a number or a name from the model's ``id2label``; BAD_INPUT otherwise."""
        n = self.num_classes(handle)
        id2label = (handle.extras or {}).get("id2label") or (handle.config or {}).get("id2label") or {}
        by_name = {name.strip().lower(): int(k) for k, v in dict(id2label).items() for name in str(v).split(",")}
        return [self._label(str(p).strip(), by_name, n) for p in prompts]

    @staticmethod
    def _label(p: str, by_name: dict, n: int) -> int:
        if not p:
            raise SpriteForgeError(BAD_INPUT, "DiT needs a class label (an ImageNet class number 0-999 or its name) as the prompt.")
        first = p.split(",")[0].strip()
        try:
            lab = int(first)
        except ValueError:
            if first.lower() not in by_name:
                raise SpriteForgeError(BAD_INPUT, f"DiT class {first!r} is neither a class number nor a known class name. "
                                       f"Give a number from 0 to {n - 1}.") from None
            lab = by_name[first.lower()]
        if not 0 <= lab < n:
            raise SpriteForgeError(BAD_INPUT, f"DiT class {lab} is out of range. Give a number from 0 to {n - 1}.")
        return lab
