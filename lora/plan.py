"""From a LoRA file's modules to patches on a model's layers (framework-free).

The engine describes each model component as ``{module name: weight shape}`` for the
layers it can patch (Linear, Conv); :func:`plan` matches the LoRA's modules onto them —
directly by name (any separators), through the original↔diffusers layout rules (fused
``qkv`` split by rows, or separate q/k/v placed on rows of a fused weight), or through
diffusers' own fused ``to_qkv`` — and returns the patches per component and layer plus a
report of what matched and what did not, by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from ..errors import LORA_KEY_MISMATCH, SpriteForgeError
from ..models.families import registry
from .core import Patch, take_rows
from .family import NAMES, FamilyGuess, family_of_modules
from .keys import LoRAModule, underscore
from .layouts import FUSED_ALIASES, RULES, diffusers_to_original, original_to_diffusers

# text-encoder slot (te1, te2, te3) -> handle.text_encoders key, per family (kohya / diffusers order: the family's slots)
TE_ORDER = {f.name: tuple(te.key for te in f.text_encoders) for f in registry.families()}
_TE_VARIANTS = ("", "text_model_", "model_", "encoder_", "transformer_")


def _scalar(x) -> float:
    if hasattr(x, "item"):
        return float(x.item())
    return float(x)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def default_alpha(metadata: dict | None, component: str) -> tuple[float | None, int | None]:
    """``(lora_alpha, r)`` from diffusers' ``lora_adapter_metadata`` for a component, where present."""
    if not metadata or "lora_adapter_metadata" not in metadata:
        return None, None
    try:
        meta = json.loads(metadata["lora_adapter_metadata"])
    except Exception:
        return None, None
    prefix = {"transformer": "transformer.", "te1": "text_encoder.", "te2": "text_encoder_2.", "te3": "text_encoder_3."}[component]
    alpha = meta.get(prefix + "lora_alpha", meta.get("lora_alpha"))
    r = meta.get(prefix + "r", meta.get("r"))
    return (float(alpha) if alpha is not None else None), (int(r) if r is not None else None)


def build_patch(m: LoRAModule, get, strength: float, metadata: dict | None = None) -> Patch:
    """The :class:`Patch` of one module; ``get(name)`` returns a tensor of the file."""
    p = m.params
    algo = m.algorithm
    alpha = _scalar(get(p["alpha"])) if "alpha" in p else None
    dora = get(p["dora"]) if "dora" in p else None
    if algo == "lora":
        if "mid" in p:
            raise ValueError("LoRA with a Tucker 'lora_mid' is not supported")
        t = {"down": get(p["down"]), "up": get(p["up"])}
        if alpha is None and m.naming in ("diffusers", "peft"):
            a, r = default_alpha(metadata, m.component)
            if a is not None and r and int(t["down"].shape[0]) == r:
                alpha = a
    elif algo == "loha":
        if "t1_h" in p or "t2_h" in p:
            raise ValueError("LoHa with Tucker 'hada_t1/t2' is not supported")
        t = {k: get(p[k + "_h"]) for k in ("w1a", "w1b", "w2a", "w2b")}
    elif algo == "lokr":
        if "t2_k" in p:
            raise ValueError("LoKr with Tucker 'lokr_t2' is not supported")
        t = {k: get(p[k + "_k"]) for k in ("w1", "w1a", "w1b", "w2", "w2a", "w2b") if k + "_k" in p}
    elif algo == "full":
        t = {"diff": get(p["diff"])}
    else:
        raise ValueError(f"incomplete adapter (parts: {', '.join(sorted(p))})")
    return Patch(algo, t, alpha=alpha, strength=float(strength), dora_scale=dora, name=m.key)


def patch_in_numel(p: Patch) -> int:
    t = p.tensors
    if p.kind == "lora":
        return _numel(t["down"].shape[1:])
    if p.kind == "loha":
        return _numel(t["w1b"].shape[1:])
    if p.kind == "full":
        return _numel(t["diff"].shape[1:])
    i1 = t["w1"].shape[1] if "w1" in t else t["w1b"].shape[1]
    i2 = _numel(t["w2"].shape[1:]) if "w2" in t else _numel(t["w2b"].shape[1:])
    return int(i1) * i2


@dataclass
class ComponentPlan:
    patches: dict = field(default_factory=dict)  # target module -> [Patch]
    matched: list = field(default_factory=list)  # LoRA module keys applied
    unmatched: list = field(default_factory=list)  # LoRA module keys with no layer
    skipped: list = field(default_factory=list)  # (LoRA module key, reason)
    ignored: list = field(default_factory=list)  # tensor names applied without (bias / norm parts)

    def add(self, target, patch):
        self.patches.setdefault(target, []).append(patch)


