"""The weight update, written once for every engine.

A :class:`Patch` is one LoRA-family adapter on one weight: its tensors (any array type
of one framework: numpy, torch or MLX), its ``alpha``, the
user's ``strength``, an optional DoRA magnitude and, for fused targets, the rows of the
target weight it covers. :func:`delta_weight` is ``ΔW`` (``alpha/rank`` included, not the
strength), :func:`patched_weight` is the patched weight. Both compute in float32 and
return the weight's dtype.

Forms (``s = alpha / rank`` when the file has an alpha, else 1):

* LoRA:  ``ΔW = s · up @ down``  (rank = rows of ``down``)
* LoHa:  ``ΔW = s · (w1a @ w1b) ⊙ (w2a @ w2b)``  (rank = rows of ``w1b``)
* LoKr:  ``ΔW = s · kron(w1, w2)`` with ``w1 = w1a @ w1b`` / ``w2 = w2a @ w2b`` where factorised;
  ``s = alpha / rank`` only when a factor is factorised (rank = rows of its ``b``), else 1 (LyCORIS, ComfyUI)
* full:  ``ΔW = diff``

Patched weight: ``W' = W + strength · ΔW``. With DoRA (``dora_scale`` / peft's
``lora_magnitude_vector`` = ``m``): ``V = W + ΔW``, ``W_d = m · V / ‖V‖`` and
``W' = W + strength · (W_d − W)`` (so strength 1 gives ``W_d``, 0 gives ``W``; ComfyUI's
convention). The norm axis follows the magnitude's shape as peft and LyCORIS define it:

* ``m`` with ``m.shape[0] == out`` (peft ``lora_magnitude_vector``, shape ``(out,)``): one norm per
  output row, over the input axis (and kernel axes): ``‖V‖_i = sqrt(Σ_j V_ij²)`` — peft's
  ``get_weight_norm`` (``torch.linalg.norm(weight, dim=1)``).
* otherwise (LyCORIS / kohya ``dora_scale``, shape ``(1, in[, 1, 1])``): one norm per input
  column, over the output axis (and kernel axes): ``‖V‖_j = sqrt(Σ_i V_ij²)``.

Both use ``V = W + ΔW`` (peft and LyCORIS do; ComfyUI uses ``W`` for the row case) and add
no epsilon.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..samplers.ops import default_ops

KINDS = ("lora", "loha", "lokr", "full")


@dataclass(frozen=True)
class Patch:
    """One adapter on one target weight.

    ``tensors`` by kind: lora ``down``/``up``; loha ``w1a w1b w2a w2b``; lokr ``w1`` or
    ``w1a``+``w1b`` and ``w2`` or ``w2a``+``w2b``; full ``diff``. ``rows=(a, b)`` puts the
    update on rows ``a:b`` of the target (a q/k/v piece of a fused QKV weight).
    """

    kind: str
    tensors: dict
    alpha: float | None = None
    strength: float = 1.0
    dora_scale: Any = None
    rows: tuple[int, int] | None = None
    name: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown patch kind {self.kind!r}")

    @property
    def rank(self) -> int | None:
        t = self.tensors
        if self.kind == "lora":
            return int(t["down"].shape[0])
        if self.kind == "loha":
            return int(t["w1b"].shape[0])
        if self.kind == "lokr":
            if "w1b" in t:
                return int(t["w1b"].shape[0])
            if "w2b" in t:
                return int(t["w2b"].shape[0])
        return None

    @property
    def scale(self) -> float:
        """``alpha / rank`` where it applies, else 1."""
        r = self.rank
        if self.alpha is None or not r:
            return 1.0
        return float(self.alpha) / r

    @property
    def out_rows(self) -> int:
        """Rows of the update this patch produces (before ``rows`` placement)."""
        t = self.tensors
        if self.kind == "lora":
            return int(t["up"].shape[0])
        if self.kind == "loha":
            return int(t["w1a"].shape[0])
        if self.kind == "full":
            return int(t["diff"].shape[0])
        w1 = t["w1"].shape[0] if "w1" in t else t["w1a"].shape[0]
        w2 = t["w2"].shape[0] if "w2" in t else t["w2a"].shape[0]
        return int(w1) * int(w2)

    def with_strength(self, strength: float) -> "Patch":
        return replace(self, strength=float(strength))


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _kron(a, b, xp):
    """Kronecker product of two arrays of equal rank (rank 2 or 4), by broadcasting."""
    nd = len(a.shape)
    sa, sb = tuple(a.shape), tuple(b.shape)
    a_shape, b_shape, out = [], [], []
    for i in range(nd):
        a_shape += [sa[i], 1]
        b_shape += [1, sb[i]]
        out.append(sa[i] * sb[i])
    return xp.reshape(xp.reshape(a, a_shape) * xp.reshape(b, b_shape), out)


def delta_weight(patch: Patch, shape, *, ops=None) -> Any:
    """``ΔW`` of ``patch`` in float32, shaped ``shape`` (the rows it covers × the rest of the weight).

    ``ops``: the array operations of the tensors' framework (the engine's ``engine.ops``; numpy's by default).
    """
    t = patch.tensors
    first = next(iter(t.values()))
    xp = default_ops(first, ops)
    shape = tuple(int(s) for s in shape)
    out = shape[0]
    rest = _numel(shape[1:])
    if patch.kind == "lora":
        down = xp.f32(t["down"])
        up = xp.f32(t["up"])
        r = down.shape[0]
        d = xp.reshape(up, (out, r)) @ xp.reshape(down, (r, rest))
    elif patch.kind == "loha":
        w1a, w1b, w2a, w2b = (xp.f32(t[k]) for k in ("w1a", "w1b", "w2a", "w2b"))
        r1, r2 = w1b.shape[0], w2b.shape[0]
        d = (xp.reshape(w1a, (out, r1)) @ xp.reshape(w1b, (r1, rest))) * (xp.reshape(w2a, (out, r2)) @ xp.reshape(w2b, (r2, rest)))
    elif patch.kind == "lokr":
        w1 = xp.f32(t["w1"]) if "w1" in t else xp.f32(t["w1a"]) @ xp.f32(t["w1b"])
        if "w2" in t:
            w2 = xp.f32(t["w2"])
        else:
            w2a, w2b = xp.f32(t["w2a"]), xp.f32(t["w2b"])
            w2 = w2a @ xp.reshape(w2b, (w2b.shape[0], -1))
        o1, i1 = int(w1.shape[0]), int(w1.shape[1])
        w2 = xp.reshape(w2, (out // o1, shape[1] // i1) + shape[2:])
        if len(shape) > 2:
            w1 = xp.reshape(w1, (o1, i1) + (1,) * (len(shape) - 2))
        d = _kron(w1, w2, xp)
    else:  # full
        d = xp.f32(t["diff"])
    d = xp.reshape(d, shape)
    s = patch.scale
    return d * s if s != 1.0 else d


def _dora(W, V, m, xp):
    """``m · V / ‖V‖`` with the norm axis chosen by the magnitude's shape (see module doc)."""
    m = xp.f32(m)
    nd = len(V.shape)
    if int(m.shape[0]) == int(V.shape[0]) and int(V.shape[0]) != 1:  # peft: one per output row
        norm = xp.sqrt(xp.sum_keep(V * V, range(1, nd)))
    else:  # LyCORIS: one per input column
        norm = xp.sqrt(xp.sum_keep(V * V, [0] + list(range(2, nd))))
    return xp.reshape(m, tuple(norm.shape)) * (V / norm)


