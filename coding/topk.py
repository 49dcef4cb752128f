"""The paper's top-k coding with an escape, exact: NumPy and JAX agree bit for bit.

Deletang et al. coded with the top k (k = 100) next-token probabilities an API returned. Here
each token is coded in a fixed number of coder steps, `steps_per_token(vocab) = 1 + D`:

1. Rank step, a table over k + 1 symbols: the k most probable tokens in rank order, then an
   escape. Probabilities become integer weights `w = floor(clip(p, 0, 1) * 2**b)` exactly as in
   `coding.quantize` (`b = min(24, 30 - ceil(log2(k + 1)))`, so the k + 1 weights sum to at
   most 2**30); the top k are the k largest weights, ties broken by the lowest token id
   (`jax.lax.top_k` is stable; NumPy uses a stable argsort: the same order). The escape's weight
   is the mass outside the top k, `max(2**b - sum(top-k weights), 0)`, so top-k tokens keep
   their own probabilities (not renormalised over the top k). With `renormalize=True` the
   escape weight is 0 instead, which renormalises the top k as the paper did. Either way the
   quantiser's `+1` floor keeps the escape codable (probability >= 2**-precision_bits).
2. D digit steps: an escaped token's id in base 2**digit_bits, most significant digit first;
   the first digit has `ceil(vocab / 2**(digit_bits * (D - 1)))` values, the others
   2**digit_bits, each under a uniform table (exact for powers of two). A token in the top k
   codes digit 0 under a near-certain table `[T - n + 1, 1, ..., 1]` (T = 2**precision_bits,
   n symbols), since the coder needs every frequency >= 1: a table with only one symbol is not
   possible at a fixed width.

Charging. A token in the top k costs `-log2(f_rank / T)` plus, per digit step,
`-log2((T - n + 1) / T)` (about `(n - 1) / (T ln 2)` bits; with the default 4-bit digits and
T = 2**16, 0.0011 to 0.0014 bits per token for vocabularies of 32K to 152K). An escaped token
costs the escape symbol `-log2(f_escape / T)` plus its id, `log2(G * 2**(digit_bits * (D - 1)))`
bits for a first digit of G values: `log2(vocab)` plus under 1 bit (0.03 for Llama 2's 32,000
and Llama 3's 128,256 ids, 0.08 for GPT-2's 50,257, 0.37 for Qwen2's 151,936). `is_escape_*`
and `count_escapes_np` report which tokens escaped; `code_length_bits` is the exact cost of the
quantised tables.

All tables come from integer arithmetic after one exactly rounded float product, so encoder
and decoder agree given bit-identical float32 probabilities (the exactness contract in
`coding/__init__.py`). The coder calls go through `_coder`, the range coder.
"""

import dataclasses
import math
from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np

from coding import quantize
from coding import range_coder as _coder

DEFAULT_K = 100
DEFAULT_DIGIT_BITS = 4


