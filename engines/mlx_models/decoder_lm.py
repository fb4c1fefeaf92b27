"""MLX port of a decoder-only language model used as a text encoder: transformers' ``Qwen3Model``, and the same
stack with the options of its relatives (``Qwen2Model`` / Qwen2.5-VL's text part: q/k/v bias, no q/k norm;
``LlamaModel`` / ``MistralModel``: neither; FLUX.2 [dev]'s Mistral Small 3.1 is the last).

One pre-norm block a layer: ``x + attn(rms(x))``, then ``x + mlp(rms(x))``; attention with grouped key/value heads
(``num_key_value_heads``), optional per-head RMS norm of queries and keys (Qwen3) before the rotary embedding
(rotate-half, ``rope_theta``), causal plus padding mask; a SwiGLU MLP ``down(silu(gate(x)) * up(x))``; the final
RMS norm. Parameter paths are the base model's (``embed_tokens.weight``, ``layers.0.self_attn.q_proj.weight``,
``layers.0.mlp.gate_proj.weight``, ``norm.weight``); :func:`map_weights` strips a ``...ForCausalLM`` file's
``model.`` prefix and drops its ``lm_head`` (a text encoder needs hidden states only, never logits).

``model(input_ids, attention_mask, layers=(-2,))`` gives the hidden states transformers' ``output_hidden_states``
numbers: index 0 is the embeddings, ``i`` the output of layer ``i - 1``, the last (``num_hidden_layers``, or ``-1``)
the final norm's output. Only the layers the deepest requested index needs are run.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ...errors import BAD_INPUT, UNSUPPORTED_ARCHITECTURE, SpriteForgeError
from ...models.keymaps import gemma_model_keys
from .layers import RMSNorm, block_done

# transformers model types whose attention has per-head q/k RMS norms, and those with q/k/v biases
_QK_NORM = ("qwen3", "qwen3_vl_text")
_QKV_BIAS = ("qwen2", "qwen2_5_vl", "qwen2_5_vl_text")


@dataclass
class DecoderConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    qk_norm: bool = False  # Qwen3: RMS norm over each query and key head
    qkv_bias: bool = False  # Qwen2 / Qwen2.5: biases on the q, k and v projections
    final_norm: bool = True  # False: a model cut after the layers read (ComfyUI's 30-layer Mistral-3), its last state not normed
    mrope_section: tuple = ()  # Qwen2.5-VL: the rotary frequencies' split over the (t, h, w) positions of 3-D positions

    @classmethod
    def from_dict(cls, cfg: dict) -> "DecoderConfig":
        """From a transformers config dict (``model_type`` says which options the family has; a vision-language
        model's, Mistral3ForConditionalGeneration's, gives its language model's ``text_config``)."""
        if isinstance(cfg.get("text_config"), dict) and "num_attention_heads" not in cfg:
            cfg = cfg["text_config"]
        kind = cfg.get("model_type", "")
        if cfg.get("use_sliding_window") or cfg.get("layer_types") and any(t != "full_attention" for t in cfg["layer_types"]):
            raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"this {kind or 'decoder'} text encoder uses sliding-window "
                                   "attention, which the MLX engine does not run. Load it with engine 'torch'.")
        heads = int(cfg["num_attention_heads"])
        out = {f.name: cfg[f.name] for f in fields(cls) if cfg.get(f.name) is not None}
        out.setdefault("num_key_value_heads", heads)
        out.setdefault("head_dim", int(cfg["hidden_size"]) // heads)
        out["rope_theta"] = _rope_theta(cfg)
        rp = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        if isinstance(rp, dict) and rp.get("mrope_section"):
            out["mrope_section"] = tuple(int(v) for v in rp["mrope_section"])
        out.setdefault("qk_norm", kind in _QK_NORM)
        out.setdefault("qkv_bias", bool(cfg.get("attention_bias")) or kind in _QKV_BIAS)
        return cls(**out)


def _rope_theta(cfg: dict) -> float:
    rp = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    kind = rp.get("rope_type", rp.get("type", "default")) if isinstance(rp, dict) else "default"
    if kind not in (None, "default", "mrope"):  # Qwen2.5-VL's mrope is the plain rope for text-only positions
        raise SpriteForgeError(UNSUPPORTED_ARCHITECTURE, f"rotary embedding type {kind!r} is not supported by the MLX "
                               "engine. Load this text encoder with engine 'torch'.")
    theta = rp.get("rope_theta") if isinstance(rp, dict) else None
    return float(theta if theta is not None else cfg.get("rope_theta", 10000.0))


def _rotate_half(x):
    half = x.shape[-1] // 2
    return mx.concatenate([-x[..., half:], x[..., :half]], axis=-1)


class Attention(nn.Module):
    def __init__(self, c: DecoderConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.scale = c.head_dim ** -0.5
        self.q_proj = nn.Linear(c.hidden_size, self.heads * c.head_dim, bias=c.qkv_bias)
        self.k_proj = nn.Linear(c.hidden_size, self.kv_heads * c.head_dim, bias=c.qkv_bias)
        self.v_proj = nn.Linear(c.hidden_size, self.kv_heads * c.head_dim, bias=c.qkv_bias)
        self.o_proj = nn.Linear(self.heads * c.head_dim, c.hidden_size, bias=False)
        if c.qk_norm:
            self.q_norm = RMSNorm(c.head_dim, c.rms_norm_eps)
            self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps)

    def __call__(self, x, cos, sin, mask, live=None):
        b, length, _ = x.shape
        q = self.q_proj(x).reshape(b, length, self.heads, self.head_dim)
        k = self.k_proj(x).reshape(b, length, self.kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, length, self.kv_heads, self.head_dim)
        if "q_norm" in self:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)  # grouped k/v heads as they are
        if live is not None:  # a query that may see no key (left padding) gets nothing, as torch's attention gives it
            out = out * live
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(b, length, -1))