def _apply_one(W, d, p, xp):
    if p.dora_scale is None:
        return W + d * p.strength if p.strength != 1.0 else W + d
    Wd = _dora(W, W + d, p.dora_scale, xp)
    return W + (Wd - W) * p.strength if p.strength != 1.0 else Wd


def patched_weight(weight, patches, *, like=None, ops=None):
    """``weight`` with ``patches`` applied in order (float32 math, returned in ``like``'s dtype or the weight's).

    A patch with ``rows=(a, b)`` changes rows ``a:b`` only (its DoRA norm, if any, is taken
    over those rows). ``ops`` as for :func:`delta_weight`.
    """
    xp = default_ops(weight, ops)
    W = xp.f32(weight)
    total = int(W.shape[0])
    for p in patches:
        if p.strength == 0:
            continue
        if p.rows:
            a, b = p.rows
            d = delta_weight(p, (b - a,) + tuple(W.shape[1:]), ops=xp)
            block = _apply_one(W[a:b], d, p, xp)
            parts = ([W[:a]] if a > 0 else []) + [block] + ([W[b:]] if b < total else [])
            W = xp.concat(parts, 0) if len(parts) > 1 else block
        else:
            W = _apply_one(W, delta_weight(p, tuple(W.shape), ops=xp), p, xp)
    return xp.cast_like(W, like if like is not None else weight)


