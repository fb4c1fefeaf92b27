"""The model families SpriteForge runs, framework-free (engines, LoRA detection and the CLI share this list)."""

FAMILIES = ("pixart", "sd3", "flux", "sana", "dit")
