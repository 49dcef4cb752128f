"""Probabilities to integer frequency tables, identically in NumPy and JAX.

`quantize_np` and `quantize_jax` are the same function written once (`_quantize`, generic over
the array module). Both encoder and decoder must call one of them on bit-identical float32
probabilities; they then get bit-identical tables. The algorithm uses a single exactly rounded
float operation, a multiplication by a power of two, and exact integer results from then on:

1. Sanitise: NaN, negative values and -0.0 become 0; values above 1 (and +inf) become 1.
2. Integer weights `w = floor(p * 2**weight_bits)`. Multiplying a float32 by a power of two is
   exact; `weight_bits` is chosen so that the weights of one table sum to at most 2**30.
   Subnormal inputs give weight 0 whether or not the backend flushes them to zero.
3. Normalise in integers: `g = floor(w * M / sum(w))` with `M = 2**precision_bits - vocab`,
   computed exactly by binary long division in uint32 (no 64-bit integers needed), or, by JAX
   on a CPU, by one float64 division whose quotient integer checks correct to the exact floor
   (`_floor_mul_div_float64`: the same integers, in fewer operations). If all weights are 0
   the table is uniform.
4. The remainder `M - sum(g)` (between 0 and vocab - 1) goes to the symbol with the largest
   weight, the lowest index on ties; then every symbol gets `+1`, so each frequency is >= 1 and
   the total is exactly `2**precision_bits`.

Probabilities need not sum to 1 (they are renormalised exactly), which absorbs the small float
errors of a softmax. Log-probabilities are not accepted: `exp` is not exactly rounded and
differs between backends, so the caller exponentiates inside the same compiled step that
produces the probabilities (e.g. `jax.nn.softmax(logits)`) on both the encoder and decoder side.

Not a library's quantiser (constriction's, TensorFlow Compression's): those round in floats as
their backend does, and this contract needs bit-identical integer tables on every machine.
"""

import math
from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_PRECISION_BITS = 16
MAX_PRECISION_BITS = 16  # the range coder's uint32 scaling and 2-bytes-per-step bound need it.
_WEIGHT_SUM_BITS = 30  # Per-table weight sums are at most 2**30, so 3 * sum fits in uint32.
_MAX_WEIGHT_BITS = 24  # Weight resolution 2**-24, far finer than the 2**-16 table resolution.


def max_vocab(precision_bits: int = DEFAULT_PRECISION_BITS) -> int:
    """Returns the largest alphabet one table may have: half the total frequency.

    Above this, more than half the probability mass would go to the `+1` floor of unlikely
    symbols; larger alphabets must be factorised (see `coding.factorized`).

    Args:
        precision_bits: log2 of the table total.

    Returns:
        `2**(precision_bits - 1)`.
    """
    return 1 << (precision_bits - 1)


def check_table_shape(vocab: int, precision_bits: int) -> None:
    """Validates an alphabet size and a precision.

    Args:
        vocab: number of symbols in one table.
        precision_bits: log2 of the table total.

    Raises:
        ValueError: precision outside [1, 16] or vocab outside [1, 2**(precision_bits - 1)].
    """
    if not isinstance(precision_bits, int) or not 1 <= precision_bits <= MAX_PRECISION_BITS:
        raise ValueError(
            f"precision_bits={precision_bits!r} must be an int in [1, {MAX_PRECISION_BITS}]"
        )
    limit = max_vocab(precision_bits)
    if not 1 <= vocab <= limit:
        raise ValueError(
            f"vocab={vocab} symbols does not fit one table at precision_bits={precision_bits} "
            f"(at most {limit}); factorise the alphabet with coding.factorized, or raise "
            f"precision_bits (at most {MAX_PRECISION_BITS})"
        )


def weight_bits(vocab: int) -> int:
    """Returns the number of fractional bits of the integer weights for a table of `vocab`.

    Args:
        vocab: number of symbols in the table.

    Returns:
        `k` such that `vocab * 2**k <= 2**30` (at most 24).
    """
    return min(_MAX_WEIGHT_BITS, _WEIGHT_SUM_BITS - math.ceil(math.log2(vocab)))


