"""The dimension guard and the model schedule of a generation: what sizes a model takes and its noise levels."""

from __future__ import annotations

import math

from ..errors import BAD_INPUT, DIMENSION_LIMIT, SpriteForgeError
from ..log import get_logger
from ..models.families import registry

log = get_logger("pipeline")

DEFAULT_MAX_SIDE = 2048
# batch x width x height above this is refused (DIMENSION_LIMIT) before any memory is touched
MAX_BATCH_PIXELS = 16 * 2048 * 2048


def prepare_size(handle, width, height, *, max_side: int | None = DEFAULT_MAX_SIDE, engine=None, notes=None):
    """Validated ``(width, height)`` rounded to the family's latent grid.

    Non-numbers or sizes below one grid cell: BAD_INPUT; above ``max_side`` (or the
    engine's maximum): DIMENSION_LIMIT. A rounding is recorded in ``notes``.
    """
    notes = notes if notes is not None else []
    mult = int(getattr(handle, "latent_multiple", 16) or 16)
    limit = int(max_side or DEFAULT_MAX_SIDE)
    cap = getattr(getattr(engine, "capabilities", None), "max_resolution", None) if engine is not None else None
    model_cap = model_max_side(handle)
    out = []
    for name, v in (("width", width), ("height", height)):
        try:
            fv = float(v)
        except (TypeError, ValueError):
            raise SpriteForgeError(BAD_INPUT, f"{name} must be a number of pixels, not {v!r}.") from None
        if not math.isfinite(fv) or fv < mult:
            raise SpriteForgeError(BAD_INPUT, f"{name} {v} is too small: the {handle.family} model needs at least {mult} pixels.",
                                   details={name: v, "multiple": mult})
        if fv > limit:
            raise SpriteForgeError(DIMENSION_LIMIT, f"{name} {int(fv)} is over the limit of {limit} pixels per side.",
                                   details={name: int(fv), "limit": limit})
        if cap and fv > cap:
            raise SpriteForgeError(DIMENSION_LIMIT, f"{name} {int(fv)} is over this engine's maximum of {cap} pixels.",
                                   details={name: int(fv), "limit": cap})
        if model_cap and fv > model_cap:
            raise SpriteForgeError(
                DIMENSION_LIMIT,
                f"{name} {int(fv)} is over what this {handle.family} model can draw ({model_cap} pixels per side: "
                f"its position table covers {model_cap // mult} patches). Use {model_cap} or less.",
                details={name: int(fv), "limit": model_cap})
        r = max(mult, int(round(fv / mult)) * mult)
        if r > limit:
            r = (limit // mult) * mult
        if r != fv:
            msg = f"{name} {v} rounded to {r} (a multiple of {mult} for {handle.family})"
            notes.append(msg)  # the callers show their notes once (the command line prints them, the nodes log them)
        out.append(r)
    fam = registry.rules(getattr(handle, "family", ""))
    if fam.square_only and out[0] != out[1]:
        raise SpriteForgeError(BAD_INPUT, f"{fam.label} makes square images only; {out[0]}x{out[1]} was asked for. Use equal width and height.")
    return out[0], out[1]


def model_max_side(handle) -> int | None:
    """The largest side a model's fixed position table allows (SD3's ``pos_embed_max_size``), or None."""
    cfg = getattr(handle, "config", None) or {}
    n = cfg.get("pos_embed_max_size")
    if not n:
        return None
    return int(n) * int(getattr(handle, "latent_multiple", 16) or 16)


def model_schedule(handle, width: int, height: int, shift: float | None = None, steps: int | None = None):
    """The samplers' model schedule for ``handle`` at this size (``steps``: the sampling steps, for a family whose
    resolution shift depends on them too; the family's default steps when not given)."""
    from ..samplers import DiscreteSchedule, FlowSchedule

    if handle.prediction == "flow":
        fam = registry.rules(handle.family)
        if fam.resolution_shift:
            fixed = shift if shift is not None else fam.fixed_shift(handle.variant)
            if fixed is not None:  # (a sigma-timestep family's table as fine as FlowSchedule.flux's)
                return FlowSchedule(float(fixed), multiplier=fam.flow_multiplier, num_timesteps=10000 if fam.flow_multiplier == 1.0 else 1000)
            m = int(getattr(handle, "latent_multiple", 16) or 16)
            mu = fam.resolution_mu((int(height) // m) * (int(width) // m), int(steps or fam.sampling_defaults(handle.variant)["steps"]))
            if mu is not None:
                return FlowSchedule(mu=mu, multiplier=fam.flow_multiplier, num_timesteps=10000)
            return FlowSchedule.flux(width, height, **fam.mu_args((handle.extras or {}).get("scheduler") or {}))
        s = shift if shift is not None else (handle.flow_shift if handle.flow_shift is not None else 3.0)
        return FlowSchedule(float(s))
    sch = dict((handle.extras or {}).get("scheduler") or {})
    kind = sch.get("beta_schedule", "linear")
    return DiscreteSchedule(kind, float(sch.get("beta_start", 0.0001 if kind == "linear" else 0.00085)),
                            float(sch.get("beta_end", 0.02 if kind == "linear" else 0.012)),
                            int(sch.get("num_train_timesteps", 1000)))