@dataclass
class Plan:
    detection: FamilyGuess
    components: dict = field(default_factory=dict)  # component name ("transformer", "t5", ...) -> ComponentPlan
    missing_components: list = field(default_factory=list)  # (LoRA component, n modules) with no model part loaded

    @property
    def matched(self) -> int:
        return sum(len(c.matched) for c in self.components.values())

    def unmatched(self) -> list:
        return [k for c in self.components.values() for k in c.unmatched]

    def skipped(self) -> list:
        return [s for c in self.components.values() for s in c.skipped]

    def ignored(self) -> list:
        return [s for c in self.components.values() for s in c.ignored]


def _fits(p: Patch, shape) -> bool:
    return p.out_rows == int(shape[0]) and patch_in_numel(p) == _numel(shape[1:])


def _lookup(index: dict, flat: str, te: bool):
    if flat in index:
        return index[flat]
    if te:
        for v in _TE_VARIANTS[1:]:
            if flat.startswith(v) and flat[len(v):] in index:
                return index[flat[len(v):]]
            if v + flat in index:
                return index[v + flat]
    return None


def resolve_component(modules, targets: dict, get, strength: float, *, family: str | None, te: bool = False,
                      metadata: dict | None = None, ops=None) -> ComponentPlan:
    """Match ``modules`` (one component of a LoRA) onto ``targets`` (module name -> weight shape).

    ``ops``: the array operations of the tensors ``get`` returns (the engine's; numpy's by default).
    """
    plan = ComponentPlan()
    index = {underscore(n): n for n in targets}
    fams = [family] if family in RULES else list(RULES)
    for m in modules:
        try:
            patch = build_patch(m, get, strength, metadata)
            placed = _place(patch, m.flat, index, targets, fams, te, ops)
        except ValueError as exc:
            plan.skipped.append((m.key, str(exc)))
            continue
        except (KeyError, IndexError, TypeError, RuntimeError) as exc:  # a damaged module: parts or shapes missing
            plan.skipped.append((m.key, f"malformed adapter ({type(exc).__name__}: {str(exc)[:120]})"))
            continue
        if placed is None:
            plan.unmatched.append(m.key)
        elif isinstance(placed, str):
            plan.skipped.append((m.key, placed))
        else:
            bad = next((why for target, p in placed if (why := shape_problem(p, targets[target]))), None)
            if bad:
                plan.skipped.append((m.key, bad))
                continue
            for target, p in placed:
                plan.add(target, p)
            plan.matched.append(m.key)
            plan.ignored += [m.params[r] for r in _IGNORED_ROLES if r in m.params]
    return plan


