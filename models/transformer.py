"""Decoder-only byte-level Transformer (Linen), with a KV-cache step for decoding.

The layout follows the paper's reference model (post-LayerNorm residual blocks, attention without
biases, a GELU MLP with biases, untied input embedding and output layer with bias). Positions are
rotary by default (`positions='rotary'`: queries and keys rotated in every block);
`positions='sinusoidal'` adds the reference's sinusoids to the scaled input embedding instead.
Neither has parameters, so counts are equal. With `norm='pre'` the blocks normalise their inputs
and a final LayerNorm is added, which is steadier for deep models.

Inputs are the targets shifted right by one with token 0 in front (the reference's convention), so
`log_probs[:, t]` is the distribution of `tokens[:, t]` given `tokens[:, :t]`.

Linen keeps the parameters a plain nested dict, which orbax checkpoints, optax updates, the
container fingerprints and `jax.jit` closes over without any conversion.
"""

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Cache = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyperparameters; built from a `config.model` sub-tree by `from_config`."""

    vocab_size: int = 256
    num_layers: int = 4
    width: int = 256
    num_heads: int = 8
    mlp_ratio: int = 4
    context_length: int = 2048
    norm: str = "post"
    rope_base: float = 10_000.0
    dtype: str = "float32"
    attention: str = "auto"
    emb_init_scale: float = 0.02
    positions: str = "rotary"

    @classmethod
    def from_config(cls, model_config: Any, vocab_size: int) -> "TransformerConfig":
        """Builds from an ml_collections sub-tree (`config.model`) and the tokenizer's vocab.

        A field the sub-tree lacks (a run saved before the field existed) takes its default
        here, e.g. `positions='rotary'`, which is what such runs trained with.
        """
        fields = {f.name for f in dataclasses.fields(cls)} - {"vocab_size"}
        return cls(
            vocab_size=vocab_size, **{k: model_config[k] for k in fields if k in model_config}
        )

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads


def num_params(params: Any) -> int:
    """Returns the number of scalars in a parameter tree."""
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))


def closed_form_num_params(cfg: TransformerConfig) -> int:
    """Parameter count from the architecture alone (checked against `num_params` in tests)."""
    d, layers, v = cfg.width, cfg.num_layers, cfg.vocab_size
    per_layer = 4 * d * d + 2 * cfg.mlp_ratio * d * d + cfg.mlp_ratio * d + d + 4 * d
    final_norm = 2 * d if cfg.norm == "pre" else 0
    return layers * per_layer + 2 * v * d + v + final_norm


def _rotary(x: jax.Array, positions: jax.Array, base: float) -> jax.Array:
    """Applies rotary position embeddings to `x` [batch, length, heads, head_dim]."""
    half = x.shape[-1] // 2
    inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [batch, length, half]
    sin = jnp.sin(angles)[:, :, None, :].astype(x.dtype)
    cos = jnp.cos(angles)[:, :, None, :].astype(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


SINUSOID_MAX_TIMESCALE = 1e4


def _sinusoids(positions: jax.Array, width: int) -> jax.Array:
    """The reference's `sinusoid_position_encoding` at positions [batch, length]: [b, l, width].

    As written there: frequencies 10000^(-i / width) for even i from 0 to width inclusive
    (width / 2 + 1 of them), their sines then their cosines, cut to `width` columns, so the
    last two frequencies have no cosine.
    """
    inv_freq = SINUSOID_MAX_TIMESCALE ** (-jnp.arange(0, width + 1, 2, dtype=jnp.float32) / width)
    angles = positions[..., None].astype(jnp.float32) * inv_freq
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)[..., :width]


def _attention_impl(name: str) -> str | None:
    if name == "auto":
        return None  # jax picks cuDNN flash attention where supported, else XLA.
    if name not in ("xla", "cudnn"):
        raise ValueError(f"model.attention must be 'auto', 'xla' or 'cudnn', got {name!r}.")
    return name


class Block(nn.Module):
    """One residual block: self-attention then MLP."""

    cfg: TransformerConfig

    def setup(self):
        cfg, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
        dense = functools.partial(nn.DenseGeneral, use_bias=False, dtype=dtype)
        self.query = dense((cfg.num_heads, cfg.head_dim), name="query")
        self.key = dense((cfg.num_heads, cfg.head_dim), name="key")
        self.value = dense((cfg.num_heads, cfg.head_dim), name="value")
        self.out = dense(cfg.width, axis=(-2, -1), name="out")
        self.mlp_in = nn.Dense(cfg.mlp_ratio * cfg.width, dtype=dtype, name="mlp_in")
        self.mlp_out = nn.Dense(cfg.width, dtype=dtype, name="mlp_out")
        self.norm_attn = nn.LayerNorm(dtype=dtype, name="norm_attn")
        self.norm_mlp = nn.LayerNorm(dtype=dtype, name="norm_mlp")

    def _qkv(self, x, positions):
        q, k = self.query(x), self.key(x)
        if self.cfg.positions == "rotary":
            q = _rotary(q, positions, self.cfg.rope_base)
            k = _rotary(k, positions, self.cfg.rope_base)
        return q, k, self.value(x)

    def _residual(self, x, attended):
        """Adds the attention output and the MLP, normalising per the configured layout."""
        mlp = lambda h: self.mlp_out(nn.gelu(self.mlp_in(h)))  # noqa: E731
        if self.cfg.norm == "pre":
            x = x + self.out(attended)
            return x + mlp(self.norm_mlp(x))
        x = self.norm_attn(x + self.out(attended))
        return self.norm_mlp(x + mlp(x))

    def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        """Parallel pass over x [batch, length, width]."""
        h = self.norm_attn(x) if self.cfg.norm == "pre" else x
        q, k, v = self._qkv(h, positions)
        attended = jax.nn.dot_product_attention(
            q, k, v, is_causal=True, implementation=_attention_impl(self.cfg.attention)
        )
        return self._residual(x, attended)

    def decode(
        self,
        x: jax.Array,
        index: jax.Array,
        cache_k: jax.Array,
        cache_v: jax.Array,
        kv_length: int | None = None,
    ):
        """One step at position `index` for x [batch, 1, width] against a cache [batch, T, H, D].

        Attention reads only the first `kv_length` cache entries (static; default all), which
        must cover `index`: callers that know how far the cache is filled skip the empty rest.
        """
        h = self.norm_attn(x) if self.cfg.norm == "pre" else x
        positions = jnp.full(x.shape[:2], index, dtype=jnp.int32)
        q, k, v = self._qkv(h, positions)
        cache_k = jax.lax.dynamic_update_slice_in_dim(cache_k, k.astype(cache_k.dtype), index, 1)
        cache_v = jax.lax.dynamic_update_slice_in_dim(cache_v, v.astype(cache_v.dtype), index, 1)
        length = min(kv_length or cache_k.shape[1], cache_k.shape[1])
        keys, values = cache_k[:, :length], cache_v[:, :length]
        filled = jnp.arange(length) <= index  # [length]
        mask = jnp.broadcast_to(filled[None, None, None, :], (x.shape[0], 1, 1, length))
        attended = jax.nn.dot_product_attention(
            q, keys.astype(q.dtype), values.astype(q.dtype), mask=mask, implementation="xla"
        )
        return self._residual(x, attended), cache_k, cache_v


class Transformer(nn.Module):
    """Decoder-only Transformer returning float32 log-probs [batch, length, vocab]."""

    cfg: TransformerConfig

    def setup(self):
        cfg, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
        if cfg.width % cfg.num_heads or cfg.head_dim % 2:
            raise ValueError(
                f"width {cfg.width} must split into {cfg.num_heads} heads of even size."
            )
        if cfg.norm not in ("pre", "post"):
            raise ValueError(f"model.norm must be 'pre' or 'post', got {cfg.norm!r}.")
        if cfg.positions not in ("rotary", "sinusoidal"):
            raise ValueError(
                f"model.positions must be 'rotary' or 'sinusoidal', got {cfg.positions!r}."
            )
        init = nn.initializers.truncated_normal(cfg.emb_init_scale)
        self.embed = nn.Embed(cfg.vocab_size, cfg.width, embedding_init=init, dtype=dtype)
        self.blocks = [Block(cfg, name=f"block_{i}") for i in range(cfg.num_layers)]
        if cfg.norm == "pre":
            self.final_norm = nn.LayerNorm(dtype=dtype)
        self.head = nn.Dense(cfg.vocab_size, dtype=dtype, name="head")

    def _embed(self, tokens, positions):
        """Scaled embeddings of tokens [batch, length], plus sinusoids at `positions` if chosen."""
        h = self.embed(tokens) * jnp.sqrt(jnp.asarray(self.cfg.width, self.embed.dtype))
        if self.cfg.positions == "sinusoidal":
            h = h + _sinusoids(positions, self.cfg.width).astype(h.dtype)
        return h

    def _log_probs(self, h):
        if self.cfg.norm == "pre":
            h = self.final_norm(h)
        return jax.nn.log_softmax(self.head(h).astype(jnp.float32), axis=-1)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """Returns log p(tokens[:, t] | tokens[:, :t]) for all t, shape [batch, length, vocab]."""
        inputs = jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)))  # shift right, token 0 in front
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        h = self._embed(inputs, positions)
        for block in self.blocks:
            h = block(h, positions)
        return self._log_probs(h)

    def decode(
        self, prev_tokens: jax.Array, index: jax.Array, cache: Cache, kv_length: int | None = None
    ):
        """One incremental step.

        Args:
          prev_tokens: [batch] the token at position index-1 (0 at index 0, as in `__call__`).
          index: scalar int32 position whose distribution is returned.
          cache: from `init_cache`.
          kv_length: static bound on the filled cache (> index); attention reads only that much.

        Returns:
          (log-probs [batch, vocab] float32 for position `index`, updated cache).
        """
        h = self._embed(prev_tokens[:, None], jnp.full((prev_tokens.shape[0], 1), index))
        new_cache = {}
        for i, block in enumerate(self.blocks):
            h, k, v = block.decode(h, index, cache[f"k{i}"], cache[f"v{i}"], kv_length)
            new_cache[f"k{i}"], new_cache[f"v{i}"] = k, v
        return self._log_probs(h)[:, 0], new_cache


def token_nll(log_probs: jax.Array, tokens: jax.Array) -> jax.Array:
    """Negative log-likelihood in nats of each token: [batch, length] from log-probs
    [batch, length, vocab] and tokens [batch, length]."""
    return -jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]


def init_cache(cfg: TransformerConfig, batch_size: int, max_length: int | None = None) -> Cache:
    """Returns an empty KV cache: per layer k and v of [batch, max_length, heads, head_dim]."""
    length = max_length or cfg.context_length
    shape = (batch_size, length, cfg.num_heads, cfg.head_dim)
    dtype = jnp.dtype(cfg.dtype)
    return {f"{kind}{i}": jnp.zeros(shape, dtype) for i in range(cfg.num_layers) for kind in "kv"}


def init_params(cfg: TransformerConfig, rng: jax.Array) -> Any:
    """Initialises float32 parameters."""
    tokens = jnp.zeros((1, 8), jnp.int32)
    return Transformer(cfg).init(rng, tokens)["params"]
