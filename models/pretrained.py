"""Pretrained Hugging Face language models (Llama family, GPT-2) in Flax, and one coding interface.

A model directory in the Hugging Face layout holds `config.json` and its weights as
`model.safetensors`, or as shards listed by `model.safetensors.index.json`. `load` reads both and
returns a `CodingModel` (the architecture, hashable, so it can be a static jit argument) and the
parameters (a nested dict of device arrays). `CodingModel.from_transformer` wraps our own
`models.transformer.Transformer` behind the same interface, so one coder serves both.

Supported architectures (dispatch on `model_type`, else on `architectures[0]`):

* Llama family, `model_type` `llama`, `mistral`, `qwen2`: RMSNorm, SwiGLU MLP (`hidden_act`
  `silu`), rotary positions in the `rotate_half` layout, grouped-query attention
  (`num_key_value_heads`), optional `head_dim`, biases (`attention_bias` and `mlp_bias` as in
  Llama; Qwen2's q/k/v biases), tied or untied output embeddings. Rotary scaling
  (`rope_scaling` or transformers 5's `rope_parameters`): `default`, `linear`, `dynamic` (NTK:
  it only changes frequencies for sequences longer than `max_position_embeddings`, which the
  context never exceeds here, so it equals the default exactly), `llama3`, and `yarn` (as the
  YaRN paper and vLLM define it: `factor` from the config, the correction range from
  `original_max_position_embeddings` when given, cos and sin scaled by `attention_factor` or
  its mscale default; transformers versions have disagreed on replacing `factor` by
  max/original when `original_max_position_embeddings` is present). `longrope` and other types
  are refused. A sliding window (Mistral, Qwen2 with `use_sliding_window`) caps the usable
  context at the window, where it has no effect.
* GPT-2 (`gpt2`): learned positions, LayerNorm, GELU (`gelu_new`, `gelu_pytorch_tanh`, `gelu`),
  Conv1D weights stored [in, out], output layer tied to `wte`.

Parameters keep the checkpoint's names and layouts (PyTorch `Linear` weights [out, in], GPT-2
`Conv1D` weights [in, out]): `model.layers.3.self_attn.q_proj.weight` is
`params['layers_3']['self_attn']['q_proj']['weight']`, so loading needs no transposes. They are
stored and computed in `dtype` (float32 or bfloat16); norms, softmax and the log-softmax run in
float32. With `shard=True` (default: only when the parameters would not fit one device) every
matrix is split over a 1-D 'model' mesh of the local devices on its output dimension (the
embeddings on the vocabulary) where that divides evenly, and jit's SPMD partitioner does the
rest. Sharded and unsharded runs give slightly different floats, so an encoder and its decoder
must use the same layout (device count included).

Sequence convention (like `Transformer`): `apply(params, tokens)[:, t]` is the distribution of
`tokens[:, t]` given `tokens[:, :t]`; the model reads `start_token` (the BOS id) before the
first token. With `start_token=None` (a model without BOS) the first token's distribution is
uniform and the model at position p reads token p to predict token p + 1.
"""

import dataclasses
import json
import math
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from models import transformer

Cache = dict[str, jax.Array]
Params = dict[str, Any]

LLAMA_TYPES = ("llama", "mistral", "qwen2")
SUPPORTED_TYPES = (*LLAMA_TYPES, "gpt2")
_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "GPT2LMHeadModel": "gpt2",
}
ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")
_GELUS = {"gelu_new": True, "gelu_pytorch_tanh": True, "gelu": False}  # name -> tanh approx.
_CONV1D_NAMES = ("c_attn", "c_proj", "c_fc")  # GPT-2 weights stored [in, out]
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")  # buffers
_SAFETENSORS_INDEX = "model.safetensors.index.json"
_SAFETENSORS_SINGLE = "model.safetensors"
_FIT_FRACTION = 0.8  # shard automatically above this fraction of one device's memory


@dataclasses.dataclass(frozen=True)
class PretrainedConfig:
    """A pretrained architecture, built from config.json by `config_from_hf` (hashable).

    Attributes:
      family: 'llama' or 'gpt2'.
      model_type: the config's model_type ('llama', 'mistral', 'qwen2', 'gpt2').
      vocab_size: rows of the embedding and output layer.
      hidden_size: residual width.
      num_layers: blocks.
      num_heads: query heads.
      num_kv_heads: key/value heads (grouped-query attention when fewer than num_heads).
      head_dim: width of one head.
      intermediate_size: MLP width.
      max_position_embeddings: positions the model was built for.
      context_length: usable context: max_position_embeddings, capped by a sliding window.
      norm_eps: RMSNorm / LayerNorm epsilon.
      activation: MLP activation name from the config.
      rope_theta: rotary base.
      rope_scaling: sorted (key, value) pairs of the rotary scaling, () for none.
      qkv_bias: q/k/v projections have biases.
      out_bias: the attention output projection has a bias.
      mlp_bias: the MLP projections have biases.
      tie_word_embeddings: the output layer is the input embedding.
      dtype: parameter and compute dtype, 'float32' or 'bfloat16'.
    """

    family: str
    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int
    context_length: int
    norm_eps: float
    activation: str
    rope_theta: float = 10_000.0
    rope_scaling: tuple[tuple[str, Any], ...] = ()
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    dtype: str = "float32"