def shape_problem(p: Patch, layer_shape) -> str | None:
    """Why the parts of ``p`` cannot make its update for a layer of ``layer_shape`` (None when they can).

    The same shape arithmetic as :func:`spriteforge.lora.core.delta_weight` and the low-rank forward, done on
    the shapes only, so a damaged file is refused at planning instead of failing in the model's forward.
    """
    t = p.tensors
    shape = tuple(int(s) for s in layer_shape)
    out = (p.rows[1] - p.rows[0]) if p.rows else shape[0]
    rest = _numel(shape[1:])
    sh = {k: tuple(int(s) for s in v.shape) for k, v in t.items()}
    n = {k: _numel(v) for k, v in sh.items()}
    bad = f"malformed {p.kind} parts {', '.join(f'{k}{list(v)}' for k, v in sorted(sh.items()))} for layer {list(shape)}"
    if any(0 in v for v in sh.values()):
        return bad + " (an empty part)"
    if p.kind == "lora":
        down, up = sh["down"], sh["up"]
        r = down[0] if down else 0
        if len(down) < 2 or len(up) < 2 or up[0] != out or up[1] != r or n["up"] != out * r or n["down"] != r * rest:
            return bad
    elif p.kind == "loha":
        for a, b in (("w1a", "w1b"), ("w2a", "w2b")):
            r = sh[b][0] if sh[b] else 0
            if len(sh[a]) < 2 or len(sh[b]) < 2 or n[a] != out * r or n[b] != r * rest:
                return bad
    elif p.kind == "lokr":
        if "w1" in sh:
            w1 = sh["w1"]
        elif len(sh.get("w1a", ())) == 2 and len(sh.get("w1b", ())) == 2 and sh["w1a"][1] == sh["w1b"][0]:
            w1 = (sh["w1a"][0], sh["w1b"][1])
        else:
            return bad
        if len(w1) != 2 or len(shape) < 2 or out % w1[0] or shape[1] % w1[1]:
            return bad
        want = (out // w1[0]) * (shape[1] // w1[1]) * _numel(shape[2:])
        if "w2" in sh:
            ok = n["w2"] == want
        else:
            a, b = sh.get("w2a", ()), sh.get("w2b", ())
            ok = len(a) == 2 and len(b) >= 2 and a[1] == b[0] and a[0] * (n["w2b"] // b[0]) == want
        if not ok:
            return bad
    elif n["diff"] != out * rest:
        return bad
    if p.dora_scale is not None:
        m = _numel(p.dora_scale.shape)
        if m not in (out, shape[1] if len(shape) > 1 else 1):
            return bad + f" (DoRA scale of {m} values)"
    return None


# parts of a module that are not applied (the weight update is): bias diffs, LyCORIS norms
_IGNORED_ROLES = ("diff_b", "bias_b", "w_norm", "b_norm", "unsupported")


def _shape_text(p: Patch) -> str:
    return f"{p.out_rows}x{patch_in_numel(p)}"


def _place(patch: Patch, flat: str, index, targets, fams, te, ops=None):
    """[(target, patch)], a reason string (found but unusable), or None (no such layer)."""
    # 1. the same layer by name
    name = _lookup(index, flat, te)
    if name is not None:
        shape = targets[name]
        if not _fits(patch, shape):
            return f"shape {_shape_text(patch)} does not fit layer {name} {tuple(shape)} (a LoRA for another model size?)"
        return [(name, patch)]
    if te:
        return None
    # 2. original layout -> diffusers layers (split by rows)
    for fam in fams:
        hit = original_to_diffusers(flat, fam)
        if not hit:
            continue
        names, swap = hit
        out = _split(patch, names, swap, index, targets, ops)
        if out is not None:
            return out
    # 3. diffusers layer -> fused original layer (rows of it)
    for fam in fams:
        hit = diffusers_to_original(flat, fam)
        if not hit:
            continue
        orig, j, n, swap = hit
        oname = index.get(underscore(orig))
        if oname is None:
            continue
        shape = targets[oname]
        out_f, in_f = int(shape[0]), int(shape[1]) if len(shape) > 1 else 1
        sizes = [in_f] * (n - 1) + [out_f - in_f * (n - 1)] if n > 1 else [out_f]
        a = sum(sizes[:j])
        b = a + sizes[j]
        if patch.out_rows != b - a or patch_in_numel(patch) != _numel(shape[1:]):
            return f"shape {_shape_text(patch)} does not fit rows {a}:{b} of layer {oname} {tuple(shape)}"
        p = patch
        if swap == "always" or (swap == "if2" and out_f == 2 * in_f):
            h = patch.out_rows // 2
            p = take_rows(p, [(h, 2 * h), (0, h)], target_shape=(patch.out_rows,) + tuple(shape[1:]), ops=ops)
        return [(oname, replace(p, rows=(a, b)) if n > 1 else p)]
    # 4. diffusers' fused to_qkv / to_added_qkv
    fused = _fused(flat, index, targets)
    if fused is not None:
        fname, a, b = fused
        shape = targets[fname]
        if patch.out_rows != b - a or patch_in_numel(patch) != _numel(shape[1:]):
            return f"shape {_shape_text(patch)} does not fit rows {a}:{b} of layer {fname} {tuple(shape)}"
        return [(fname, replace(patch, rows=(a, b)))]
    return None


def _fused(flat, index, targets):
    for part, (fused, k, n) in FUSED_ALIASES.items():
        if flat.endswith("_" + part):
            fname = index.get(flat[: -len(part)] + fused)
            if fname is not None:
                size = int(targets[fname][0]) // n
                return fname, k * size, (k + 1) * size
    return None


def _split(patch: Patch, names, swap, index, targets, ops=None):
    resolved = []
    for t in names:
        tname = index.get(underscore(t))
        if tname is not None:
            resolved.append((tname, None, int(targets[tname][0]), targets[tname]))
            continue
        fused = _fused(underscore(t), index, targets)
        if fused is None:
            return None
        fname, a, b = fused
        resolved.append((fname, (a, b), b - a, targets[fname]))
    sizes = [r[2] for r in resolved]
    rest_shape = tuple(resolved[0][3][1:])
    if sum(sizes) != patch.out_rows or patch_in_numel(patch) != _numel(rest_shape):
        return (f"shape {_shape_text(patch)} does not fit layers {', '.join(r[0] for r in resolved)} "
                f"({sum(sizes)}x{_numel(rest_shape)})")
    whole = (patch.out_rows,) + rest_shape
    p = patch
    in_f = int(rest_shape[0]) if rest_shape else 1
    if swap == "always" or (swap == "if2" and patch.out_rows == 2 * in_f):
        h = patch.out_rows // 2
        p = take_rows(p, [(h, 2 * h), (0, h)], target_shape=whole, ops=ops)
    if len(resolved) == 1 and resolved[0][1] is None:
        return [(resolved[0][0], p)]
    out = []
    a = 0
    for tname, rows, size, _ in resolved:
        piece = take_rows(p, [(a, a + size)], target_shape=whole, ops=ops)
        out.append((tname, replace(piece, rows=rows)))
        a += size
    return out


def _text_encoder_plan(comp: str, mods, text_encoders: dict, get, strength: float, *, family: str, metadata, ops):
    """``(encoder name, plan)`` for the LoRA's text-encoder slot ``comp`` (``te1``, ``te2``...): the family's encoder
    for that slot when it matches, else the loaded encoder matching most layers; None when none matches."""
    order = TE_ORDER.get(family, ())
    slot = int(comp[2:]) - 1
    prefer = [order[slot]] if slot < len(order) and order[slot] in text_encoders else []
    best = None
    for te_name in prefer + [k for k in text_encoders if k not in prefer]:
        cp = resolve_component(mods, text_encoders[te_name], get, strength, family=family, te=True, metadata=metadata, ops=ops)
        if best is None or len(cp.matched) > len(best[1].matched):
            best = (te_name, cp)
        if cp.matched and te_name in prefer:
            break
    return best if best is not None and best[1].matched else None


def _merge(into: ComponentPlan, cp: ComponentPlan) -> None:
    """Add ``cp`` (another LoRA slot's plan for the same encoder) to ``into``."""
    for k, v in cp.patches.items():
        into.patches.setdefault(k, []).extend(v)
    into.matched += cp.matched
    into.unmatched += cp.unmatched
    into.skipped += cp.skipped
    into.ignored += cp.ignored


def plan(modules, get, *, family: str, transformer: dict | None, text_encoders: dict,
         strength_model: float = 1.0, strength_text: float = 1.0, metadata: dict | None = None,
         lora_name: str = "this LoRA", ops=None) -> Plan:
    """Patches of a LoRA for a model of ``family``.

    ``transformer`` and each ``text_encoders[name]`` are ``{module name: weight shape}``.
    Raises LORA_KEY_MISMATCH when the LoRA is for another family, or when nothing in it
    matches the model. A component at strength 0 is left out (it would not change anything).
    ``ops``: the array operations of the tensors ``get`` returns (the engine's; numpy's by default).
    """
    det = family_of_modules(modules, lambda k: tuple(get(k).shape), metadata)
    fam_name = NAMES.get(family, family)
    if det.candidates and family not in det.candidates:
        raise SpriteForgeError(
            LORA_KEY_MISMATCH,
            f"{lora_name} is for {det.name()}; the loaded model is {fam_name} — pick a LoRA trained for {fam_name}.",
            details={"lora_family": det.candidates, "model_family": family, "reason": det.reason},
        )
    result = Plan(det)
    by_comp: dict[str, list] = {}
    for m in modules:
        by_comp.setdefault(m.component, []).append(m)
    tr_mods = by_comp.pop("transformer", [])
    if tr_mods:
        if transformer is None:
            result.missing_components.append(("transformer", len(tr_mods)))
        elif strength_model != 0:
            result.components["transformer"] = resolve_component(
                tr_mods, transformer, get, strength_model, family=family, metadata=metadata, ops=ops)
    for comp in sorted(by_comp):
        mods = by_comp[comp]
        if strength_text == 0:
            continue
        best = _text_encoder_plan(comp, mods, text_encoders, get, strength_text, family=family, metadata=metadata, ops=ops)
        if best is None:
            result.missing_components.append((comp, len(mods)))
            continue
        te_name, cp = best
        if te_name in result.components:  # two LoRA slots onto one encoder: merge
            _merge(result.components[te_name], cp)
        else:
            result.components[te_name] = cp
    active = (strength_model != 0 and tr_mods and transformer is not None) or (strength_text != 0 and by_comp)
    if active and result.matched == 0:
        reasons = result.skipped()
        first = result.unmatched()[:3] or [k for k, _ in reasons[:3]]
        why = f" ({reasons[0][1]})" if reasons else ""
        raise SpriteForgeError(
            LORA_KEY_MISMATCH,
            f"none of the {len(modules)} layers of {lora_name} match the loaded {fam_name} model{why}; "
            f"first names: {', '.join(first)}. Pick a LoRA trained for this {fam_name} model.",
            details={"unmatched": result.unmatched()[:50], "skipped": reasons[:50], "lora_family": det.candidates},
        )
    return result
