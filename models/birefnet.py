"""BiRefNet knowledge without a framework: released variants, backbones, expected files, and the
architecture sizes read from a weights file's tensor shapes (so ``spriteforge inspect`` needs no torch).

The torch model itself is :mod:`spriteforge.engines.torch_models.birefnet`, loaded through the engine
interface (``Engine.load_birefnet``, capability ``birefnet``).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import UNSUPPORTED_ARCHITECTURE, SpriteForgeError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Known Swin backbones: (embed_dim, depths) -> name.
BACKBONES = {
    (96, (2, 2, 6, 2)): "swin_v1_t",
    (96, (2, 2, 18, 2)): "swin_v1_s",
    (128, (2, 2, 18, 2)): "swin_v1_b",
    (192, (2, 2, 18, 2)): "swin_v1_l",
}

# Released variants: backbone and working resolution (width, height).
VARIANTS: dict[str, dict] = {
    "general": {"backbone": "swin_v1_l", "resolution": (1024, 1024), "hf": "ZhengPeng7/BiRefNet"},
    "lite": {"backbone": "swin_v1_t", "resolution": (1024, 1024), "hf": "ZhengPeng7/BiRefNet_lite"},
    "lite-2K": {"backbone": "swin_v1_t", "resolution": (2560, 1440), "hf": "ZhengPeng7/BiRefNet_lite-2K"},
    "portrait": {"backbone": "swin_v1_l", "resolution": (1024, 1024), "hf": "ZhengPeng7/BiRefNet-portrait"},
    "matting": {"backbone": "swin_v1_l", "resolution": (1024, 1024), "hf": "ZhengPeng7/BiRefNet-matting"},
    "HR": {"backbone": "swin_v1_l", "resolution": (2048, 2048), "hf": "ZhengPeng7/BiRefNet_HR"},
    "HR-matting": {"backbone": "swin_v1_l", "resolution": (2048, 2048), "hf": "ZhengPeng7/BiRefNet_HR-matting"},
    "dynamic": {"backbone": "swin_v1_l", "resolution": (1024, 1024), "hf": "ZhengPeng7/BiRefNet_dynamic"},
    "massive": {"backbone": "swin_v1_l", "resolution": (1024, 1024), "hf": "ZhengPeng7/BiRefNet-massive-TR_DIS5K_TR_TEs"},
}
DEFAULT_VARIANT_FOR_BACKBONE = {"swin_v1_l": "general", "swin_v1_t": "lite"}

EXPECTED_FILES = (
    "model.safetensors (from ZhengPeng7/BiRefNet, BiRefNet_lite, BiRefNet_HR, ... on Hugging Face; renaming it e.g. "
    "BiRefNet-general.safetensors or BiRefNet_lite-2K.safetensors lets the variant be recognised), "
    "BiRefNet-general-epoch_244.safetensors / .pth (GitHub releases)"
)

TRAINING_PREFIXES = ("module.", "_orig_mod.")


@dataclass(frozen=True)
class BiRefNetConfig:
    """Every size of a BiRefNet; :func:`config_from_state_dict` reads it from weights."""

    embed_dim: int = 192
    depths: tuple = (2, 2, 18, 2)
    num_heads: tuple = (6, 12, 24, 48)
    window_size: int = 12
    mlp_ratio: float = 4.0
    dec_inter: int = 64  # BasicDecBlk inner width ('fixed')
    aspp_inter: int = 256  # ASPPDeformable branch width
    aspp_kernels: tuple = (1, 3, 7)
    ipt_inter: int = 64  # SimpleConvs inner width
    gdt_channels: int = 16
    use_bn: bool = True  # batch_size > 1 at training time -> BatchNorm2d, else Identity

    @property
    def backbone(self) -> str:
        return BACKBONES.get((self.embed_dim, tuple(self.depths)), f"swin_custom_{self.embed_dim}")

    @property
    def lateral_channels(self) -> list[int]:
        # Backbone output widths, doubled by the 'cat' input pyramid, deepest first.
        return [self.embed_dim * 2 ** i * 2 for i in (3, 2, 1, 0)]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["backbone"] = self.backbone
        return d


SWIN_L = BiRefNetConfig()
SWIN_T = BiRefNetConfig(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7)


def strip_training_prefixes(sd: dict) -> dict:
    """Drop ``module.`` / ``_orig_mod.`` (DDP / torch.compile) prefixes, in any combination."""
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in TRAINING_PREFIXES:
                if k.startswith(p):
                    k = k[len(p):]
                    changed = True
        out[k] = v
    return out


def config_from_shapes(shapes: dict[str, tuple]) -> BiRefNetConfig:
    """Read every BiRefNet size from a key -> shape map (prefix-free). Raises UNSUPPORTED_ARCHITECTURE."""

    def need(key):
        if key not in shapes:
            raise SpriteForgeError(
                UNSUPPORTED_ARCHITECTURE,
                f"the weights are not a BiRefNet checkpoint (no {key!r}). Load a BiRefNet model.safetensors.",
                details={"missing": key},
            )
        return tuple(shapes[key])

    embed = need("bb.patch_embed.proj.weight")[0]
    depths, heads = [], []
    window = None
    for i in range(4):
        n = 0
        while f"bb.layers.{i}.blocks.{n}.norm1.weight" in shapes:
            n += 1
        if n == 0:
            need(f"bb.layers.{i}.blocks.0.norm1.weight")
        depths.append(n)
        tab = need(f"bb.layers.{i}.blocks.0.attn.relative_position_bias_table")
        heads.append(tab[1])
        w = (int(round(math.sqrt(tab[0]))) + 1) // 2
        if (2 * w - 1) ** 2 != tab[0] or (window is not None and w != window):
            raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"unexpected Swin relative position table shape {tab}.")
        window = w
    if f"bb.layers.4.blocks.0.norm1.weight" in shapes:
        raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, "the Swin backbone has more than 4 stages; not a BiRefNet file.")
    mlp_hidden = need("bb.layers.0.blocks.0.mlp.fc1.weight")[0]
    dec_inter = need("decoder.decoder_block4.conv_in.weight")[0]
    pre = "decoder.decoder_block4.dec_att."
    aspp_inter = need(pre + "aspp1.atrous_conv.regular_conv.weight")[0]
    kernels = []
    while f"{pre}aspp_deforms.{len(kernels)}.atrous_conv.regular_conv.weight" in shapes:
        kernels.append(shapes[f"{pre}aspp_deforms.{len(kernels)}.atrous_conv.regular_conv.weight"][-1])
    if not kernels:
        raise SpriteForgeError(
            UNSUPPORTED_ARCHITECTURE,
            "this BiRefNet file uses the pre-2024 ASPPDeformable layout (aspp2..aspp4) which is not supported; "
            "download the current release from Hugging Face.",
        )
    ipt_inter = need("decoder.ipt_blk1.conv1.weight")[0]
    gdt = need("decoder.gdt_convs_4.0.weight")[0]
    use_bn = "decoder.decoder_block4.bn_in.weight" in shapes
    return BiRefNetConfig(
        embed_dim=int(embed),
        depths=tuple(depths),
        num_heads=tuple(int(h) for h in heads),
        window_size=int(window),
        mlp_ratio=mlp_hidden / embed,
        dec_inter=int(dec_inter),
        aspp_inter=int(aspp_inter),
        aspp_kernels=tuple(int(k) for k in kernels),
        ipt_inter=int(ipt_inter),
        gdt_channels=int(gdt),
        use_bn=use_bn,
    )


def variant_from_name(name: str, backbone: str) -> str | None:
    """The released variant a file name points at (``BiRefNet_HR-matting``, ``birefnet-lite-2k``...), or None."""
    n = Path(str(name)).name.lower().replace("_", "-")
    n = re.sub(r"\.(safetensors|pth|pt|bin)$", "", n)
    if backbone == "swin_v1_t":
        return "lite-2K" if "2k" in n else "lite"
    if backbone != "swin_v1_l":
        return None
    if "hr" in n.split("-") or "-hr-" in n or n.endswith("-hr") or "hr-matting" in n:
        return "HR-matting" if "matting" in n else "HR"
    for v in ("matting", "portrait", "dynamic", "massive"):
        if v in n:
            return v
    return "general" if ("general" in n or "birefnet" in n or n.startswith("model")) else None
