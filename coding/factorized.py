"""Exact coding of large alphabets (BPE vocabularies, up to 65,536 symbols) in two steps.

A token `s` is split into `high = s >> low_bits` and `low = s & (2**low_bits - 1)` and coded as
two range-coder steps: `high` with a table over the `ceil(vocab / 2**low_bits)` groups, then
`low` with a table over the `2**low_bits` members of the chosen group. Both tables come from the
same float probabilities through integer arithmetic only:

* integer weights `w = floor(clip(p, 0, 1) * 2**k)` per token, exactly as in `coding.quantize`,
  with `k = min(24, 30 - low_bits)` so that one group's weights sum to at most 2**30;
* the high table quantises the group sums (each clipped to `2**k`, i.e. probability 1, so their
  total is also at most 2**30);
* the low table quantises the chosen group's own weights.

Integer sums are exact and order independent, so NumPy and JAX agree by construction, and the
decoder needs only the high symbol it has just decoded to build the low table. If `vocab` is not
a multiple of `2**low_bits`, the last group is padded with zero-probability members; they still
get frequency 1 (a cost of at most `2**low_bits / 2**precision_bits` of that group's low step)
and are never produced from a valid stream (a corrupted one is clamped to `vocab - 1`).
"""

from types import ModuleType

import jax.numpy as jnp
import numpy as np

from coding import quantize, range_coder

DEFAULT_LOW_BITS = 8
STEPS_PER_TOKEN = 2  # Coder steps per token: pass `2 * num_tokens` as the decoder's num_steps.