def probs_to_weights(probs, bits: int, xp: ModuleType):
    """Turns float probabilities into integer weights `floor(clip(p, 0, 1) * 2**bits)`.

    Args:
        probs: float array `[..., vocab]`; cast to float32 first.
        bits: fractional bits of the weights (at most 29).
        xp: `numpy` or `jax.numpy`.

    Returns:
        uint32 array `[..., vocab]`, each entry in [0, 2**bits].
    """
    p = xp.asarray(probs, dtype=xp.float32)
    # `p > 0` is False for NaN, so NaN, negatives and -0.0 all become exactly 0.
    p = xp.where(p > 0, p, xp.float32(0))
    p = xp.minimum(p, xp.float32(1))
    # A product with a power of two is exact, so floor() sees the same value on every backend.
    return xp.floor(p * xp.float32(2.0**bits)).astype(xp.uint32)


def _floor_mul_div(w, total, m: int, m_bits: int, xp: ModuleType):
    """Computes `floor(w * m / total)` exactly: by binary long division in uint32, or, by JAX on
    a CPU, by `_floor_mul_div_float64` (`jax.lax.platform_dependent`), the same integers.

    Args:
        w: uint32 `[..., vocab]`, each `w <= total`.
        total: uint32 `[..., 1]`, `0 < total <= 2**30`.
        m: Python int multiplier, `0 <= m < 2**m_bits`.
        m_bits: number of bits of `m` to process.
        xp: `numpy` or `jax.numpy`.

    Returns:
        uint32 `[..., vocab]` quotient.
    """
    if xp is np:
        return _long_division(w, total, m, m_bits, np)
    return jax.lax.platform_dependent(
        w, total,
        cpu=lambda w, total: _floor_mul_div_float64(w, total, m),
        default=lambda w, total: _long_division(w, total, m, m_bits, jnp),
    )  # fmt: skip


def _floor_mul_div_float64(w: jax.Array, total: jax.Array, m: int) -> jax.Array:
    """`_floor_mul_div` through one float64 division, exact.

    `w * m < 2**46` and `total <= 2**30` are integers float64 holds exactly, and so are the
    products `q * total` and `(q + 1) * total` of any q below 2**17 checked below. The rounded
    quotient is within 2**-36 of the true one (below 2**16), so its floor is the exact floor or
    one more (a quotient just under an integer rounded up to it); `q * total > w * m` finds that
    case and takes 1 off, and the symmetric check adds 1 should a division ever round down
    across an integer. Every comparison is between exact values: the result is the exact floor
    on any IEEE-754 machine (tests/coding_quantize_test.py tries quotients on either side of
    integers against Python's).
    """
    with jax.enable_x64(True):
        num = w.astype(jnp.float64) * float(m)
        den = total.astype(jnp.float64)
        q = jnp.floor(num / den)
        q = q - (q * den > num)
        q = q + ((q + 1) * den <= num)
        return q.astype(jnp.uint32)


def _long_division(w, total, m: int, m_bits: int, xp: ModuleType):
    """`_floor_mul_div` by binary long division in uint32."""
    quotient = xp.zeros_like(w)
    remainder = xp.zeros_like(w)
    # Invariant: quotient * total + remainder == w * (bits of m seen so far), remainder < total.
    for i in reversed(range(m_bits)):
        quotient = quotient << 1
        remainder = remainder << 1
        bit = (m >> i) & 1
        if bit:
            remainder = remainder + w  # < 3 * total <= 3 * 2**30: no uint32 overflow.
        for _ in range(1 + bit):  # remainder < (2 + bit) * total before these subtractions.
            over = remainder >= total
            remainder = xp.where(over, remainder - total, remainder)
            quotient = quotient + over.astype(xp.uint32)
    return quotient


