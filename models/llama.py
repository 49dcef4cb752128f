"""The Llama family (Llama, Mistral, Qwen2) in Flax, with the checkpoints' parameter names.

RMSNorm, SwiGLU MLP, rotary positions in the `rotate_half` layout (frequencies from
`pretrained_config.rope_frequencies`), grouped-query attention, optional biases, tied or untied
output embeddings. `Llama(cfg)(inputs)` and `.decode` return float32 log-probs.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models import pretrained_config
from models import pretrained_layers as layers


def _rotary(x, positions, inv_freq: np.ndarray, scale: float):
    """Rotates x [batch, length, heads, head_dim] in the rotate_half layout (as HF Llama)."""
    angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)
    cos = (jnp.cos(angles) * scale)[:, :, None, :].astype(x.dtype)
    sin = (jnp.sin(angles) * scale)[:, :, None, :].astype(x.dtype)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


class _LlamaAttention(nn.Module):
    cfg: pretrained_config.PretrainedConfig

    def setup(self):
        cfg = self.cfg
        q_width, kv_width = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.q_proj = layers.Linear(q_width, cfg.qkv_bias, cfg.dtype)
        self.k_proj = layers.Linear(kv_width, cfg.qkv_bias, cfg.dtype)
        self.v_proj = layers.Linear(kv_width, cfg.qkv_bias, cfg.dtype)
        self.o_proj = layers.Linear(cfg.hidden_size, cfg.out_bias, cfg.dtype)

    def _qkv(self, x, positions):
        cfg = self.cfg
        inv_freq, scale = pretrained_config.rope_frequencies(cfg)
        split = lambda y, heads: y.reshape(*y.shape[:-1], heads, cfg.head_dim)  # noqa: E731
        q = _rotary(split(self.q_proj(x), cfg.num_heads), positions, inv_freq, scale)
        k = _rotary(split(self.k_proj(x), cfg.num_kv_heads), positions, inv_freq, scale)
        return q, k, split(self.v_proj(x), cfg.num_kv_heads)

    def _out(self, attended):
        return self.o_proj(attended.reshape(*attended.shape[:-2], -1))

    def __call__(self, x, positions):
        return self._out(layers.attend_parallel(*self._qkv(x, positions)))

    def decode(self, x, index, cache_k, cache_v, kv_length):
        positions = jnp.full(x.shape[:2], index, jnp.int32)
        q, k, v = self._qkv(x, positions)
        attended, cache_k, cache_v = layers.attend_cached(
            q, k, v, index, cache_k, cache_v, kv_length
        )
        return self._out(attended), cache_k, cache_v


class _LlamaMLP(nn.Module):
    cfg: pretrained_config.PretrainedConfig

    def setup(self):
        cfg = self.cfg
        self.gate_proj = layers.Linear(cfg.intermediate_size, cfg.mlp_bias, cfg.dtype)
        self.up_proj = layers.Linear(cfg.intermediate_size, cfg.mlp_bias, cfg.dtype)
        self.down_proj = layers.Linear(cfg.hidden_size, cfg.mlp_bias, cfg.dtype)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class _LlamaLayer(nn.Module):
    cfg: pretrained_config.PretrainedConfig

    def setup(self):
        cfg = self.cfg
        self.input_layernorm = layers.RMSNorm(cfg.norm_eps, cfg.dtype)
        self.self_attn = _LlamaAttention(cfg)
        self.post_attention_layernorm = layers.RMSNorm(cfg.norm_eps, cfg.dtype)
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

    cfg: pretrained_config.PretrainedConfig

    def setup(self):
        cfg = self.cfg
        self.embed_tokens = layers.Embed(cfg.vocab_size, cfg.hidden_size, cfg.dtype)
        self.layers = [_LlamaLayer(cfg) for _ in range(cfg.num_layers)]
        self.norm = layers.RMSNorm(cfg.norm_eps, cfg.dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = layers.Linear(cfg.vocab_size, False, cfg.dtype)

    def _log_probs(self, h):
        h = self.norm(h)
        head = self.embed_tokens.attend if self.cfg.tie_word_embeddings else self.lm_head
        return layers.log_softmax(head(h))

    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Log-probs [batch, length, vocab] of the token after each of inputs [batch, length]."""
        positions = jnp.broadcast_to(jnp.arange(inputs.shape[1]), inputs.shape)
        h = self.embed_tokens(inputs)
        for layer in self.layers:
            h = layer(h, positions)
        return self._log_probs(h)

    def decode(self, inputs, index, cache: layers.Cache, kv_length: int | None = None):
        """Reads inputs [batch] at position `index`; returns (log-probs [batch, vocab], cache)."""
        h = self.embed_tokens(inputs[:, None])
        h, new_cache = layers.decode_blocks(self.layers, h, index, cache, kv_length)
        return self._log_probs(h)[:, 0], new_cache