def num_groups(vocab: int, low_bits: int = DEFAULT_LOW_BITS) -> int:
    """Returns the size of the high alphabet, `ceil(vocab / 2**low_bits)`."""
    return -(-vocab // (1 << low_bits))


def check_factorization(vocab: int, precision_bits: int, low_bits: int) -> None:
    """Validates a factorisation of a `vocab`-symbol alphabet.

    Args:
        vocab: alphabet size.
        precision_bits: log2 of the table total.
        low_bits: bits of the low part.

    Raises:
        ValueError: both parts' alphabets must fit one table (`coding.quantize.max_vocab`) and
            `vocab <= 2**(2 * low_bits)`.
    """
    if vocab < 1 or vocab > 1 << (2 * low_bits):
        raise ValueError(
            f"vocab={vocab} must lie in [1, 2**(2*low_bits) = {1 << (2 * low_bits)}]; "
            "raise low_bits"
        )
    quantize.check_table_shape(1 << low_bits, precision_bits)
    quantize.check_table_shape(num_groups(vocab, low_bits), precision_bits)


def _weight_bits(low_bits: int) -> int:
    return min(24, 30 - low_bits)


def split_tokens(tokens, low_bits: int = DEFAULT_LOW_BITS):
    """Splits tokens into `(high, low)` parts (NumPy or JAX arrays, same shape)."""
    return tokens >> low_bits, tokens & ((1 << low_bits) - 1)


def merge_tokens(high, low, low_bits: int = DEFAULT_LOW_BITS):
    """Inverse of `split_tokens`."""
    return (high << low_bits) | low


def _grouped_weights(probs, low_bits: int, xp: ModuleType):
    """Returns uint32 weights `[..., groups, 2**low_bits]`, zero padded."""
    vocab = probs.shape[-1]
    weights = quantize.probs_to_weights(probs, _weight_bits(low_bits), xp)
    pad = num_groups(vocab, low_bits) * (1 << low_bits) - vocab
    weights = xp.pad(weights, [(0, 0)] * (weights.ndim - 1) + [(0, pad)])
    return weights.reshape(weights.shape[:-1] + (-1, 1 << low_bits))


def _high_freqs(probs, precision_bits: int, low_bits: int, xp: ModuleType):
    check_factorization(probs.shape[-1], precision_bits, low_bits)
    grouped = _grouped_weights(probs, low_bits, xp)
    sums = xp.sum(grouped, axis=-1, dtype=xp.uint32)
    sums = xp.minimum(sums, xp.uint32(1 << _weight_bits(low_bits)))
    return quantize.quantize_weights(sums, precision_bits, xp)


def _low_freqs(probs, high, precision_bits: int, low_bits: int, xp: ModuleType):
    check_factorization(probs.shape[-1], precision_bits, low_bits)
    grouped = _grouped_weights(probs, low_bits, xp)
    index = xp.clip(xp.asarray(high, dtype=xp.int32), 0, grouped.shape[-2] - 1)
    members = xp.take_along_axis(grouped, index[..., None, None], axis=-2)[..., 0, :]
    return quantize.quantize_weights(members, precision_bits, xp)


def high_freqs_np(probs, precision_bits: int = 16, low_bits: int = DEFAULT_LOW_BITS):
    """Table of the high part (NumPy).

    Args:
        probs: float `[..., vocab]` probabilities (cast to float32).
        precision_bits: log2 of the table total.
        low_bits: bits of the low part.

    Returns:
        int32 `[..., num_groups(vocab)]` valid frequency table, identical to `high_freqs_jax`.

    Raises:
        ValueError: see `check_factorization`.
    """
    return _high_freqs(np.asarray(probs, np.float32), precision_bits, low_bits, np)


def high_freqs_jax(probs, precision_bits: int = 16, low_bits: int = DEFAULT_LOW_BITS):
    """JAX version of `high_freqs_np` (jittable; static `precision_bits`, `low_bits`)."""
    return _high_freqs(jnp.asarray(probs, jnp.float32), precision_bits, low_bits, jnp)


def low_freqs_np(probs, high, precision_bits: int = 16, low_bits: int = DEFAULT_LOW_BITS):
    """Table of the low part given the high part (NumPy).

    Args:
        probs: float `[..., vocab]` probabilities (cast to float32).
        high: integer `[...]` high parts (clipped to the valid groups).
        precision_bits: log2 of the table total.
        low_bits: bits of the low part.

    Returns:
        int32 `[..., 2**low_bits]` valid frequency table, identical to `low_freqs_jax`.

    Raises:
        ValueError: see `check_factorization`.
    """
    return _low_freqs(np.asarray(probs, np.float32), high, precision_bits, low_bits, np)


def low_freqs_jax(probs, high, precision_bits: int = 16, low_bits: int = DEFAULT_LOW_BITS):
    """JAX version of `low_freqs_np` (jittable; static `precision_bits`, `low_bits`)."""
    return _low_freqs(jnp.asarray(probs, jnp.float32), high, precision_bits, low_bits, jnp)


def _interleave(high_part, low_part, xp: ModuleType):
    """`[batch, tokens]` x 2 -> `[batch, 2 * tokens]` with high before low for each token."""
    return xp.stack([high_part, low_part], axis=-1).reshape(high_part.shape[:-1] + (-1,))


def intervals_np(probs, tokens, precision_bits: int = 16, low_bits: int = DEFAULT_LOW_BITS):
    """Coder intervals of a batch of tokens through the factorised path (NumPy).

    Args:
        probs: float `[batch, tokens, vocab]` probabilities.
        tokens: integer `[batch, tokens]` token ids in `[0, vocab)`.
        precision_bits: log2 of the table total.
        low_bits: bits of the low part.

    Returns:
        `(starts, freqs)`: uint32 `[batch, 2 * tokens]` for `range_coder.encode_np` or
        `encode_jax`, with lengths `2 * num_tokens` per chunk.

    Raises:
        ValueError: a token outside `[0, vocab)` or an invalid factorisation.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    vocab = np.shape(probs)[-1]
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab):
        bad = tokens[(tokens < 0) | (tokens >= vocab)].flat[0]
        raise ValueError(f"token {bad} is outside the alphabet [0, {vocab})")
    high, low = split_tokens(tokens, low_bits)
    high_start, high_freq = range_coder.symbol_intervals_np(
        high_freqs_np(probs, precision_bits, low_bits), high, precision_bits
    )
    low_start, low_freq = range_coder.symbol_intervals_np(
        low_freqs_np(probs, high, precision_bits, low_bits), low, precision_bits
    )
    return _interleave(high_start, low_start, np), _interleave(high_freq, low_freq, np)


def intervals_jax(probs, tokens, precision_bits: int = 16, low_bits: int = DEFAULT_LOW_BITS):
    """JAX version of `intervals_np` (jittable); invalid tokens get `freq == 0` (see
    `range_coder.symbol_intervals_jax`), which `range_coder.encode_jax` reports."""
    tokens = jnp.asarray(tokens, dtype=jnp.int32)
    vocab = probs.shape[-1]
    in_range = (tokens >= 0) & (tokens < vocab)
    high, low = split_tokens(jnp.clip(tokens, 0, vocab - 1), low_bits)
    high_start, high_freq = range_coder.symbol_intervals_jax(
        high_freqs_jax(probs, precision_bits, low_bits), high, precision_bits
    )
    low_start, low_freq = range_coder.symbol_intervals_jax(
        low_freqs_jax(probs, high, precision_bits, low_bits), low, precision_bits
    )
    high_freq = jnp.where(in_range, high_freq, 0)
    return _interleave(high_start, low_start, jnp), _interleave(high_freq, low_freq, jnp)


def decode_step_np(state, probs, precision_bits: int = 16, low_bits: int = DEFAULT_LOW_BITS):
    """Decodes one token per chunk (two coder steps) from the model's probabilities (NumPy).

    Args:
        state: `range_coder.DecoderState` whose `num_steps` are `2 * num_tokens`.
        probs: float `[batch, vocab]` probabilities for this token.
        precision_bits: log2 of the table total.
        low_bits: bits of the low part.

    Returns:
        `(tokens, state)`: int32 `[batch]` and the new state.
    """
    vocab = np.shape(probs)[-1]
    high_table = high_freqs_np(probs, precision_bits, low_bits)
    high, state = range_coder.decode_step_np(state, high_table, precision_bits)
    low_table = low_freqs_np(probs, high, precision_bits, low_bits)
    low, state = range_coder.decode_step_np(state, low_table, precision_bits)
    return np.minimum(merge_tokens(high, low, low_bits), vocab - 1).astype(np.int32), state


def decode_step_jax(state, probs, precision_bits: int = 16, low_bits: int = DEFAULT_LOW_BITS):
    """JAX version of `decode_step_np`; use inside a jitted scan (static bits arguments)."""
    vocab = probs.shape[-1]
    high_table = high_freqs_jax(probs, precision_bits, low_bits)
    high, state = range_coder.decode_step_jax(state, high_table, precision_bits)
    low_table = low_freqs_jax(probs, high, precision_bits, low_bits)
    low, state = range_coder.decode_step_jax(state, low_table, precision_bits)
    return jnp.minimum(merge_tokens(high, low, low_bits), vocab - 1), state
