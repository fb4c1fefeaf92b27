"""One exception type with stable codes, and a classifier for raw exceptions.

Every error a user can meet carries a code from :data:`CODES` and a message that
says what to do.  The command line prints ``CODE: message`` and exits non-zero;
ComfyUI shows the same text in its error dialog (the web extension adds the
what-to-do hint, :func:`hint_for`: :data:`HINTS`, with :data:`EDITOR_HINTS` where a line names the command line).
"""

from __future__ import annotations

import errno
import re
import sys
from pathlib import Path

MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
MODEL_NOT_CONVERTED = "MODEL_NOT_CONVERTED"
UNSUPPORTED_ARCHITECTURE = "UNSUPPORTED_ARCHITECTURE"
LORA_KEY_MISMATCH = "LORA_KEY_MISMATCH"
LORA_UNSUPPORTED_ENGINE = "LORA_UNSUPPORTED_ENGINE"
DIMENSION_LIMIT = "DIMENSION_LIMIT"
OUT_OF_MEMORY = "OUT_OF_MEMORY"
ENGINE_UNAVAILABLE = "ENGINE_UNAVAILABLE"
ENGINE_INTERNAL = "ENGINE_INTERNAL"
BAD_INPUT = "BAD_INPUT"

# Exit codes for the command line: stable, one per code.
CODES: dict[str, int] = {
    MODEL_NOT_FOUND: 10,
    MODEL_NOT_CONVERTED: 11,
    UNSUPPORTED_ARCHITECTURE: 12,
    LORA_KEY_MISMATCH: 13,
    LORA_UNSUPPORTED_ENGINE: 14,
    DIMENSION_LIMIT: 15,
    OUT_OF_MEMORY: 16,
    ENGINE_UNAVAILABLE: 17,
    ENGINE_INTERNAL: 18,
    BAD_INPUT: 19,
}

# The generic "what to do" for each code; a raised error adds its specifics.
HINTS: dict[str, str] = {
    MODEL_NOT_FOUND: "Put the file in a model folder the message names and try again.",
    MODEL_NOT_CONVERTED: "This model needs converting for the chosen engine; use the torch engine or convert it first.",
    UNSUPPORTED_ARCHITECTURE: "The file is not a model SpriteForge knows. Check it is the right file for this loader.",
    LORA_KEY_MISMATCH: "The LoRA was made for another model family; pick a LoRA trained for the loaded model.",
    LORA_UNSUPPORTED_ENGINE: "This engine cannot apply LoRAs; switch the loader's engine to torch.",
    DIMENSION_LIMIT: "Lower the width/height (or the batch size) below the limit shown.",
    OUT_OF_MEMORY: "Lower the resolution or batch size, enable tiling/slicing, or use a smaller dtype.",
    ENGINE_UNAVAILABLE: "Install the engine's package (see `spriteforge doctor`) or choose another engine.",
    ENGINE_INTERNAL: "An engine failed unexpectedly; run `spriteforge doctor` and report the message with it.",
    BAD_INPUT: "Check the input named in the message and correct it.",
}

# Inside ComfyUI's editor there is no `spriteforge` command: the lines that name one read so instead.
EDITOR_HINTS: dict[str, str] = {
    ENGINE_UNAVAILABLE: "Install the engine's package into the Python ComfyUI runs on (the SpriteForge Engine Info "
                        "node shows what is missing) or choose another engine.",
    ENGINE_INTERNAL: "An engine failed unexpectedly; run the SpriteForge Engine Info node and report the message "
                     "with its report.",
}


def in_comfyui() -> bool:
    """True inside ComfyUI (it imports its ``folder_paths`` module before loading custom nodes)."""
    return "folder_paths" in sys.modules


def hint_for(code: str, editor: bool | None = None) -> str:
    """The generic what-to-do line of ``code`` where it is shown: the editor (``editor``, default
    :func:`in_comfyui`) or the command line."""
    if in_comfyui() if editor is None else editor:
        return EDITOR_HINTS.get(code, HINTS[code])
    return HINTS[code]


class SpriteForgeError(Exception):
    """The one exception type SpriteForge raises on purpose.

    ``code`` is one of :data:`CODES`; ``message`` says what happened and what to do;
    ``details`` holds machine-readable extras (paths, names, sizes).
    """

    def __init__(self, code: str, message: str, *, hint: str | None = None, details: dict | None = None):
        if code not in CODES:
            raise ValueError(f"unknown SpriteForge error code {code!r}")
        self.code = code
        self.message = message
        self.hint = hint if hint is not None else hint_for(code)
        self.details = dict(details or {})
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = f"[{self.code}] {self.message}"
        if self.hint and self.hint not in self.message:
            text += f" {self.hint}"
        return text

    @property
    def exit_code(self) -> int:
        return CODES[self.code]

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "hint": self.hint, "details": self.details}


_OOM_PATTERNS = [
    r"CUDA out of memory",
    r"HIP out of memory",
    r"out of memory",  # torch.OutOfMemoryError text, ROCm, generic allocators
    r"MPS backend out of memory",
    r"Insufficient Memory",  # Metal / MLX: "[METAL] Command buffer execution failed: Insufficient Memory"
    r"\[metal::malloc\]",
    r"DefaultCPUAllocator: can't allocate memory",
    r"not enough memory",
]
_UNAVAILABLE_PATTERNS = [
    r"Torch not compiled with CUDA enabled",
    r"No CUDA GPUs are available",
    r"no kernel image is available",
    r"HIP error: invalid device function",
    r"MPS backend is not available|The MPS backend is supported on MacOS",
    r"No module named '(torch|mlx)",
    r"Found no NVIDIA driver",
]


def classify(exc: BaseException, *, context: str = "") -> SpriteForgeError:
    """Map a raw exception to a :class:`SpriteForgeError` with a useful message.

    Already-classified errors pass through unchanged.  ``context`` names what was
    being done ("decoding the latent", "loading flux1-dev.safetensors") and is put
    in front of the message.
    """
    if isinstance(exc, SpriteForgeError):
        return exc
    text = f"{type(exc).__name__}: {exc}"
    where = f"While {context}: " if context else ""
    name = type(exc).__name__
    if name == "OutOfMemoryError" or any(re.search(p, text, re.I) for p in _OOM_PATTERNS) or isinstance(exc, MemoryError):
        return SpriteForgeError(OUT_OF_MEMORY, f"{where}the device ran out of memory ({_short(text)}).", details={"raw": text})
    if isinstance(exc, ModuleNotFoundError) or any(re.search(p, text) for p in _UNAVAILABLE_PATTERNS):
        return SpriteForgeError(
            ENGINE_UNAVAILABLE, f"{where}a backend is missing or unusable ({_short(text)}).", details={"raw": text}
        )
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:  # a user's over-long name or prefix
        name = Path(str(exc.filename or "")).name
        return SpriteForgeError(BAD_INPUT, f"{where}the file name {name[:40]}... is {len(name)} characters long, over the "
                                "file system's limit (255 bytes). Use a shorter name or filename_prefix.",
                                details={"raw": _short(text)})
    if isinstance(exc, FileNotFoundError):
        return SpriteForgeError(MODEL_NOT_FOUND, f"{where}file not found: {exc.filename or exc}.", details={"raw": text})
    if isinstance(exc, (ValueError, TypeError)) and not context.startswith("running"):
        return SpriteForgeError(BAD_INPUT, f"{where}{_short(text)}.", details={"raw": text})
    return SpriteForgeError(ENGINE_INTERNAL, f"{where}{_short(text)}.", details={"raw": text})


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
