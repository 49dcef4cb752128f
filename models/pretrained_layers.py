"""Flax layers with the Hugging Face checkpoints' parameter names and layouts.

PyTorch `Linear` weights are [out, in] and GPT-2's `Conv1D` weights [in, out], as stored, so
loading needs no transposes; norms and the log-softmax run in float32. Shared by models/llama.py
and models/gpt2.py, with the attention both use (parallel, and one step against a KV cache).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

Cache = dict[str, jax.Array]  # per layer k{i}, v{i}: [batch, length, kv_heads, head_dim]


def _zeros(_, shape, dtype):
    return jnp.zeros(shape, dtype)


def _ones(_, shape, dtype):
    return jnp.ones(shape, dtype)


def _normal(rng, shape, dtype):
    return (0.02 * jax.random.normal(rng, shape)).astype(dtype)


class Linear(nn.Module):
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


class Conv1D(nn.Module):
    """GPT-2's Conv1D: y = x @ weight + bias, weight [in, out]."""

    features: int
    dtype: str

    @nn.compact
    def __call__(self, x):
        weight = self.param("weight", _normal, (x.shape[-1], self.features), self.dtype)
        bias = self.param("bias", _zeros, (self.features,), self.dtype)
        return jnp.einsum("...i,io->...o", x.astype(self.dtype), weight) + bias


class Embed(nn.Module):
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


class RMSNorm(nn.Module):
    """Llama's RMSNorm: normalise in float32, cast back, then scale by `weight`."""

    eps: float
    dtype: str

    @nn.compact
    def __call__(self, x):
        weight = self.param("weight", _ones, (x.shape[-1],), self.dtype)
        h = x.astype(jnp.float32)
        h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
        return weight * h.astype(x.dtype)


class LayerNorm(nn.Module):
    """LayerNorm with `weight` and `bias`, computed in float32."""

    eps: float
    dtype: str

    @nn.compact
    def __call__(self, x):
        weight = self.param("weight", _ones, (x.shape[-1],), self.dtype)
        bias = self.param("bias", _zeros, (x.shape[-1],), self.dtype)
        h = x.astype(jnp.float32)
        mean = jnp.mean(h, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(h - mean), axis=-1, keepdims=True)
        h = (h - mean) * jax.lax.rsqrt(var + self.eps)
        return (h * weight.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


def attend_parallel(q, k, v):
    """Causal attention over q [batch, length, heads, head_dim], k/v with kv heads."""
    return jax.nn.dot_product_attention(q, k, v.astype(q.dtype), is_causal=True)


def attend_cached(q, k, v, index, cache_k, cache_v, kv_length):
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


def decode_blocks(blocks, h, index, cache: Cache, kv_length: int | None):
    """Runs one step through `blocks` (each with `decode(h, index, cache_k, cache_v,
    kv_length)`), block i reading and updating cache entries k{i} and v{i}.

    Returns:
      (h after the last block, the updated cache).
    """
    new_cache = {}
    for i, block in enumerate(blocks):
        h, k, v = block.decode(h, index, cache[f"k{i}"], cache[f"v{i}"], kv_length)
        new_cache[f"k{i}"], new_cache[f"v{i}"] = k, v
    return h, new_cache


def log_softmax(logits):
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