class MLP(nn.Module):
    def __init__(self, c: DecoderConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def __call__(self, x):
        return self.down_proj(nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, c: DecoderConfig):
        super().__init__()
        self.self_attn = Attention(c)
        self.mlp = MLP(c)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def __call__(self, x, cos, sin, mask, live=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, live)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderLM(nn.Module):
    """The base model of a decoder-only LM: ``model(input_ids, attention_mask, layers=None)``."""

    def __init__(self, config: dict):
        super().__init__()
        c = self.config = DecoderConfig.from_dict(dict(config))
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = [DecoderLayer(c) for _ in range(c.num_hidden_layers)]
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        d = c.head_dim
        self._inv_freq = (1.0 / (c.rope_theta ** (np.arange(0, d, 2, dtype=np.float32) / np.float32(d)))).astype(np.float32)

    def _mask(self, length: int, keep, dtype):
        """Causal, and no padded key (``keep`` [B, L], 1 = a real token): additive, the dtype's minimum where masked;
        and which queries see any key at all (``None`` without padding: all do; a left-padded row's pads see none)."""
        idx = mx.arange(length)
        allowed = (idx[None, :] <= idx[:, None])[None, None]
        live = None
        if keep is not None:
            allowed = allowed & keep.astype(mx.bool_)[:, None, None, :]
            live = mx.any(allowed, axis=-1, keepdims=True).astype(dtype)
        return mx.where(allowed, mx.array(0, dtype=dtype), mx.array(mx.finfo(dtype).min, dtype=dtype)), live

    def _rope(self, length: int, dtype, positions=None):
        """cos/sin ``[L, D]`` of positions 0..L-1; with 3-D ``positions`` [3, B, L] (Qwen2.5-VL's multimodal rope:
        each section of the frequencies reads its axis, ``mrope_section``) ``[B, 1, L, D]``."""
        if positions is None:
            freqs = mx.arange(length, dtype=mx.float32)[:, None] * mx.array(self._inv_freq)[None, :]
        else:
            f = np.asarray(positions, np.float32)[..., None] * self._inv_freq  # [3, B, L, D/2]
            section = self.config.mrope_section or (f.shape[-1],)
            bounds = np.cumsum((0,) + tuple(section))
            f = np.concatenate([f[i % 3, ..., a:b] for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))], axis=-1)
            freqs = mx.array(f)[:, None]
        emb = mx.concatenate([freqs, freqs], axis=-1)
        return mx.cos(emb).astype(dtype), mx.sin(emb).astype(dtype)

    def __call__(self, input_ids, attention_mask=None, layers=None, *, inputs_embeds=None, positions=None, prenorm=False):
        """``layers=None``: the last hidden state (after the final norm); else a list of the hidden states at those
        indices (transformers' ``hidden_states`` numbering, negative from the end). ``inputs_embeds`` [B, L, D]:
        used instead of the embeddings of ``input_ids`` (image features in place); ``positions`` [3, B, L]:
        Qwen2.5-VL's 3-D rotary positions (``vision_inputs.rope_index``), else 0..L-1. ``prenorm``: the last state is
        the last layer's output, not normed."""
        n = len(self.layers)
        want = [n] if layers is None else [i + n + 1 if i < 0 else i for i in layers]
        if any(not 0 <= i <= n for i in want):
            raise SpriteForgeError(BAD_INPUT, f"hidden states {list(layers)} were asked of a {n}-layer text encoder. "
                                   "Give the model's own text encoder (the file its family was trained with).")
        if inputs_embeds is None:
            ids = input_ids if isinstance(input_ids, mx.array) else mx.array(np.asarray(input_ids))
            x = self.embed_tokens(ids.astype(mx.int32))
        else:
            x = inputs_embeds
        keep = attention_mask
        if keep is not None and not isinstance(keep, mx.array):
            keep = mx.array(np.asarray(keep))
        mask, live = self._mask(x.shape[1], keep, x.dtype)
        cos, sin = self._rope(x.shape[1], x.dtype, positions)
        states = [x]
        for layer in self.layers[: min(max(want), n)]:
            x = layer(x, cos, sin, mask, live)
            block_done(x)
            states.append(x)
        if max(want) == n and self.config.final_norm and not prenorm:
            states[n] = self.norm(states[n])
        return states[want[0]] if layers is None else [states[i] for i in want]


def map_weights(sd: dict) -> dict:
    """transformers names -> ours: a ``...ForCausalLM`` file's ``model.`` prefix stripped, ``lm_head`` dropped."""
    return gemma_model_keys(sd)
