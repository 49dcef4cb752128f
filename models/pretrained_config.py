"""Pretrained architectures read from a Hugging Face config.json, and their rotary scaling.

`config_from_hf` turns a parsed config.json into a hashable `PretrainedConfig` (one for the Llama
family and GPT-2 alike; models/pretrained.py lists what is supported), refusing what the models
here do not implement; `rope_frequencies` gives a Llama-family config's rotary frequencies.
"""

import dataclasses
import json
import math
import os
import pathlib
from typing import Any

import numpy as np

LLAMA_TYPES = ("llama", "mistral", "qwen2")
SUPPORTED_TYPES = (*LLAMA_TYPES, "gpt2")
_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "GPT2LMHeadModel": "gpt2",
}
ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")
GELUS = {"gelu_new": True, "gelu_pytorch_tanh": True, "gelu": False}  # name -> tanh approx.


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
    if activation not in GELUS:
        raise ValueError(f"gpt2: activation_function {activation!r} unsupported ({list(GELUS)})")
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
