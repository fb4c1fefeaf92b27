"""SpriteForge samplers: pure math shared by every engine (torch, numpy, MLX).

* :data:`SAMPLERS` — name -> ``fn(model, x, sigmas, extra_args=None, callback=None,
  noise_sampler=None, **options)``, k-diffusion convention, ``model(x, sigma) -> x0``
  (see :mod:`.sampling` for the flow-model convention, option ``flow=True``).
* :data:`SCHEDULES` — name -> ``fn(n_steps, sigma_min=None, sigma_max=None, *, model_schedule=None, **kw)``;
  :class:`DiscreteSchedule` (DDPM models) and :class:`FlowSchedule` (rectified flow) as model schedules.
* guidance: :func:`cfg`, :func:`cfg_rescale`, :func:`dynamic_threshold`, :func:`check_guidance` (their settings).
* seeded noise: :func:`make_noise`, :class:`NoiseSampler`; array ops: :class:`NumpyOps` (the protocol's
  reference; torch/MLX arrays take their engine's ``engine.ops``), :func:`default_ops`.

Nothing here imports torch or MLX at module level.
"""

from .denoisers import from_epsilon, from_v_prediction, from_velocity
from .guidance import cfg, cfg_rescale, check_guidance, dynamic_threshold
from .noise import NoiseSampler, make_noise
from .ops import NumpyOps, default_ops
from .sampling import (FLOW_AWARE, SAMPLERS, STOCHASTIC, ddim, dpmpp_2m, dpmpp_2m_sde, euler, euler_ancestral,
                       flow_euler, flow_euler_ancestral, heun, lcm, to_float_list)
from .schedules import (SCHEDULES, DiscreteSchedule, FlowSchedule, beta, ddim_uniform, exponential, flux_mu,
                        get_sigmas, karras, normal, sgm_uniform, sigmas_for_denoise, simple)

__all__ = [
    "SAMPLERS", "SCHEDULES", "FLOW_AWARE", "STOCHASTIC",
    "euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "ddim", "lcm", "flow_euler", "flow_euler_ancestral",
    "normal", "karras", "exponential", "simple", "beta", "sgm_uniform", "ddim_uniform",
    "DiscreteSchedule", "FlowSchedule", "flux_mu", "get_sigmas", "sigmas_for_denoise",
    "cfg", "cfg_rescale", "dynamic_threshold", "check_guidance", "make_noise", "NoiseSampler", "NumpyOps", "default_ops",
    "from_velocity", "from_epsilon", "from_v_prediction", "to_float_list",
]
