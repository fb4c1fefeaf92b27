"""SpriteForge: framework-free model knowledge (stdlib only; no torch import).

- :mod:`.safetensors_header` -- ``read_header(path) -> Header`` (validated; reads only the JSON header),
  ``TensorInfo(dtype, shape, offsets)``, ``canonical_dtype``, ``header_from_manifest``.
- :mod:`.detect` -- ``detect(path) -> Detection`` for safetensors files and diffusers folders,
  ``detect_tensors({name: TensorInfo}) -> Detection`` for key/shape maps; ``Detection.to_dict()``.
- :mod:`.configs` -- the released models' configs shipped as JSON (``configs.load(name)``, ``configs.names()``).
"""
