"""Pretrained Hugging Face language models (Llama family, GPT-2) in Flax, and one coding interface.

A model directory in the Hugging Face layout holds `config.json` and its weights as
`model.safetensors`, or as shards listed by `model.safetensors.index.json`. `load` reads both and
returns a `PretrainedNet` (the architecture, hashable, so it can be a static jit argument; it
implements `models.coding_model.Net`, so the coder runs it as it runs our own models) and the
parameters (a nested dict of device arrays).

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

The parts: `models/pretrained_config.py` (config.json, rotary scaling), `models/llama.py` and
`models/gpt2.py` (the families, on `models/pretrained_layers.py`), `models/pretrained_loading.py`
(safetensors, name mapping, sharding); this module holds `PretrainedNet` and `load`, and re-exports
the rest.
"""

import dataclasses
import math
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from models import coding_model
from models.gpt2 import GPT2
from models.llama import Llama
from models.pretrained_config import (
    PretrainedConfig,
    config_from_hf,
    read_config,
    rope_frequencies,
)
from models.pretrained_layers import Cache
from models.pretrained_loading import Params, load_params, safetensors_files

__all__ = [  # the public API; callers import this module only
    "GPT2",
    "Llama",
    "PretrainedConfig",
    "PretrainedNet",
    "config_from_hf",
    "load",
    "read_config",
    "rope_frequencies",
    "safetensors_files",
]

_MODULES = {"llama": Llama, "gpt2": GPT2}


# ----------------------------------------------------------------------------------------------
# The coding interface (`models.coding_model.Net`)


@dataclasses.dataclass(frozen=True)
class PretrainedNet(coding_model.FloatNet):
    """A checkpoint's computation as the coder runs it (`models.coding_model.Net`); hashable (a
    static jit argument), parameters apart.

    Attributes:
      config: the checkpoint's `PretrainedConfig`.
      start_token: the id read before the first token (BOS), or None: the first token's
        distribution is uniform (see the module docstring).
    """

    config: PretrainedConfig
    start_token: int | None = 0

    def _module(self):
        return _MODULES[self.config.family](self.config)

    def table_spec(self, precision_bits, low_bits, top_k, kv_dtype):
        if kv_dtype:
            raise ValueError(
                "pretrained models keep their KV cache in their own dtype (no kv_dtype)."
            )
        return super().table_spec(precision_bits, low_bits, top_k, kv_dtype)

    def attention_blocks(self, chunk_tokens: int) -> int:
        """Pretrained tokens vary (about 600 for 2048 bytes of text): one block per 128, at most
        16, so short chunks skip more of the coder's steps."""
        return coding_model.default_attention_blocks(chunk_tokens, per=128, most=16)

    def init_cache(self, params, lanes: int, length: int | None = None, kv_dtype: str = ""):
        """Empty KV cache: per layer k{i} and v{i} of [lanes, length, kv_heads, head_dim]."""
        cfg = self.config
        shape = (lanes, length or cfg.context_length, cfg.num_kv_heads, cfg.head_dim)
        dtype = jnp.dtype(cfg.dtype)
        return {
            f"{kind}{i}": jnp.zeros(shape, dtype) for i in range(cfg.num_layers) for kind in "kv"
        }

    def cache_bytes(self, length: int, kv_dtype: str = "") -> int:
        p = self.config
        position = p.num_kv_heads * p.head_dim * jnp.dtype(p.dtype).itemsize
        return 2 * p.num_layers * length * position

    def work_bytes(self, length: int) -> int:
        p = self.config
        widened = 2 * p.num_layers * length * p.num_heads * p.head_dim * 4
        hidden = max(p.hidden_size, p.intermediate_size)
        return widened + 8 * length * p.num_heads + 20 * p.vocab_size + 4 * hidden

    def parallel_row_bytes(self, length: int) -> int:
        p = self.config
        attention = 24 * p.num_heads * length * length
        hidden = 16 * max(p.hidden_size, p.intermediate_size) * length
        return attention + 8 * p.vocab_size * length + hidden

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
            start token is read.
          index: scalar int32 position whose distribution is returned.
          cache: from `init_cache`.
          kv_length: static bound (> index) on the filled cache; attention reads only that much.

        Returns:
          (log-probs float32 [batch, vocab] of the token at `index`, updated cache).
        """
        module = self._module()
        method = type(module).decode
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


# ----------------------------------------------------------------------------------------------
# Loading a model directory


def load(
    model_dir: os.PathLike,
    *,
    start_token: int | None,
    dtype: str = "float32",
    shard: bool | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> tuple[PretrainedNet, Params]:
    """Loads a Hugging Face model directory.

    Args:
      model_dir: holds config.json and model.safetensors (or shards with their index).
      start_token: the BOS id read before the first token, or None (uniform first token); see
        `data.pretrained_tokenizers.PretrainedTokenizer.bos_token_id`.
      dtype: 'float32' or 'bfloat16' (parameters and compute).
      shard: split the parameters over `devices` (None: only if they do not fit one device).
      devices: devices to use (default: all local devices).

    Returns:
      (PretrainedNet, params): params a nested dict of device arrays named as the checkpoint.

    Raises:
      FileNotFoundError: no config.json, no safetensors file, or a missing shard.
      ValueError: unsupported architecture, missing or unexpected tensor, shape mismatch.
    """
    cfg = read_config(model_dir, dtype)
    if start_token is not None and not 0 <= start_token < cfg.vocab_size:
        raise ValueError(
            f"start_token {start_token} is outside the vocabulary [0, {cfg.vocab_size})"
        )
    model = PretrainedNet(cfg, start_token)
    shapes = model.param_shapes()
    return model, load_params(model_dir, cfg, shapes, shard=shard, devices=devices)