# -- reshaping patches: splitting fused updates and fusing split ones -------------


def _row_take(x, pieces, xp):
    chunks = [x[a:b] for a, b in pieces]
    return chunks[0] if len(chunks) == 1 else xp.concat(chunks, 0)


def take_rows(patch: Patch, pieces, *, target_shape=None, ops=None) -> Patch:
    """The patch for rows ``pieces`` (list of ``(a, b)``, concatenated in order) of ``patch``'s update.

    Exact for LoRA, LoHa and full (rows of ``up`` / ``w1a`` and ``w2a`` / ``diff``); a LoKr
    update is materialised first (``target_shape`` = shape of the whole update). A DoRA
    magnitude with one entry per output row is sliced the same way; a per-column one is
    kept (then the norm is taken over the piece only, an approximation).
    """
    t = patch.tensors
    xp = default_ops(next(iter(t.values())), ops)
    if patch.kind == "lora":
        new = dict(t, up=_row_take(t["up"], pieces, xp))
        kind, alpha = "lora", patch.alpha
    elif patch.kind == "loha":
        new = dict(t, w1a=_row_take(t["w1a"], pieces, xp), w2a=_row_take(t["w2a"], pieces, xp))
        kind, alpha = "loha", patch.alpha
    else:
        if patch.kind == "full":
            full = t["diff"]
        else:
            if target_shape is None:
                raise ValueError("take_rows on a LoKr patch needs target_shape")
            full = delta_weight(replace(patch, rows=None), target_shape, ops=xp)
        new = {"diff": _row_take(full, pieces, xp)}
        kind, alpha = "full", None
    dora = patch.dora_scale
    if dora is not None and int(dora.shape[0]) == patch.out_rows and patch.out_rows != 1:
        dora = _row_take(dora, pieces, xp)
    return replace(patch, kind=kind, tensors=new, alpha=alpha, dora_scale=dora, rows=None)


def fuse_lora_parts(parts, sizes, in_features: int, *, ops=None) -> Patch:
    """One plain LoRA on a fused weight from LoRAs on its row blocks (q, k, v → qkv).

    ``parts[i]`` is a ``lora`` :class:`Patch` for rows block ``i`` (``sizes[i]`` rows) or
    ``None`` (block untouched). The result has ``down`` = the parts' downs stacked (rank =
    sum of ranks) and ``up`` block-diagonal with each part's ``alpha/rank`` folded in, so
    its update equals the stacked parts' updates exactly. Strength is taken from the parts
    (they must agree).
    """
    present = [p for p in parts if p is not None]
    if not present:
        raise ValueError("fuse_lora_parts needs at least one part")
    for p in present:
        if p.kind != "lora" or p.dora_scale is not None:
            raise ValueError("only plain LoRA parts can be fused")
    xp = default_ops(present[0].tensors["down"], ops)
    ranks = [int(p.tensors["down"].shape[0]) if p is not None else 0 for p in parts]
    R = sum(ranks)
    downs, ups = [], []
    for p in present:
        downs.append(xp.reshape(xp.f32(p.tensors["down"]), (p.tensors["down"].shape[0], in_features)))
    col = 0
    for p, size, r in zip(parts, sizes, ranks):
        if p is None:
            ups.append(xp.zeros((size, R), present[0].tensors["down"]))
            continue
        up = xp.reshape(xp.f32(p.tensors["up"]), (size, r)) * p.scale
        row = [xp.zeros((size, col), up)] if col else []
        row.append(up)
        if R - col - r:
            row.append(xp.zeros((size, R - col - r), up))
        ups.append(xp.concat(row, 1) if len(row) > 1 else up)
        col += r
    return Patch(
        "lora",
        {"down": xp.concat(downs, 0), "up": xp.concat(ups, 0)},
        alpha=None,
        strength=present[0].strength,
        name="+".join(p.name for p in present),
    )
