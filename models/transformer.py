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

On accelerators: `dtype='auto'` computes in bfloat16 on a GPU or TPU and float32 on a CPU
(`compute_dtype`; parameters stay float32, log-softmax is float32); `attention='auto'` takes
cuDNN's flash attention on a GPU where dtype and shapes allow it, else XLA's
(`attention_implementation`). The input embedding is a one-hot product for vocabularies up to
4,096 symbols, so its gradient is a matrix product instead of a scatter-add of every position
into a few rows (atomics, and run-to-run differences on a GPU); values are unchanged. The KV
cache of the decoding step is laid out [batch, heads, length, head_dim], the order its
attention reads, in the compute dtype, bfloat16 or int8 with a scale per entry (`init_cache`).
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


ONE_HOT_MAX_VOCAB = 4096
KV_DTYPES = ("", "float32", "bfloat16", "int8")


def compute_dtype(name: str, backend: str | None = None) -> jnp.dtype:
    """The compute dtype of `model.dtype`: 'auto' is bfloat16 on a GPU or TPU, float32 on a CPU.

    Raises:
      ValueError: an unknown name.
    """
    if name == "auto":
        backend = backend or jax.default_backend()
        return jnp.dtype(jnp.bfloat16 if backend in ("gpu", "cuda", "rocm", "tpu") else jnp.float32)
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"model.dtype must be auto, float32, bfloat16 or float16, got {name!r}.")
    return jnp.dtype(name)


def attention_implementation(
    name: str, dtype: jnp.dtype, head_dim: int, backend: str | None = None
) -> str:
    """What `model.attention` means here: 'auto' is cuDNN flash attention on a GPU when the dtype
    (bfloat16 or float16) and head size (a multiple of 8, at most 128) allow it, else XLA.

    Raises:
      ValueError: an unknown name.
    """
    if name not in ("auto", "xla", "cudnn"):
        raise ValueError(f"model.attention must be 'auto', 'xla' or 'cudnn', got {name!r}.")
    if name != "auto":
        return name
    backend = backend or jax.default_backend()
    fits = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0
    return "cudnn" if backend in ("gpu", "cuda") and fits and head_dim <= 128 else "xla"


class Block(nn.Module):
    """One residual block: self-attention then MLP."""

    cfg: TransformerConfig

    def setup(self):
        cfg, dtype = self.cfg, compute_dtype(self.cfg.dtype)
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
        implementation = attention_implementation(self.cfg.attention, q.dtype, q.shape[-1])
        attended = jax.nn.dot_product_attention(
            q, k, v, is_causal=True, implementation=implementation
        )
        return self._residual(x, attended)

    def decode(self, x: jax.Array, index: jax.Array, cache: Cache, kv_length: int | None = None):
        """One step at position `index` for x [batch, 1, width] against this block's cache.

        Args:
          x: [batch, 1, width].
          index: scalar position.
          cache: {'k', 'v'} [batch, heads, length, head_dim] (and their int8 scales 'ks', 'vs'
            [batch, heads, length], see `init_cache`).
          kv_length: attention reads only the first `kv_length` entries (static; default all),
            which must cover `index`: callers that know how far the cache is filled skip the
            empty rest.

        Returns:
          (the block's output [batch, 1, width], the updated cache).
        """
        h = self.norm_attn(x) if self.cfg.norm == "pre" else x
        positions = jnp.full(x.shape[:2], index, dtype=jnp.int32)
        q, k, v = self._qkv(h, positions)  # [batch, 1, heads, head_dim]
        cache = dict(cache)
        for name, new in (("k", k), ("v", v)):
            row = jnp.swapaxes(new, 1, 2)  # [batch, heads, 1, head_dim]
            if cache[name].dtype == jnp.int8:
                scale = jnp.max(jnp.abs(row.astype(jnp.float32)), axis=-1) / 127.0
                quantised = jnp.round(
                    row.astype(jnp.float32) / jnp.maximum(scale, 1e-30)[..., None]
                )
                row = quantised.astype(jnp.int8)
                cache[name + "s"] = jax.lax.dynamic_update_slice_in_dim(
                    cache[name + "s"], scale, index, 2
                )
            cache[name] = jax.lax.dynamic_update_slice_in_dim(
                cache[name], row.astype(cache[name].dtype), index, 2
            )
        length = min(kv_length or cache["k"].shape[2], cache["k"].shape[2])
        keys, values = (self._read(cache, name, length, q.dtype) for name in ("k", "v"))
        scores = jnp.einsum(
            "bhd,bhld->bhl", q[:, 0], keys, preferred_element_type=jnp.float32
        ) / jnp.sqrt(jnp.float32(q.shape[-1]))
        scores = jnp.where(jnp.arange(length) <= index, scores, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1).astype(values.dtype)
        attended = jnp.einsum("bhl,bhld->bhd", weights, values)[:, None]
        return self._residual(x, attended), cache

    @staticmethod
    def _read(cache: Cache, name: str, length: int, dtype) -> jax.Array:
        """The first `length` entries of a cache, in the compute dtype."""
        stored = cache[name][:, :, :length]
        if stored.dtype == jnp.int8:
            scale = cache[name + "s"][:, :, :length, None]
            return (stored.astype(jnp.float32) * scale).astype(dtype)
        return stored.astype(dtype)


