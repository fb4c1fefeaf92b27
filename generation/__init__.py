"""The parts of generation that :mod:`spriteforge.pipeline` (the public API: params, sample, decode, generate)
puts together: :mod:`.sizes` (dimension guard, model schedule), :mod:`.masks` (image/mask arrays, inpaint
composite) and :mod:`.wrappers` (inpaint and seamless-tile denoiser wrappers). Framework-free: arrays cross to
the engine through its interface."""