def num_digits(vocab: int, digit_bits: int = DEFAULT_DIGIT_BITS) -> int:
    """Digit steps that code an id of a `vocab`-symbol alphabet: `ceil(log2(vocab) / bits)`."""
    return max(1, -(-math.ceil(math.log2(vocab)) // digit_bits)) if vocab > 1 else 1


def steps_per_token(vocab: int, digit_bits: int = DEFAULT_DIGIT_BITS) -> int:
    """Coder steps per token: the rank step and the digit steps (pass `tokens * this` as the
    decoder's num_steps)."""
    return 1 + num_digits(vocab, digit_bits)


def digit_sizes(vocab: int, digit_bits: int = DEFAULT_DIGIT_BITS) -> list[int]:
    """Alphabet sizes of the digit steps, most significant first."""
    count = num_digits(vocab, digit_bits)
    low_bits = digit_bits * (count - 1)
    return [-(-vocab // (1 << low_bits))] + [1 << digit_bits] * (count - 1)


def check_topk(vocab: int, k: int, precision_bits: int, digit_bits: int) -> None:
    """Validates a top-k layout.

    Raises:
      ValueError: k outside [1, vocab], or a table (k + 1 symbols, 2**digit_bits) that does not
        fit one table at `precision_bits` (`quantize.check_table_shape`).
    """
    if not 1 <= k <= vocab:
        raise ValueError(f"k={k} must lie in [1, vocab={vocab}]")
    if not 1 <= digit_bits < precision_bits:
        raise ValueError(f"digit_bits={digit_bits} must lie in [1, precision_bits)")
    quantize.check_table_shape(k + 1, precision_bits)
    quantize.check_table_shape(max(digit_sizes(vocab, digit_bits)), precision_bits)


@dataclasses.dataclass(frozen=True)
class TopK:
    """A top-k layout (hashable: a static argument of a jitted function).

    Attributes:
      k: ranks kept.
      precision_bits: log2 of every table's total.
      digit_bits: bits per digit of an escaped id.
      renormalize: give the escape only the quantiser's floor (the paper's renormalised top k).
    """

    k: int = DEFAULT_K
    precision_bits: int = 16
    digit_bits: int = DEFAULT_DIGIT_BITS
    renormalize: bool = False

    def check(self, vocab: int) -> None:
        """`check_topk` for this layout and a `vocab`-symbol alphabet."""
        check_topk(vocab, self.k, self.precision_bits, self.digit_bits)


def _weight_bits(k: int) -> int:
    return min(24, 30 - math.ceil(math.log2(k + 1)))


def _top_k(probs, k: int, xp: ModuleType):
    """Returns (weights uint32 [..., k], ids int32 [..., k]) of the k largest weights."""
    weights = quantize.probs_to_weights(probs, _weight_bits(k), xp)
    if xp is np:
        ids = np.argsort(-weights.astype(np.int64), axis=-1, kind="stable")[..., :k]
        return np.take_along_axis(weights, ids, axis=-1), ids.astype(np.int32)
    values, ids = jax.lax.top_k(weights.astype(jnp.int32), k)  # stable: lowest id first
    return values.astype(jnp.uint32), ids.astype(jnp.int32)


def _rank_table(top_weights, precision_bits: int, renormalize: bool, xp: ModuleType):
    """Frequency table [..., k + 1]: the top k in rank order, then the escape."""
    k = top_weights.shape[-1]
    total = 1 << _weight_bits(k)
    kept = xp.sum(top_weights, axis=-1, dtype=xp.uint32)  # <= k * total < 2**30
    rest = xp.where(kept < total, xp.uint32(total) - kept, xp.uint32(0))
    escape = xp.zeros_like(rest) if renormalize else rest
    weights = xp.concatenate([top_weights, escape[..., None]], axis=-1)
    return quantize.quantize_weights(weights, precision_bits, xp)


def _digit_table(size: int, escaped, precision_bits: int, xp: ModuleType):
    """Uniform table [..., size] where escaped, else near-certain of symbol 0.

    Both are constants (quantised once in NumPy at trace time), so the step only selects.
    """
    certain = np.zeros(size, np.uint32)
    certain[0] = 1
    uniform = quantize.quantize_weights(np.ones(size, np.uint32), precision_bits, np)
    certain = quantize.quantize_weights(certain, precision_bits, np)
    return xp.where(escaped[..., None], xp.asarray(uniform), xp.asarray(certain))


def _digits(tokens, vocab: int, digit_bits: int):
    """Splits ids into digits, most significant first (NumPy or JAX arrays)."""
    count = num_digits(vocab, digit_bits)
    mask = (1 << digit_bits) - 1
    shifts = [digit_bits * (count - 1 - j) for j in range(count)]
    return [tokens >> shifts[0]] + [(tokens >> s) & mask for s in shifts[1:]]


def _tables_and_symbols(probs, tokens, layout: TopK, xp: ModuleType):
    """Each step's table and symbol: [(table [..., n], symbol [...])] x steps."""
    k, precision_bits, digit_bits = layout.k, layout.precision_bits, layout.digit_bits
    top_weights, top_ids = _top_k(probs, k, xp)
    match = top_ids == tokens[..., None]
    escaped = ~xp.any(match, axis=-1)
    rank = xp.where(escaped, k, xp.argmax(match, axis=-1))
    steps = [(_rank_table(top_weights, precision_bits, layout.renormalize, xp), rank)]
    vocab = probs.shape[-1]
    safe = xp.clip(tokens, 0, vocab - 1)
    sizes = digit_sizes(vocab, digit_bits)
    for size, digit in zip(sizes, _digits(safe, vocab, digit_bits), strict=True):
        table = _digit_table(size, escaped, precision_bits, xp)
        steps.append((table, xp.where(escaped, digit, 0)))
    return steps


def intervals_np(probs, tokens, layout: TopK = TopK()):
    """Coder intervals of tokens under top-k coding with an escape (NumPy reference).

    Args:
      probs: float [..., vocab] probabilities (cast to float32).
      tokens: int [...] ids in [0, vocab).
      layout: k, table precision, digit width and escape mode.

    Returns:
      (starts, freqs): uint32 [..., steps_per_token(vocab)]; for the coder, reshape a chunk's
      [batch, tokens, steps] to [batch, tokens * steps] (coding order).

    Raises:
      ValueError: a token outside the vocabulary or an invalid layout (`check_topk`).
    """
    probs = np.asarray(probs, np.float32)
    tokens = np.asarray(tokens, np.int64)
    vocab = probs.shape[-1]
    layout.check(vocab)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab):
        bad = tokens[(tokens < 0) | (tokens >= vocab)].flat[0]
        raise ValueError(f"token {bad} is outside the alphabet [0, {vocab})")
    steps = _tables_and_symbols(probs, tokens, layout, np)
    pairs = [_coder.symbol_intervals_np(t, s, layout.precision_bits) for t, s in steps]
    return np.stack([p[0] for p in pairs], -1), np.stack([p[1] for p in pairs], -1)


def intervals_jax(probs, tokens, layout: TopK = TopK()):
    """JAX version of `intervals_np` (jittable; `layout` static). A token outside the
    vocabulary gets freq 0 on its first step, which the coder's encoder reports."""
    probs = jnp.asarray(probs, jnp.float32)
    tokens = jnp.asarray(tokens, jnp.int32)
    vocab = probs.shape[-1]
    layout.check(vocab)
    steps = _tables_and_symbols(probs, tokens, layout, jnp)
    pairs = [_coder.symbol_intervals_jax(t, s, layout.precision_bits) for t, s in steps]
    starts = jnp.stack([p[0] for p in pairs], -1)
    freqs = jnp.stack([p[1] for p in pairs], -1)
    valid = (tokens >= 0) & (tokens < vocab)
    return starts, freqs.at[..., 0].set(jnp.where(valid, freqs[..., 0], 0))


def _decode_step(state, probs, layout: TopK, xp: ModuleType, decode):
    """Shared body of `decode_step_np` / `decode_step_jax`."""
    vocab, k, bits = probs.shape[-1], layout.k, layout.precision_bits
    layout.check(vocab)
    top_weights, top_ids = _top_k(probs, k, xp)
    rank, state = decode(state, _rank_table(top_weights, bits, layout.renormalize, xp))
    rank = xp.minimum(xp.asarray(rank, xp.int32), k)
    escaped = rank == k
    token = xp.zeros_like(rank)
    for j, size in enumerate(digit_sizes(vocab, layout.digit_bits)):
        digit, state = decode(state, _digit_table(size, escaped, bits, xp))
        width = 0 if j == 0 else layout.digit_bits
        token = (token << width) | xp.asarray(digit, xp.int32)
    in_top = xp.take_along_axis(top_ids, xp.minimum(rank, k - 1)[..., None], axis=-1)[..., 0]
    token = xp.where(escaped, xp.minimum(token, vocab - 1), in_top)
    return token.astype(xp.int32), state


def decode_step_np(state, probs, layout: TopK = TopK()):
    """Decodes one token per chunk (`steps_per_token` coder steps) (NumPy reference).

    Args:
      state: the coder's decoder state, num_steps = tokens * steps_per_token(vocab).
      probs: float [batch, vocab] probabilities for this token (the encoder's, bit for bit).
      layout: as in `intervals_np`.

    Returns:
      (tokens int32 [batch], state).
    """
    decode = lambda s, table: _coder.decode_step_np(s, table, layout.precision_bits)  # noqa: E731
    return _decode_step(state, np.asarray(probs, np.float32), layout, np, decode)


def decode_step_jax(state, probs, layout: TopK = TopK()):
    """JAX version of `decode_step_np`; use inside a jitted scan (`layout` static)."""
    decode = lambda s, table: _coder.decode_step_jax(s, table, layout.precision_bits)  # noqa: E731
    return _decode_step(state, jnp.asarray(probs, jnp.float32), layout, jnp, decode)


def is_escape_np(probs, tokens, k: int = DEFAULT_K) -> np.ndarray:
    """Whether each token falls outside the top k (coded through the escape).

    Args:
      probs: float [..., vocab].
      tokens: int [...].
      k: ranks kept.

    Returns:
      bool [...].
    """
    _, top_ids = _top_k(np.asarray(probs, np.float32), k, np)
    return ~np.any(top_ids == np.asarray(tokens)[..., None], axis=-1)


def is_escape_jax(probs, tokens, k: int = DEFAULT_K) -> jax.Array:
    """JAX version of `is_escape_np` (jittable, static k)."""
    _, top_ids = _top_k(jnp.asarray(probs, jnp.float32), k, jnp)
    return ~jnp.any(top_ids == jnp.asarray(tokens)[..., None], axis=-1)


def count_escapes_np(probs, tokens, k: int = DEFAULT_K, lengths=None) -> np.ndarray:
    """Escapes per chunk.

    Args:
      probs: float [batch, tokens, vocab].
      tokens: int [batch, tokens].
      k: ranks kept.
      lengths: int [batch] valid tokens per chunk (default: all).

    Returns:
      int64 [batch].
    """
    escaped = is_escape_np(probs, tokens, k)
    if lengths is not None:
        escaped &= np.arange(escaped.shape[-1]) < np.asarray(lengths)[:, None]
    return escaped.sum(-1)


def code_length_bits(freqs, precision_bits: int = 16) -> np.ndarray:
    """Ideal code length of coded steps: sum of `precision_bits - log2(freq)` over the last axis.

    Args:
      freqs: int [..., steps] interval sizes (from `intervals_*`).
      precision_bits: log2 of the table total.

    Returns:
      float64 [...] bits.
    """
    return (precision_bits - np.log2(np.asarray(freqs, np.float64))).sum(-1)