class Transformer(nn.Module):
    """Decoder-only Transformer returning float32 log-probs [batch, length, vocab]."""

    cfg: TransformerConfig

    def setup(self):
        cfg, dtype = self.cfg, compute_dtype(self.cfg.dtype)
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
        """Scaled embeddings of tokens [batch, length], plus sinusoids at `positions` if chosen.

        Small vocabularies look up by a one-hot product: the same values, and a gradient that is
        a matrix product rather than a scatter-add (deterministic on a GPU).
        """
        dtype = self.embed.dtype
        if self.cfg.vocab_size <= ONE_HOT_MAX_VOCAB:
            one_hot = jax.nn.one_hot(tokens, self.cfg.vocab_size, dtype=dtype)
            h = one_hot @ self.embed.embedding.astype(dtype)
        else:
            h = self.embed(tokens)
        h = h * jnp.sqrt(jnp.asarray(self.cfg.width, dtype))
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
            mine = {name: cache[f"{name}{i}"] for name in _CACHE_ENTRIES if f"{name}{i}" in cache}
            h, mine = block.decode(h, index, mine, kv_length)
            new_cache.update({f"{name}{i}": value for name, value in mine.items()})
        return self._log_probs(h)[:, 0], new_cache


def token_nll(log_probs: jax.Array, tokens: jax.Array) -> jax.Array:
    """Negative log-likelihood in nats of each token: [batch, length] from log-probs
    [batch, length, vocab] and tokens [batch, length].

    A gather, as optax's `softmax_cross_entropy_with_integer_labels` is (0.2.x computes it with
    the same `take_along_axis`): its gradient scatters one value into each row, so no two updates
    meet and the result is deterministic on a GPU, unlike the embedding's many-to-one scatter
    that the one-hot lookup of small vocabularies avoids."""
    return -jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]


_CACHE_ENTRIES = ("k", "v", "ks", "vs")


def init_cache(
    cfg: TransformerConfig, batch_size: int, max_length: int | None = None, kv_dtype: str = ""
) -> Cache:
    """Returns an empty KV cache for `Transformer.decode`.

    Args:
      cfg: the model.
      batch_size: rows.
      max_length: positions (default the context).
      kv_dtype: '' for the compute dtype, 'float32', 'bfloat16', or 'int8' (with a float32
        scale per entry: 'ks{i}', 'vs{i}' [batch, heads, length]).

    Returns:
      Per layer i, 'k{i}' and 'v{i}' of [batch, heads, max_length, head_dim].

    Raises:
      ValueError: an unknown kv_dtype.
    """
    if kv_dtype not in KV_DTYPES:
        raise ValueError(f"kv_dtype must be one of {KV_DTYPES}, got {kv_dtype!r}.")
    length = max_length or cfg.context_length
    shape = (batch_size, cfg.num_heads, length, cfg.head_dim)
    dtype = jnp.dtype(kv_dtype) if kv_dtype else compute_dtype(cfg.dtype)
    cache = {f"{kind}{i}": jnp.zeros(shape, dtype) for i in range(cfg.num_layers) for kind in "kv"}
    if kv_dtype == "int8":
        for i in range(cfg.num_layers):
            cache[f"ks{i}"] = jnp.zeros(shape[:3], jnp.float32)
            cache[f"vs{i}"] = jnp.zeros(shape[:3], jnp.float32)
    return cache


def init_params(cfg: TransformerConfig, rng: jax.Array) -> Any:
    """Initialises float32 parameters."""
    tokens = jnp.zeros((1, 8), jnp.int32)
    return Transformer(cfg).init(rng, tokens)["params"]