def quantize_weights(weights, precision_bits: int, xp: ModuleType):
    """Turns integer weights into a frequency table with total exactly `2**precision_bits`.

    Args:
        weights: uint32 `[..., vocab]` whose sum over `vocab` is at most 2**30.
        precision_bits: log2 of the table total.
        xp: `numpy` or `jax.numpy`.

    Returns:
        int32 `[..., vocab]`, every entry >= 1, summing to `2**precision_bits`.

    Raises:
        ValueError: see `check_table_shape`.
    """
    vocab = weights.shape[-1]
    check_table_shape(vocab, precision_bits)
    weights = weights.astype(xp.uint32)
    total = xp.sum(weights, axis=-1, keepdims=True, dtype=xp.uint32)
    empty = total == 0
    weights = xp.where(empty, xp.uint32(1), weights)
    total = xp.where(empty, xp.uint32(vocab), total)
    spare = (1 << precision_bits) - vocab  # Mass left after every symbol's `+1`.
    scaled = _floor_mul_div(weights, total, spare, precision_bits, xp)
    remainder = xp.uint32(spare) - xp.sum(scaled, axis=-1, keepdims=True, dtype=xp.uint32)
    top = xp.argmax(weights, axis=-1)[..., None]  # First maximum: lowest index on ties.
    is_top = xp.arange(vocab) == top
    freqs = scaled + xp.uint32(1) + xp.where(is_top, remainder, xp.uint32(0))
    return freqs.astype(xp.int32)


def _quantize(probs, precision_bits: int, xp: ModuleType):
    """Shared body of `quantize_np` and `quantize_jax`; see the module docstring."""
    vocab = probs.shape[-1]
    check_table_shape(vocab, precision_bits)
    weights = probs_to_weights(probs, weight_bits(vocab), xp)
    return quantize_weights(weights, precision_bits, xp)


def quantize_np(probs, precision_bits: int = DEFAULT_PRECISION_BITS) -> np.ndarray:
    """Quantises probabilities to integer frequencies (NumPy reference).

    Args:
        probs: float `[..., vocab]` probabilities (cast to float32; need not sum to 1 exactly).
        precision_bits: log2 of the table total, in [1, 16].

    Returns:
        int32 `[..., vocab]`, every entry >= 1, each table summing to `2**precision_bits`;
        bit-identical to `quantize_jax` on the same float32 input.

    Raises:
        ValueError: `vocab > 2**(precision_bits - 1)` or precision out of range.
    """
    return _quantize(np.asarray(probs, dtype=np.float32), precision_bits, np)


def quantize_jax(probs: jax.Array, precision_bits: int = DEFAULT_PRECISION_BITS) -> jax.Array:
    """Quantises probabilities to integer frequencies (JAX; jittable, works under vmap/scan).

    Args:
        probs: float `[..., vocab]` probabilities (cast to float32; need not sum to 1 exactly).
        precision_bits: log2 of the table total, in [1, 16]; must be static under jit.

    Returns:
        int32 `[..., vocab]`, every entry >= 1, each table summing to `2**precision_bits`;
        bit-identical to `quantize_np` on the same float32 input.

    Raises:
        ValueError: `vocab > 2**(precision_bits - 1)` or precision out of range (at trace time).
    """
    return _quantize(jnp.asarray(probs, dtype=jnp.float32), precision_bits, jnp)


def cdf_np(freqs) -> np.ndarray:
    """Returns the cumulative table `[..., vocab + 1]` (int32, starting at 0) of `freqs`.

    Args:
        freqs: integer `[..., vocab]` frequencies.

    Returns:
        int32 `[..., vocab + 1]`: `cdf[..., s]` is the start of symbol `s`; the last is the total.
    """
    freqs = np.asarray(freqs, dtype=np.int32)
    zeros = np.zeros(freqs.shape[:-1] + (1,), dtype=np.int32)
    return np.concatenate([zeros, np.cumsum(freqs, axis=-1, dtype=np.int32)], axis=-1)


def cdf_jax(freqs: jax.Array) -> jax.Array:
    """JAX version of `cdf_np` (jittable); identical output.

    Args:
        freqs: integer `[..., vocab]` frequencies.

    Returns:
        int32 `[..., vocab + 1]` cumulative table starting at 0.
    """
    freqs = jnp.asarray(freqs, dtype=jnp.int32)
    zeros = jnp.zeros(freqs.shape[:-1] + (1,), dtype=jnp.int32)
    return jnp.concatenate([zeros, jnp.cumsum(freqs, axis=-1, dtype=jnp.int32)], axis=-1)