# ----------------------------------------------------------------------------------------------
# config.json


def read_json(path: os.PathLike, what: str) -> dict:
    """Reads a JSON file, or raises FileNotFoundError naming `what` is missing."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {what}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_config(model_dir: os.PathLike, dtype: str = "float32") -> PretrainedConfig:
    """Reads `model_dir/config.json` into a `PretrainedConfig`.

    Raises:
      FileNotFoundError: no config.json.
      ValueError: an unsupported architecture or setting (one line naming what is supported).
    """
    hf = read_json(
        pathlib.Path(model_dir) / "config.json",
        "a Hugging Face model directory needs config.json, *.safetensors and a tokenizer",
    )
    return config_from_hf(hf, dtype)


def model_type(hf: dict) -> str:
    """Returns the supported model_type of a config.json dict.

    Raises:
      ValueError: neither model_type nor architectures name a supported architecture.
    """
    kind = hf.get("model_type")
    if kind not in SUPPORTED_TYPES:
        kind = next(
            (_ARCHITECTURES[a] for a in hf.get("architectures") or () if a in _ARCHITECTURES), None
        )
    if kind is None:
        raise ValueError(
            f"unsupported model_type {hf.get('model_type')!r} (architectures "
            f"{hf.get('architectures')}): supported are {', '.join(SUPPORTED_TYPES)} "
            f"({', '.join(_ARCHITECTURES)})"
        )
    return kind


def config_from_hf(hf: dict, dtype: str = "float32") -> PretrainedConfig:
    """Builds a `PretrainedConfig` from a config.json dict.

    Args:
      hf: the parsed config.json.
      dtype: 'float32' or 'bfloat16' for parameters and compute.

    Raises:
      ValueError: unsupported model_type, activation, rotary scaling or dtype.
    """
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    kind = model_type(hf)
    try:
        return _gpt2_config(hf, dtype) if kind == "gpt2" else _llama_config(hf, kind, dtype)
    except KeyError as e:
        raise ValueError(f"config.json lacks {e.args[0]!r}, needed for {kind}") from None


def _llama_config(hf: dict, kind: str, dtype: str) -> PretrainedConfig:
    if hf.get("hidden_act", "silu") not in ("silu", "swish"):
        raise ValueError(f"{kind}: hidden_act {hf['hidden_act']!r} unsupported (only silu)")
    heads = hf["num_attention_heads"]
    rope = hf.get("rope_parameters") or {}
    theta = float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0)))
    scaling = {k: v for k, v in (hf.get("rope_scaling") or rope).items() if k != "rope_theta"}
    max_positions = hf["max_position_embeddings"]
    window = hf.get("sliding_window")
    if kind == "qwen2" and not hf.get("use_sliding_window", False):
        window = None
    cfg = PretrainedConfig(
        family="llama",
        model_type=kind,
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        intermediate_size=hf["intermediate_size"],
        max_position_embeddings=max_positions,
        context_length=min(max_positions, window) if window else max_positions,
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        activation="silu",
        rope_theta=theta,
        rope_scaling=_freeze_scaling(scaling),
        qkv_bias=kind == "qwen2" or bool(hf.get("attention_bias", False)),
        out_bias=kind != "qwen2" and bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        dtype=dtype,
    )
    if cfg.num_heads % cfg.num_kv_heads or cfg.head_dim % 2:
        raise ValueError(f"{kind}: {heads} heads do not group over {cfg.num_kv_heads} kv heads")
    rope_frequencies(cfg)  # validates the scaling
    return cfg


def _freeze_scaling(scaling: dict) -> tuple[tuple[str, Any], ...]:
    """Rope scaling as sorted hashable pairs; `type` is the old spelling of `rope_type`."""
    scaling = dict(scaling)
    if "type" in scaling:
        scaling.setdefault("rope_type", scaling.pop("type"))
    if scaling.get("rope_type", "default") == "default":
        return ()
    for key, value in scaling.items():
        if isinstance(value, list | dict):
            raise ValueError(f"rope_scaling {key}={value!r}: list-valued scalings unsupported")
    return tuple(sorted(scaling.items()))


def _gpt2_config(hf: dict, dtype: str) -> PretrainedConfig:
    activation = hf.get("activation_function", "gelu_new")
    if activation not in _GELUS:
        raise ValueError(f"gpt2: activation_function {activation!r} unsupported ({list(_GELUS)})")
    if hf.get("scale_attn_by_inverse_layer_idx") or not hf.get("scale_attn_weights", True):
        raise ValueError("gpt2: only the standard 1/sqrt(head_dim) attention scaling is supported")
    width, heads = hf["n_embd"], hf["n_head"]
    positions = hf.get("n_positions") or hf["n_ctx"]
    return PretrainedConfig(
        family="gpt2",
        model_type="gpt2",
        vocab_size=hf["vocab_size"],
        hidden_size=width,
        num_layers=hf["n_layer"],
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=width // heads,
        intermediate_size=hf.get("n_inner") or 4 * width,
        max_position_embeddings=positions,
        context_length=positions,
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        activation=activation,
        tie_word_embeddings=True,
        dtype=dtype,
    )


# ----------------------------------------------------------------------------------------------
# Rotary positions


def rope_frequencies(cfg: PretrainedConfig) -> tuple[np.ndarray, float]:
    """Returns the rotary inverse frequencies and the cos/sin scale of a Llama-family config.

    Returns:
      (inv_freq float32 [head_dim // 2], attention_factor): angles are position * inv_freq;
      cos and sin are multiplied by attention_factor (1 except for yarn).

    Raises:
      ValueError: an unsupported rope_type or missing scaling key.
    """
    dim, base = cfg.head_dim, cfg.rope_theta
    inv_freq = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    scaling = dict(cfg.rope_scaling)
    kind = scaling.get("rope_type", "default")
    if kind not in ROPE_TYPES:
        raise ValueError(f"rope_type {kind!r} unsupported: supported are {', '.join(ROPE_TYPES)}")
    try:
        if kind == "linear":
            inv_freq = inv_freq / scaling["factor"]
        elif kind == "llama3":
            inv_freq = _llama3_frequencies(inv_freq, scaling)
        elif kind == "yarn":
            return _yarn_frequencies(inv_freq, cfg, scaling)
    except KeyError as e:
        raise ValueError(f"rope_scaling of type {kind!r} lacks {e.args[0]!r}") from None
    # 'dynamic' (NTK) changes nothing up to max_position_embeddings, the longest context here.
    return inv_freq.astype(np.float32), 1.0


def _llama3_frequencies(inv_freq: np.ndarray, scaling: dict) -> np.ndarray:
    """Llama 3.1's scaling: long wavelengths / factor, short ones kept, a smooth ramp between."""
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_context = scaling["original_max_position_embeddings"]
    wavelength = 2 * math.pi / inv_freq
    scaled = np.where(wavelength > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelength - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelength >= old_context / high) & (wavelength <= old_context / low)
    return np.where(medium, smoothed, scaled)


def _yarn_frequencies(inv_freq, cfg: PretrainedConfig, scaling: dict):
    """YaRN: interpolate low frequencies by `factor`, keep high ones, ramp between."""
    factor, dim, base = float(scaling["factor"]), cfg.head_dim, cfg.rope_theta
    original = scaling.get("original_max_position_embeddings") or cfg.max_position_embeddings
    beta_fast, beta_slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1

    def correction_dim(rotations):
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    high = high + 0.001 if low == high else high
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp  # 1: keep the frequency, 0: interpolate it
    inv_freq = inv_freq / factor * (1 - extrapolation) + inv_freq * extrapolation

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = scaling.get("attention_factor")
    if attention is None:
        m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        attention = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
    return inv_freq.astype(np.float32), float(attention)


def _rotary(x, positions, inv_freq: np.ndarray, scale: float):
    """Rotates x [batch, length, heads, head_dim] in the rotate_half layout (as HF Llama)."""
    angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)
    cos = (jnp.cos(angles) * scale)[:, :, None, :].astype(x.dtype)
    sin = (jnp.sin(angles) * scale)[:, :, None, :].astype(x.dtype)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


# ----------------------------------------------------------------------------------------------
# Layers with the checkpoints' parameter names and layouts


def _zeros(_, shape, dtype):
    return jnp.zeros(shape, dtype)


def _normal(rng, shape, dtype):
    return (0.02 * jax.random.normal(rng, shape)).astype(dtype)


class _Linear(nn.Module):
    """PyTorch Linear: y = x @ weight.T + bias, weight [out, in]."""

    features: int
    use_bias: bool
    dtype: str

    @nn.compact
    def __call__(self, x):
        weight = self.param("weight", _normal, (self.features, x.shape[-1]), self.dtype)
        y = jnp.einsum("...i,oi->...o", x.astype(self.dtype), weight)
        if self.use_bias:
            y = y + self.param("bias", _zeros, (self.features,), self.dtype)
        return y


class _Conv1D(nn.Module):
    """GPT-2's Conv1D: y = x @ weight + bias, weight [in, out]."""

    features: int
    dtype: str

    @nn.compact
    def __call__(self, x):
        weight = self.param("weight", _normal, (x.shape[-1], self.features), self.dtype)
        bias = self.param("bias", _zeros, (self.features,), self.dtype)
        return jnp.einsum("...i,io->...o", x.astype(self.dtype), weight) + bias


class _Embed(nn.Module):
    """Embedding table `weight` [vocab, width]; `attend` is the tied output layer."""

    vocab_size: int
    width: int
    dtype: str

    def setup(self):
        self.weight = self.param("weight", _normal, (self.vocab_size, self.width), self.dtype)

    def __call__(self, ids):
        return jnp.take(self.weight, ids, axis=0)

    def attend(self, h):
        return jnp.einsum("...d,vd->...v", h.astype(self.dtype), self.weight)


class _RMSNorm(nn.Module):
    """Llama's RMSNorm: normalise in float32, cast back, then scale by `weight`."""

    eps: float
    dtype: str

    @nn.compact
    def __call__(self, x):
        weight = self.param("weight", lambda _, s, d: jnp.ones(s, d), (x.shape[-1],), self.dtype)
        h = x.astype(jnp.float32)
        h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
        return weight * h.astype(x.dtype)


class _LayerNorm(nn.Module):
    """LayerNorm with `weight` and `bias`, computed in float32."""

    eps: float
    dtype: str

    @nn.compact
    def __call__(self, x):
        weight = self.param("weight", lambda _, s, d: jnp.ones(s, d), (x.shape[-1],), self.dtype)
        bias = self.param("bias", _zeros, (x.shape[-1],), self.dtype)
        h = x.astype(jnp.float32)
        mean = jnp.mean(h, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(h - mean), axis=-1, keepdims=True)
        h = (h - mean) * jax.lax.rsqrt(var + self.eps)
        return (h * weight.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


def _attend_parallel(q, k, v):
    """Causal attention over q [batch, length, heads, head_dim], k/v with kv heads."""
    return jax.nn.dot_product_attention(q, k, v.astype(q.dtype), is_causal=True)


def _attend_cached(q, k, v, index, cache_k, cache_v, kv_length):
    """One query at `index` against the cache, as `transformer.Block.decode` does.

    Args:
      q: [batch, 1, heads, head_dim]; k, v: [batch, 1, kv_heads, head_dim].
      index: scalar int32 position.
      cache_k, cache_v: [batch, T, kv_heads, head_dim].
      kv_length: static bound on the filled cache (> index), or None for all T.

    Returns:
      (attended [batch, 1, heads, head_dim], cache_k, cache_v).
    """
    cache_k = jax.lax.dynamic_update_slice_in_dim(cache_k, k.astype(cache_k.dtype), index, 1)
    cache_v = jax.lax.dynamic_update_slice_in_dim(cache_v, v.astype(cache_v.dtype), index, 1)
    length = min(kv_length or cache_k.shape[1], cache_k.shape[1])
    keys, values = cache_k[:, :length], cache_v[:, :length]
    filled = jnp.arange(length) <= index
    mask = jnp.broadcast_to(filled[None, None, None, :], (q.shape[0], 1, 1, length))
    attended = jax.nn.dot_product_attention(
        q, keys.astype(q.dtype), values.astype(q.dtype), mask=mask, implementation="xla"
    )
    return attended, cache_k, cache_v


def _log_softmax(logits):
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


# ----------------------------------------------------------------------------------------------
# Llama family


class _LlamaAttention(nn.Module):
    cfg: PretrainedConfig

    def setup(self):
        cfg = self.cfg
        q_width, kv_width = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.q_proj = _Linear(q_width, cfg.qkv_bias, cfg.dtype)
        self.k_proj = _Linear(kv_width, cfg.qkv_bias, cfg.dtype)
        self.v_proj = _Linear(kv_width, cfg.qkv_bias, cfg.dtype)
        self.o_proj = _Linear(cfg.hidden_size, cfg.out_bias, cfg.dtype)

    def _qkv(self, x, positions):
        cfg = self.cfg
        inv_freq, scale = rope_frequencies(cfg)
        split = lambda y, heads: y.reshape(*y.shape[:-1], heads, cfg.head_dim)  # noqa: E731
        q = _rotary(split(self.q_proj(x), cfg.num_heads), positions, inv_freq, scale)
        k = _rotary(split(self.k_proj(x), cfg.num_kv_heads), positions, inv_freq, scale)
        return q, k, split(self.v_proj(x), cfg.num_kv_heads)

    def _out(self, attended):
        return self.o_proj(attended.reshape(*attended.shape[:-2], -1))

    def __call__(self, x, positions):
        return self._out(_attend_parallel(*self._qkv(x, positions)))

    def decode(self, x, index, cache_k, cache_v, kv_length):
        positions = jnp.full(x.shape[:2], index, jnp.int32)
        q, k, v = self._qkv(x, positions)
        attended, cache_k, cache_v = _attend_cached(q, k, v, index, cache_k, cache_v, kv_length)
        return self._out(attended), cache_k, cache_v


class _LlamaMLP(nn.Module):
    cfg: PretrainedConfig

    def setup(self):
        cfg = self.cfg
        self.gate_proj = _Linear(cfg.intermediate_size, cfg.mlp_bias, cfg.dtype)
        self.up_proj = _Linear(cfg.intermediate_size, cfg.mlp_bias, cfg.dtype)
        self.down_proj = _Linear(cfg.hidden_size, cfg.mlp_bias, cfg.dtype)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class _LlamaLayer(nn.Module):
    cfg: PretrainedConfig

    def setup(self):
        cfg = self.cfg
        self.input_layernorm = _RMSNorm(cfg.norm_eps, cfg.dtype)
        self.self_attn = _LlamaAttention(cfg)
        self.post_attention_layernorm = _RMSNorm(cfg.norm_eps, cfg.dtype)
        self.mlp = _LlamaMLP(cfg)

    def __call__(self, x, positions):
        x = x + self.self_attn(self.input_layernorm(x), positions)
        return x + self.mlp(self.post_attention_layernorm(x))

    def decode(self, x, index, cache_k, cache_v, kv_length):
        attended, cache_k, cache_v = self.self_attn.decode(
            self.input_layernorm(x), index, cache_k, cache_v, kv_length
        )
        x = x + attended
        return x + self.mlp(self.post_attention_layernorm(x)), cache_k, cache_v


class Llama(nn.Module):
    """Llama / Mistral / Qwen2 decoder: token ids in, float32 log-probs out."""

    cfg: PretrainedConfig

    def setup(self):
        cfg = self.cfg
        self.embed_tokens = _Embed(cfg.vocab_size, cfg.hidden_size, cfg.dtype)
        self.layers = [_LlamaLayer(cfg) for _ in range(cfg.num_layers)]
        self.norm = _RMSNorm(cfg.norm_eps, cfg.dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = _Linear(cfg.vocab_size, False, cfg.dtype)

    def _log_probs(self, h):
        h = self.norm(h)
        head = self.embed_tokens.attend if self.cfg.tie_word_embeddings else self.lm_head
        return _log_softmax(head(h))

    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Log-probs [batch, length, vocab] of the token after each of inputs [batch, length]."""
        positions = jnp.broadcast_to(jnp.arange(inputs.shape[1]), inputs.shape)
        h = self.embed_tokens(inputs)
        for layer in self.layers:
            h = layer(h, positions)
        return self._log_probs(h)

    def decode(self, inputs, index, cache: Cache, kv_length: int | None = None):
        """Reads inputs [batch] at position `index`; returns (log-probs [batch, vocab], cache)."""
        h = self.embed_tokens(inputs[:, None])
        new_cache = {}
        for i, layer in enumerate(self.layers):
            h, k, v = layer.decode(h, index, cache[f"k{i}"], cache[f"v{i}"], kv_length)
            new_cache[f"k{i}"], new_cache[f"v{i}"] = k, v
        return self._log_probs(h)[:, 0], new_cache


# ----------------------------------------------------------------------------------------------
# GPT-2


class _GPT2Attention(nn.Module):
    cfg: PretrainedConfig

    def setup(self):
        self.c_attn = _Conv1D(3 * self.cfg.hidden_size, self.cfg.dtype)
        self.c_proj = _Conv1D(self.cfg.hidden_size, self.cfg.dtype)

    def _qkv(self, x):
        cfg = self.cfg
        qkv = self.c_attn(x).reshape(*x.shape[:-1], 3, cfg.num_heads, cfg.head_dim)
        return qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]

    def _out(self, attended):
        return self.c_proj(attended.reshape(*attended.shape[:-2], -1))

    def __call__(self, x):
        return self._out(_attend_parallel(*self._qkv(x)))

    def decode(self, x, index, cache_k, cache_v, kv_length):
        q, k, v = self._qkv(x)
        attended, cache_k, cache_v = _attend_cached(q, k, v, index, cache_k, cache_v, kv_length)
        return self._out(attended), cache_k, cache_v


class _GPT2MLP(nn.Module):
    cfg: PretrainedConfig

    def setup(self):
        self.c_fc = _Conv1D(self.cfg.intermediate_size, self.cfg.dtype)
        self.c_proj = _Conv1D(self.cfg.hidden_size, self.cfg.dtype)

    def __call__(self, x):
        return self.c_proj(nn.gelu(self.c_fc(x), approximate=_GELUS[self.cfg.activation]))


class _GPT2Block(nn.Module):
    cfg: PretrainedConfig

    def setup(self):
        cfg = self.cfg
        self.ln_1 = _LayerNorm(cfg.norm_eps, cfg.dtype)
        self.attn = _GPT2Attention(cfg)
        self.ln_2 = _LayerNorm(cfg.norm_eps, cfg.dtype)
        self.mlp = _GPT2MLP(cfg)

    def __call__(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def decode(self, x, index, cache_k, cache_v, kv_length):
        attended, cache_k, cache_v = self.attn.decode(
            self.ln_1(x), index, cache_k, cache_v, kv_length
        )
        x = x + attended
        return x + self.mlp(self.ln_2(x)), cache_k, cache_v


class GPT2(nn.Module):
    """GPT-2 decoder: token ids in, float32 log-probs out."""

    cfg: PretrainedConfig

    def setup(self):
        cfg = self.cfg
        self.wte = _Embed(cfg.vocab_size, cfg.hidden_size, cfg.dtype)
        self.wpe = _Embed(cfg.max_position_embeddings, cfg.hidden_size, cfg.dtype)
        self.h = [_GPT2Block(cfg) for _ in range(cfg.num_layers)]
        self.ln_f = _LayerNorm(cfg.norm_eps, cfg.dtype)

    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Log-probs [batch, length, vocab] of the token after each of inputs [batch, length]."""
        h = self.wte(inputs) + self.wpe(jnp.arange(inputs.shape[1]))[None]
        for block in self.h:
            h = block(h)
        return _log_softmax(self.wte.attend(self.ln_f(h)))

    def decode(self, inputs, index, cache: Cache, kv_length: int | None = None):
        """Reads inputs [batch] at position `index`; returns (log-probs [batch, vocab], cache)."""
        h = self.wte(inputs[:, None]) + self.wpe(jnp.full((1, 1), index, jnp.int32))
        new_cache = {}
        for i, block in enumerate(self.h):
            h, k, v = block.decode(h, index, cache[f"k{i}"], cache[f"v{i}"], kv_length)
            new_cache[f"k{i}"], new_cache[f"v{i}"] = k, v
        return _log_softmax(self.wte.attend(self.ln_f(h)))[:, 0], new_cache


_MODULES = {"llama": Llama, "gpt2": GPT2}


# ----------------------------------------------------------------------------------------------
# The common coding interface


@dataclasses.dataclass(frozen=True)
class CodingModel:
    """What a coder needs from a model; hashable (a static jit argument), parameters apart.

    Attributes:
      config: `transformer.TransformerConfig` (our own models) or `PretrainedConfig`.
      start_token: the id read before the first token (our Transformer: 0; pretrained: BOS),
        or None: the first token's distribution is uniform (see the module docstring).
    """

    config: transformer.TransformerConfig | PretrainedConfig
    start_token: int | None = 0

    @classmethod
    def from_transformer(cls, cfg: transformer.TransformerConfig) -> "CodingModel":
        """Wraps our own Transformer (start token 0, as its `__call__` shifts in)."""
        return cls(cfg, 0)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def context_length(self) -> int:
        """Most tokens one sequence may have (max_position_embeddings, or a sliding window)."""
        return self.config.context_length

    @property
    def is_transformer(self) -> bool:
        """Whether this wraps our own Transformer (`from_transformer`)."""
        return isinstance(self.config, transformer.TransformerConfig)

    def _module(self):
        if self.is_transformer:
            return transformer.Transformer(self.config)
        return _MODULES[self.config.family](self.config)

    def init_cache(self, batch_size: int, length: int | None = None) -> Cache:
        """Empty KV cache: per layer k{i} and v{i} of [batch, length, kv_heads, head_dim]."""
        if self.is_transformer:
            return transformer.init_cache(self.config, batch_size, length)
        cfg = self.config
        shape = (batch_size, length or cfg.context_length, cfg.num_kv_heads, cfg.head_dim)
        dtype = jnp.dtype(cfg.dtype)
        return {
            f"{kind}{i}": jnp.zeros(shape, dtype) for i in range(cfg.num_layers) for kind in "kv"
        }

    def _uniform(self, shape):
        return jnp.full(shape + (self.vocab_size,), -math.log(self.vocab_size), jnp.float32)

    def apply(self, params: Params, tokens: jax.Array) -> jax.Array:
        """Parallel pass: log p(tokens[:, t] | start token, tokens[:, :t]).

        Args:
          params: the model's parameters.
          tokens: int32 [batch, length], length <= context_length.

        Returns:
          float32 [batch, length, vocab].
        """
        if self.is_transformer:
            return self._module().apply({"params": params}, tokens)
        if self.start_token is None:
            log_probs = self._module().apply({"params": params}, tokens)[:, :-1]
            return jnp.concatenate([self._uniform((tokens.shape[0], 1)), log_probs], axis=1)
        start = jnp.full((tokens.shape[0], 1), self.start_token, tokens.dtype)
        inputs = jnp.concatenate([start, tokens[:, :-1]], axis=1)
        return self._module().apply({"params": params}, inputs)

    def decode(
        self,
        params: Params,
        prev_tokens: jax.Array,
        index: jax.Array,
        cache: Cache,
        kv_length: int | None = None,
    ) -> tuple[jax.Array, Cache]:
        """One incremental step, as `transformer.Transformer.decode`.

        Args:
          params: the model's parameters.
          prev_tokens: int32 [batch], the token at index - 1; ignored at index 0, where the
            start token is read (our Transformer reads prev_tokens as given: feed 0 there).
          index: scalar int32 position whose distribution is returned.
          cache: from `init_cache`.
          kv_length: static bound (> index) on the filled cache; attention reads only that much.

        Returns:
          (log-probs float32 [batch, vocab] of the token at `index`, updated cache).
        """
        module = self._module()
        method = type(module).decode
        if self.is_transformer:
            return module.apply(
                {"params": params}, prev_tokens, index, cache, kv_length, method=method
            )
        if self.start_token is None:  # position p reads token p and predicts token p + 1
            position = jnp.maximum(index - 1, 0)
            log_probs, cache = module.apply(
                {"params": params}, prev_tokens, position, cache, kv_length, method=method
            )
            return jnp.where(index == 0, self._uniform(prev_tokens.shape[:1]), log_probs), cache
        inputs = jnp.where(
            index == 0, jnp.asarray(self.start_token, prev_tokens.dtype), prev_tokens
        )
        return module.apply({"params": params}, inputs, index, cache, kv_length, method=method)

    def param_shapes(self) -> Params:
        """The parameter tree as `jax.ShapeDtypeStruct` leaves (no memory allocated)."""
        tokens = jnp.zeros((1, 2), jnp.int32)
        init = lambda: self._module().init(jax.random.PRNGKey(0), tokens)["params"]  # noqa: E731
        return jax.eval_shape(init)

    def init_params(self, rng: jax.Array) -> Params:
        """Random parameters (tests and benchmarks)."""
        return self._module().init(rng, jnp.zeros((1, 2), jnp.int32))["params"]


# ----------------------------------------------------------------------------------------------
# Loading safetensors


def load(
    model_dir: os.PathLike,
    *,
    start_token: int | None,
    dtype: str = "float32",
    shard: bool | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> tuple[CodingModel, Params]:
    """Loads a Hugging Face model directory.

    Args:
      model_dir: holds config.json and model.safetensors (or shards with their index).
      start_token: the BOS id read before the first token, or None (uniform first token); see
        `data.pretrained_tokenizers.PretrainedTokenizer.bos_token_id`.
      dtype: 'float32' or 'bfloat16' (parameters and compute).
      shard: split the parameters over `devices` (None: only if they do not fit one device).
      devices: devices to use (default: all local devices).

    Returns:
      (CodingModel, params): params a nested dict of device arrays named as the checkpoint.

    Raises:
      FileNotFoundError: no config.json, no safetensors file, or a missing shard.
      ValueError: unsupported architecture, missing or unexpected tensor, shape mismatch.
    """
    cfg = read_config(model_dir, dtype)
    if start_token is not None and not 0 <= start_token < cfg.vocab_size:
        raise ValueError(
            f"start_token {start_token} is outside the vocabulary [0, {cfg.vocab_size})"
        )
    model = CodingModel(cfg, start_token)
    return model, load_params(model_dir, model, shard=shard, devices=devices)


def safetensors_files(model_dir: os.PathLike) -> dict[str, pathlib.Path]:
    """Maps every tensor name to its file (from the index, or the single file's header).

    Raises:
      FileNotFoundError: neither model.safetensors nor an index, or a shard named by the index.
    """
    from safetensors import safe_open

    model_dir = pathlib.Path(model_dir)
    index = model_dir / _SAFETENSORS_INDEX
    if index.is_file():
        weight_map = read_json(index, "safetensors index")["weight_map"]
        files = {name: model_dir / file for name, file in weight_map.items()}
        for path in sorted(set(files.values())):
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: a shard listed in {index}")
        return files
    single = model_dir / _SAFETENSORS_SINGLE
    if not single.is_file():
        others = sorted(p.name for p in model_dir.glob("*.safetensors"))
        hint = (
            f" (found {others}: rename to {_SAFETENSORS_SINGLE} or add an index)"
            if others
            else (" (only .safetensors weights are read: convert PyTorch .bin files first)")
        )
        raise FileNotFoundError(f"{single} not found and no {_SAFETENSORS_INDEX}{hint}")
    with safe_open(single, framework="np") as f:
        return dict.fromkeys(f.keys(), single)


def _tree_key(name: str) -> tuple[str, ...]:
    """'model.layers.3.mlp.up_proj.weight' -> ('layers_3', 'mlp', 'up_proj', 'weight')."""
    parts = name.split(".")
    if parts[0] in ("model", "transformer") and len(parts) > 1:
        parts = parts[1:]
    key: list[str] = []
    for part in parts:
        if part.isdigit() and key:
            key[-1] = f"{key[-1]}_{part}"
        else:
            key.append(part)
    return tuple(key)


def _checkpoint_names(files: dict[str, pathlib.Path], cfg: PretrainedConfig) -> dict:
    """Maps parameter paths to checkpoint names, dropping known buffers and a tied lm_head."""
    names = {}
    for name in files:
        key = _tree_key(name)
        if name.endswith(_IGNORED_SUFFIXES) or (key[0] == "lm_head" and cfg.tie_word_embeddings):
            continue
        names[key] = name
    return names


def _flatten(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def _hf_name(key: tuple[str, ...]) -> str:
    """Inverse of `_tree_key` without the 'model.' prefix: ('layers_3', 'mlp') -> 'layers.3.mlp'."""
    parts = []
    for part in key:
        stem, _, number = part.rpartition("_")
        parts.append(f"{stem}.{number}" if stem and number.isdigit() else part)
    return ".".join(parts)


def load_params(
    model_dir: os.PathLike,
    model: CodingModel,
    *,
    shard: bool | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Params:
    """Reads the safetensors weights of `model` (see `load`), checking names and shapes.

    Raises:
      FileNotFoundError: see `safetensors_files`.
      ValueError: a missing tensor, an unexpected one (another architecture), a shape mismatch.
    """
    cfg = model.config
    files = safetensors_files(model_dir)
    names = _checkpoint_names(files, cfg)
    expected = dict(_flatten(model.param_shapes()))
    for key in expected:
        if key not in names:
            raise ValueError(
                f"{model_dir}: missing tensor {_hf_name(key)!r} for {cfg.model_type} "
                f"({len(files)} tensors in the checkpoint)"
            )
    unexpected = sorted(names[key] for key in names if key not in expected)
    if unexpected:
        raise ValueError(
            f"{model_dir}: unexpected tensor {unexpected[0]!r} ({len(unexpected)} in all): the "
            f"checkpoint does not match the {cfg.model_type} architecture"
        )
    devices = list(devices or jax.local_devices())
    if shard is None:
        shard = len(devices) > 1 and not _fits_one_device(expected.values(), devices[0])
    mesh = Mesh(np.array(devices), ("model",)) if shard else None
    flat = {}
    by_file: dict[pathlib.Path, list] = {}
    for key in expected:
        by_file.setdefault(files[names[key]], []).append(key)
    for path, keys in by_file.items():
        flat.update(_read_file(path, keys, names, expected, mesh, devices[0], model_dir))
    return _unflatten(flat)


def _read_file(path, keys, names, expected, mesh, device, model_dir) -> dict:
    """Reads the tensors `keys` of one safetensors file onto the devices."""
    from safetensors import safe_open

    out = {}
    with safe_open(path, framework="np") as f:
        for key in keys:
            want = expected[key]
            tensor = f.get_slice(names[key])
            shape = tuple(tensor.get_shape())
            if shape != want.shape:
                raise ValueError(
                    f"{model_dir}: tensor {names[key]!r} has shape {shape}, the config implies "
                    f"{want.shape}"
                )
            bf16 = tensor.get_dtype() == "BF16"
            if mesh is None:
                sharding = SingleDeviceSharding(device)
            else:
                sharding = NamedSharding(mesh, _partition_spec(key, shape, mesh.size))

            def read(index, tensor=tensor, bf16=bf16, dtype=want.dtype):
                array = np.asarray(tensor[index] if index else tensor[:])
                if bf16 and array.dtype != ml_dtypes.bfloat16:  # old safetensors: raw words
                    array = array.view(ml_dtypes.bfloat16)
                return array.astype(dtype)

            out[key] = jax.make_array_from_callback(shape, sharding, read)
    return out


def _partition_spec(key: tuple[str, ...], shape: tuple[int, ...], num_devices: int):
    """Splits matrices on their output dimension (embeddings on the vocabulary) if it divides."""
    if len(shape) != 2:
        return PartitionSpec()
    axis = 1 if any(part in _CONV1D_NAMES for part in key) else 0
    if shape[axis] % num_devices:
        axis = 1 - axis
    if shape[axis] % num_devices:
        return PartitionSpec()
    return PartitionSpec(*(("model" if a == axis else None) for a in range(2)))


def _fits_one_device(shapes, device) -> bool:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    limit = (stats or {}).get("bytes_limit")
    if not limit:
        return True  # unknown (CPU): one device holds it
    size = sum(math.prod(s.shape) * jnp.dtype(s.dtype).itemsize for s in shapes)
    return size <= _FIT_FRACTION * limit


def _unflatten(flat: dict) -> Params:
    tree: Params = {}
    for key, value in flat.items():
        node = tree
        for part in key[:-1]:
            node = node.setdefault(part, {})
        node[key[-1]] = value
    return tree
