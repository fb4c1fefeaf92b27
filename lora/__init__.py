"""LoRA support, framework-free: every file format, family detection, the weight-update math.

* :mod:`.keys` — parse kohya / OneTrainer / ComfyUI / diffusers / peft / LyCORIS names into modules
* :mod:`.layouts` — original (BFL Flux, SD3 MMDiT, PixArt/Sana/DiT) ↔ diffusers module names
* :mod:`.family` — which family a LoRA is for
* :mod:`.core` — ``ΔW`` for LoRA / LoHa / LoKr / full and DoRA, once, over numpy, torch or MLX arrays
* :mod:`.plan` — match a LoRA onto a model's layers (by name, split fused qkv, place on fused rows)
* :mod:`.files` — read LoRA files, :func:`inspect_lora`
* :mod:`.apply` — :func:`apply_loras` (dispatches to the engine), ``--lora`` parsing

No framework is imported at module top; engines bring their arrays.
"""

from __future__ import annotations

from .apply import AppliedLoRA, LoRASpec, add_cli_arguments, apply_loras, as_spec, check_engine, parse_lora_arg, specs_from_args
from .core import Patch, delta_weight, fuse_lora_parts, patched_weight, take_rows
from .family import FamilyGuess, detect_family, family_of_modules
from .files import LoRAFile, inspect_lora, is_lora_file, read_lora, summary
from .keys import LoRAModule, group_modules, underscore
from .plan import Plan, plan

__all__ = [
    "AppliedLoRA", "LoRASpec", "add_cli_arguments", "apply_loras", "as_spec", "check_engine", "parse_lora_arg", "specs_from_args",
    "Patch", "delta_weight", "fuse_lora_parts", "patched_weight", "take_rows",
    "FamilyGuess", "detect_family", "family_of_modules", "LoRAFile", "inspect_lora", "is_lora_file", "read_lora", "summary",
    "LoRAModule", "group_modules", "underscore", "Plan", "plan",
]
