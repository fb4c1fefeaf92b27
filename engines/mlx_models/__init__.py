"""MLX ports of the models the torch engine runs (PixArt, SD3, Flux, Sana, DiT, KL/DC VAEs, T5, CLIP, Gemma).

Each port is a compact ``mlx.nn`` module in the spirit of mlx-examples: its parameter paths
mirror the diffusers/transformers class it ports (``transformer_blocks.0.attn1.to_q.weight``),
so the weight mapping from the names our torch loader produces is a pure function that only
renames a few entries and turns conv kernels from OIHW into MLX's OHWI
(:func:`spriteforge.engines.mlx_models.layers.map_names`). The module's ``__call__`` takes the
same tensor arguments as the diffusers forward, with latents in NCHW like the torch engine.

Only code under ``engines/`` imports mlx; nothing here imports torch.
"""
