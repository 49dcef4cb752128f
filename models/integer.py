"""The Transformer in integer arithmetic only: frequency tables identical on every machine.

Why. Float results depend on the instruction set, the compiled program and the batch shape, so a
stream coded from float32 probabilities on one machine may not decode on another (see
`coding/__init__.py`, point 3). Here the coding forward runs on int8/int16/int32 arrays: every
operation's result is an exact integer (matrix products included: integer sums are associative,
so summation order, batch shape, device and instruction set cannot change them), so the tables
come out bit for bit the same everywhere, in the parallel pass (`tables`) and in the KV-cache
step (`decode_step`) alike. A few steps use floats where that gives the same integers in fewer
operations: two products of the parallel pass on a CPU, where no value they meet needs rounding
(`_scores_float64`, `_weighted_sum_float32`), and two roundings that integer checks correct to
the exact result whatever the float's last bit (`_isqrt`, and on a CPU `coding.quantize`'s
division). Integer inference libraries do not give this: they rescale in floats or leave the
summation order to the device, so their outputs differ across machines.

Parameters (`quantize_params`, NumPy on the host, a deterministic function of the float32 tree).
Scaling uses exact operations only: `round(x * C * 2**(k - c))` for float32 x and an integer
C < 2**29 is exact in float64 (24 + 29 significant bits, a power of two, and `floor(v + 1/2)` of
a value below 2**31). Constants that are not powers of two (sqrt(width), log2(e),
1 / sqrt(head_dim)) and all tables (2**-f, the tanh-GELU, cos/sin of `pos * rope_base**(-i/half)`,
the sinusoids) come from 128-bit fixed-point Python integers (series for atanh, atan, exp, sin,
cos; `math.isqrt`), never from libm or SIMD. Bounds use `fractions.Fraction`.

* Matrices (q, k, v, out, mlp_in, mlp_out): int8, `|w| <= 127` (`weight_digits=1`, default) or
  two int8 digits, `|w| <= 2**14 - 1` (`weight_digits=2`), one power-of-two scale per output
  column (`w ~= q * 2**-exp[col]`); the head has two digits by default (`head_digits=2`).
  log2(e) / sqrt(head_dim) is folded into the query weights and log2(e) into the head, so scores
  and logits come out in log2 units.
* The embedding (times sqrt(width)), biases and LayerNorm offsets: int32 fixed point at the
  fraction bits of the tensor they join. LayerNorm scales (times sqrt(width)): 16 bits, one
  power-of-two scale.

Activations. Between operations tensors are int32 fixed point `value * 2**F`, each with a static F
(`LayerSpec`): `F = min(24, 29 - bitlen(ceil(bound)))` for an upper bound of the tensor's
magnitude derived from the quantised parameters (below): every such int32 stays under 2**29 (a
margin of 4 for rounding), so no addition of two of them overflows. `quantize_params` raises
`ValueError` if a bound leaves fewer than 8 fraction bits.

Matrix products. Each token's vector is scaled by a power of two `2**-s` (from its largest
magnitude, by count-leading-zeros) to `|a| <= 2**14 - 1` and split into two int8 digits
(`a = hi 128 + lo`, lo in [0, 127]); all digit pairs go through ONE `dot_general` of int8 with
int32 accumulation (a pair sums at most `K * 2**14`) and are combined with shifts after a right
shift `r = max(0, bitlen(K * 2**14 * sum_pairs 2**(7 (i + j))) - 30)` (`_dot_shift`), so the
combination stays under 2**30: for K = 3328 (100M's MLP) r = 3, for K = 832 r = 1. The result is
rescaled by `2**(r + s - F_in - exp[col] + F_out)`.

Nonlinearities:
* LayerNorm: mean by integer division; the centred row scaled to `|c| <= 2**20`; `sum c**2 / 2**20`
  from `c = hi 2**10 + lo` (sums < 2**30 for width <= 1024); `d * eps` added at the row's scale
  (saturating at 2**29, which only a row constant to within ~2**-16 reaches); `sqrt` by exact
  integer square root (`_isqrt`: exact) of the sum shifted to [2**29, 2**31) and refined with its
  remainder to 2**-23; one reciprocal per row by long division; entries
  `y = c sqrt(d) / sqrt(sum c**2 + d eps)` at 2**-20 (measured error <= 2e-4 absolute for unit
  scales, about the input's own resolution); the scale applied in two 8-bit halves.
* Softmax (attention and output): `2**-u` for `u = max - score >= 0` in log2 units, `u` rounded
  to 2**-12, from a 4096-entry table `round(2**(30 - f / 4096))` shifted right by the integer
  part, rounding down (relative error < 2**-12.5 + 1 unit).
* GELU (the tanh form `jax.nn.gelu` uses): a table on [-8, 8] in steps of 1/64 at 2**-16, linearly
  interpolated (error < 4e-5); `x` itself above 8 and 0 below -8 (true values differ < 1e-20).
* Rotary positions: cos/sin tables at 2**-14 per (position, frequency); rotated from 15-bit
  vectors. Sinusoidal positions (`positions='sinusoidal'`): the sinusoids at the embedding's F.

Attention. q and k (rotated) and v are held per (token, head) as 14-bit integers with their own
power-of-two exponent; the cache stores them as int16 [batch, heads, length, head_dim] plus int32
exponents. Scores `q . k` are computed exactly and rounded once by `2**r` (`_scores`: one query
sums int32 products term by term, each product < 2**28 split as hi 2**14 + lo; many queries use
a float64 product that never rounds on a CPU and the int8 digit product, carried into the same
form, elsewhere), then rescaled per (query, key) to fixed point in log2 units (their bound:
below).
`p = 2**-u` at 2**16 sums to less than `context * 2**16 < 2**31`; weights
`w = p 2**14 / sum p` come from one division per row (`w < 2**14`, `sum w <= 2**14 + 1`), are
shifted by each key's exponent gap to the largest visible exponent, and `sum_k w_k v_k` is exact
below `(2**14 + 1)(2**14 - 1) < 2**28` however long the context (`_weighted_sum`; many queries
on a CPU: a float32 product of v's 7-bit digits, whose partial sums stay below 2**24).

Bounds (`_Bounds`: L2 norm and largest entry of a token's vector), from the quantised integers,
exactly: embedding rows (plus sinusoids); LayerNorm output `<= |gamma| sqrt(d) + |beta|` per
entry (a row can be one-hot); a product `|y_c| <= ||W_c||_2 ||x||_2 + |b_c|` (Cauchy-Schwarz) and
`||y||_2 <= ||W||_F ||x||_2 + ||b||_2`; `|gelu(x)| <= |x|`; attention output (a convex
combination) `<= max |v|` and `||W_v||_F ||h||_2`; scores
`|h W_q R W_k^T h'| <= sqrt(||G_q||_F ||G_k||_F) ||h|| ||h'||` for each head's Gram matrices
`G = W^T W` and any rotation R; residual sums add. For the widest preset's shapes (100M: width
832, MLP 3328, head_dim 64, context 2048) with trained-like weights (N(0, 0.05), LayerNorm
scales up to 3) every tensor keeps at least 10 fraction bits, 12 layers deep in the pre-LN layout
(tests/integer_test.py). Fixed limits, checked at quantisation: width <= 1024 (LayerNorm sums),
context < 2**15 (softmax sums), vocab <= 2**15 (`quantize_weights`).

Outputs. Integer weights `2**(22 - u)` (vocab 256; `2**(30 - ceil(log2 vocab))` in general, so a
table's sum is at most 2**30) go through `coding.quantize.quantize_weights` to int32 tables of
total 2**16, every entry >= 1.

Speed. Which products and layouts run never changes an integer: only exact integer sums are
reordered. Per-row quantities (LayerNorm statistics, softmax rows, a product's input) are
computed once and stored (`_materialize`): XLA would otherwise recompute them per output entry.

Rounding: right shifts round half up (`(x + 2**(n-1)) >> n`, operands below 2**30); LayerNorm's
mean rounds half up, its reciprocal and `2**-u` round down.

Measured (bench/integer_cost.py, 2-core CPU): bits per byte within 0.2% of the float model's
log-loss for the 200K, 800K and 3.2M demo models with int8 matrices.
"""

import dataclasses
import fractions
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from coding import quantize
from models import transformer

# Streams record this: any change to how tables are computed (quantisation, approximations,
# bit widths) must bump it, since a decoder has to reproduce the encoder's tables exactly.
TABLES_VERSION = 1
DIGIT_BITS = 7  # int8 digits: the top one signed in [-128, 127], lower ones in [0, 127].
ACT_BITS = 2 * DIGIT_BITS  # activations before a product: |a| <= 2**14 - 1, two digits.
PRECISION_BITS = 16  # table total 2**16, as coding.quantize.DEFAULT_PRECISION_BITS.
F_MIN, F_MAX, HEADROOM_BITS = 8, 24, 29
EXP_FRAC_BITS = 12  # 2**-u is looked up with u rounded to 2**-12.
EXP_TABLE_BITS = 30  # table entries 2**(30 - f / 4096).
PROB_BITS = 16  # attention p = 2**-u at 2**16.
WEIGHT_BITS = 14  # attention weights sum to at most 2**14.
GELU_RANGE, GELU_STEP_BITS, GELU_TABLE_BITS = 8, 6, 16
TRIG_BITS = 14
LN_SCALE_BITS = 16  # |gamma * sqrt(d)| quantised to at most 2**16 - 1.
LN_Y_BITS = 20  # normalised entries x_hat / sqrt(d) at 2**-20.
MAX_WIDTH = 1024
MAX_CONTEXT = (1 << 15) - 1
LN_EPS = 1e-6  # flax.linen.LayerNorm's default epsilon.
SINUSOID_MAX_TIMESCALE = 1e4  # transformer._sinusoids' base (positions='sinusoidal').
_NEG = -(1 << 30)

# ------------------------------------------------------------------------------------------------
# Exact constants and tables: 128-bit fixed-point Python integers, no libm.

_PREC = 128
_ONE = 1 << _PREC


def _round_div(a: int, b: int) -> int:
    """floor(a / b + 1/2) for Python ints, b > 0."""
    return (2 * a + b) // (2 * b)


def _fx(value: fractions.Fraction | int) -> int:
    """A rational as 128-bit fixed point, rounded."""
    value = fractions.Fraction(value)
    return _round_div(value.numerator << _PREC, value.denominator)


def _fx_mul(a: int, b: int) -> int:
    return (a * b) >> _PREC


def _fx_div(a: int, b: int) -> int:
    return (a << _PREC) // b


def _atan_inv(n: int, hyperbolic: bool) -> int:
    """atan(1/n) or atanh(1/n) in fixed point, n >= 2, by their power series."""
    total, power, k = 0, _ONE // n, 0
    while power:
        term = power // (2 * k + 1)
        total += -term if (k % 2 and not hyperbolic) else term
        power //= n * n
        k += 1
    return total


@functools.cache
def _ln2() -> int:
    return 2 * _atan_inv(3, hyperbolic=True)


@functools.cache
def _pi() -> int:
    return 4 * (4 * _atan_inv(5, False) - _atan_inv(239, False))


def _fx_exp(x: int) -> int:
    """exp(x) in fixed point: x = k ln2 + r with |r| <= ln2 / 2, then Taylor."""
    k = _round_div(x, _ln2())
    r = x - k * _ln2()
    total, term, n = _ONE, _ONE, 1
    while term:
        term = (term * r >> _PREC) // n if term * r >= 0 else -((-term * r >> _PREC) // n)
        total += term
        n += 1
    return total << k if k >= 0 else total >> -k


def _fx_ln(x: int) -> int:
    """ln(x) in fixed point, x > 0: x = m 2**e with m in [1, 2), ln m = 2 atanh((m-1)/(m+1))."""
    e = x.bit_length() - 1 - _PREC
    m = x >> e if e >= 0 else x << -e
    z = _fx_div(m - _ONE, m + _ONE)
    z2, power, total, k = _fx_mul(z, z), z, 0, 0
    while power:
        total += power // (2 * k + 1)
        power = _fx_mul(power, z2)
        k += 1
    return e * _ln2() + 2 * total


def _fx_sin_cos(x: int) -> tuple[int, int]:
    """(sin x, cos x) in fixed point: reduce by 2 pi, then Taylor with 64 guard bits."""
    two_pi = 2 * _pi()
    x = x - _round_div(x, two_pi) * two_pi
    guard = 64
    x <<= guard
    one = _ONE << guard
    prec = _PREC + guard
    sin, cos, term, n = 0, 0, one, 0
    while term:
        if n % 4 == 0:
            cos += term
        elif n % 4 == 1:
            sin += term
        elif n % 4 == 2:
            cos -= term
        else:
            sin -= term
        n += 1
        product = term * x
        term = (product >> prec) // n if product >= 0 else -((-product >> prec) // n)
    return sin >> guard, cos >> guard


def _fx_round(x: int, bits: int) -> int:
    """round(x * 2**bits) of a fixed-point x, half up."""
    return (x + (1 << (_PREC - bits - 1))) >> (_PREC - bits)


def _constant(x: int) -> tuple[int, int]:
    """A positive fixed-point constant as (C, c): x ~= C * 2**-c with 2**27 <= C < 2**29."""
    c = 28 - (x.bit_length() - 1 - _PREC)
    return _fx_round(x, c), c


@functools.cache
def _exp2_table() -> np.ndarray:
    """int32 [4096]: round(2**(30 - f / 4096))."""
    step = _ln2() >> EXP_FRAC_BITS
    values = [_fx_round(_fx_exp(-f * step), EXP_TABLE_BITS) for f in range(1 << EXP_FRAC_BITS)]
    return np.asarray(values, np.int32)


@functools.cache
def _gelu_table() -> np.ndarray:
    """int32 [1025]: round(gelu(x) * 2**16) at x = -8 + j / 64, the tanh form of jax.nn.gelu."""
    c0 = math.isqrt(_fx_div(2 * _ONE, _pi()) << _PREC)  # sqrt(2 / pi)
    cubic = _fx(fractions.Fraction(44715, 10**6))
    values = []
    for j in range(2 * GELU_RANGE * (1 << GELU_STEP_BITS) + 1):
        x = (j << _PREC >> GELU_STEP_BITS) - GELU_RANGE * _ONE
        u = _fx_mul(c0, x + _fx_mul(cubic, _fx_mul(x, _fx_mul(x, x))))
        # 0.5 x (1 + tanh u) = x / (1 + exp(-2 u))
        values.append(_fx_round(_fx_div(x, _ONE + _fx_exp(-2 * u)), GELU_TABLE_BITS))
    return np.asarray(values, np.int32)


@functools.cache
def _sin_cos(base: float, exponents: tuple[fractions.Fraction, ...], length: int, bits: int):
    """cos and sin of pos * base**-e for pos < length and each exponent e, at 2**-bits.

    Each frequency's (cos, sin) comes from 128-bit series, then positions follow by exact
    complex multiplication with 32 guard bits (drift below 2**-100 over 2**15 positions).

    Returns:
      (cos, sin) int64 [length, len(exponents)].
    """
    ln_base = _fx_ln(_fx(fractions.Fraction(base)))
    prec = _PREC + 32
    cos = np.zeros((length, len(exponents)), np.int64)
    sin = np.zeros((length, len(exponents)), np.int64)
    for i, e in enumerate(exponents):
        s1, c1 = _fx_sin_cos(_fx_exp(-_round_div(e.numerator * ln_base, e.denominator)))
        s1, c1, s, c = s1 << 32, c1 << 32, 0, _ONE << 32
        for pos in range(length):
            cos[pos, i] = (c + (1 << (prec - bits - 1))) >> (prec - bits)
            sin[pos, i] = (s + (1 << (prec - bits - 1))) >> (prec - bits)
            c, s = (c * c1 - s * s1) >> prec, (s * c1 + c * s1) >> prec
    return cos, sin


def _rotary_tables(rope_base: float, half: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """int32 (cos, sin) [length, half] of pos * rope_base**(-i / half) at 2**-14."""
    exponents = tuple(fractions.Fraction(i, half) for i in range(half))
    cos, sin = _sin_cos(float(rope_base), exponents, length, TRIG_BITS)
    return cos.astype(np.int32), sin.astype(np.int32)


def _sinusoid_table(width: int, length: int, bits: int) -> np.ndarray:
    """The reference's sinusoids (`transformer._sinusoids`) [length, width] at 2**-bits, int64.

    Frequencies 1e4**(-i / width) for even i in [0, width], their sines then their cosines,
    cut to `width` columns.
    """
    exponents = tuple(fractions.Fraction(i, width) for i in range(0, width + 1, 2))
    cos, sin = _sin_cos(SINUSOID_MAX_TIMESCALE, exponents, length, bits)
    return np.concatenate([sin, cos], axis=1)[:, :width]


# ------------------------------------------------------------------------------------------------
# Quantisation (NumPy int64, exact).


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """Static fraction bits (F: value * 2**F) of one block's int32 tensors, and its shifts.

    Attributes:
      f_in: block input (the residual stream).
      f_ln1, f_ln2: outputs of norm_attn and norm_mlp.
      f_q, f_k, f_v: projections, before the per-head 14-bit scaling.
      f_s: attention scores in log2 units.
      f_att: attention output (heads concatenated).
      f_res1, f_res2: the residual sums after attention and after the MLP.
      f_h: MLP hidden (GELU input and output).
      g1, g2: power-of-two exponents of the two LayerNorm scales.
    """

    f_in: int
    f_ln1: int
    f_q: int
    f_k: int
    f_v: int
    f_s: int
    f_att: int
    f_res1: int
    f_ln2: int
    f_h: int
    f_res2: int
    g1: int
    g2: int


@dataclasses.dataclass(frozen=True)
class IntegerSpec:
    """Everything static about an integer model: shapes, layout, fraction bits (hashable)."""

    vocab_size: int
    width: int
    num_heads: int
    head_dim: int
    norm: str
    positions: str  # 'rotary' or 'sinusoidal' (as transformer.TransformerConfig.positions)
    context_length: int
    weight_digits: int
    head_digits: int
    layers: tuple[LayerSpec, ...]
    f_emb: int
    f_final: int  # input of the head (final LayerNorm output for 'pre', last block's otherwise)
    g_final: int
    f_logits: int
    eps: tuple[int, int]  # d * eps ~= eps[0] * 2**eps[1], eps[0] < 2**30
    bound_bits: int  # bitlen of the largest int32 magnitude any tensor may reach (<= 29)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class IntegerParams:
    """The integer model: a pytree of int8/int32 arrays (`arrays`) and a static `spec`."""

    arrays: dict[str, Any]
    spec: IntegerSpec = dataclasses.field(metadata={"static": True})


def _to_fixed(x: np.ndarray, k, const: tuple[int, int] = (1, 0)) -> np.ndarray:
    """round(x * C * 2**(k - c)) exactly (half up), for float32 x and const = (C, c); int64.

    Exact in float64: x has 24 significant bits and C < 2**29, so `x * C` is exact; the power
    of two is exact; and for |result| < 2**31 adding 1/2 and flooring are exact too.

    Args:
      x: float32 array.
      k: int or int array broadcastable to x (the power of two).
      const: an integer constant C < 2**29 and its shift c (x is multiplied by C * 2**-c).

    Returns:
      int64 array, x's shape.

    Raises:
      ValueError: a result of 2**31 or more in magnitude.
    """
    v = np.asarray(x, np.float32).astype(np.float64) * float(const[0])
    v = np.ldexp(v, (np.asarray(k, np.int64) - const[1]).astype(np.int32))
    if np.any(np.abs(v) >= 2.0**31):
        raise ValueError("a parameter is too large for int32 fixed point at its scale.")
    return np.floor(v + 0.5).astype(np.int64)


def _check_finite(name: str, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"parameter {name} has NaN or inf entries: cannot quantise it.")
    return x


def _quantize_columns(w: np.ndarray, bits: int, const=(1, 0)) -> tuple[np.ndarray, np.ndarray]:
    """Per-column power-of-two quantisation: round(w * const * 2**k[col]), |q| <= 2**bits - 1.

    Rounding is monotonic, so each column's exponent follows from its largest magnitude alone.

    Args:
      w: float32 [K, N].
      bits: magnitude bits of the result.
      const: extra constant factor (C, c) folded in exactly.

    Returns:
      (q int64 [K, N], k int64 [N]); all-zero columns get k = 0.
    """
    top = np.max(np.abs(w), axis=0)  # exact
    _, exponent = np.frexp(top.astype(np.float64))
    # 2**(e + b - 2) <= top * C < 2**(e + b) for e = exponent, b = bitlen(C): start at k with
    # top * C * 2**(k - c) in [2**(bits - 1), 2**(bits + 1)).
    start = bits + 1 - const[0].bit_length() + const[1] - exponent.astype(np.int64)
    k = np.where(top > 0, start, 0)
    limit = (1 << bits) - 1
    for _ in range(3):  # each pass halves the columns still over the limit
        k = k - (_to_fixed(top, k, const) > limit)
    if np.any(_to_fixed(top, k, const) > limit):
        raise AssertionError("weight quantisation exceeded its range")
    return _to_fixed(w, k[None, :], const), k


def _digits_np(q: np.ndarray, digits: int) -> np.ndarray:
    """int8 digits [digits, ...] of q (|q| < 2**(7 digits)), lowest first: q = sum d_i 128**i."""
    out = [((q >> (DIGIT_BITS * i)) & 127).astype(np.int8) for i in range(digits - 1)]
    return np.stack(out + [(q >> (DIGIT_BITS * (digits - 1))).astype(np.int8)])


F = fractions.Fraction


def _sqrt_up(x: F) -> F:
    """An upper bound of sqrt(x) for a non-negative rational, within 2**-40."""
    scaled = math.ceil(x * (1 << 80))
    return F(math.isqrt(scaled) + 1, 1 << 40)


def _max_abs(x: np.ndarray) -> F:
    return F(float(np.max(np.abs(x)))) if x.size else F(0)


@dataclasses.dataclass(frozen=True)
class _Bounds:
    """Upper bounds of a token's vector: L2 norm and largest magnitude."""

    l2: F
    linf: F

    def __add__(self, other: "_Bounds") -> "_Bounds":
        return _Bounds(self.l2 + other.l2, self.linf + other.linf)


@dataclasses.dataclass(frozen=True)
class _Matrix:
    """A quantised matrix with its norms (exact rationals)."""

    q: np.ndarray  # int64 [K, N]
    k: np.ndarray  # int64 [N]
    col_sq: list  # Fraction per column: ||W_c||_2**2

    @classmethod
    def build(cls, w: np.ndarray, bits: int, const=(1, 0)) -> "_Matrix":
        q, k = _quantize_columns(w, bits, const)
        sums = np.sum(q * q, axis=0)  # exact int64: at most 4096 * 2**28
        return cls(
            q,
            k,
            [
                F(int(s), 1 << (2 * int(e))) if e >= 0 else F(int(s) << (-2 * int(e)))
                for s, e in zip(sums, k, strict=True)
            ],
        )

    def fro(self, columns: slice = slice(None)) -> F:
        return _sqrt_up(sum(self.col_sq[columns], F(0)))

    def gram_fro(self, columns: slice) -> F:
        """An upper bound of ||W^T W||_F over the given columns (exact integer Gram matrix)."""
        q, k = self.q[:, columns], self.k[columns]
        # float64 BLAS is exact here: every partial sum is an integer below K * 2**28 < 2**53.
        qf = q.astype(np.float64)
        gram = (qf.T @ qf).astype(np.int64).astype(object)
        top = int(np.max(k))
        scale = np.array([1 << (top - int(e)) for e in k], dtype=object)
        scaled = gram * scale[:, None] * scale[None, :]  # gram * 2**(2 top - k_i - k_j)
        return _sqrt_up(F(int(np.sum(scaled * scaled))) / F(2) ** (4 * top))

    def apply(self, x: _Bounds, bias: np.ndarray | None = None) -> _Bounds:
        """Bounds of x @ W + b (Cauchy-Schwarz per column and in Frobenius norm)."""
        b_max = _max_abs(bias) if bias is not None else F(0)
        n = self.q.shape[1]
        linf = _sqrt_up(max(self.col_sq)) * x.l2 + b_max
        return _Bounds(self.fro() * x.l2 + b_max * _sqrt_up(F(n)), linf)

    def arrays(self, digits: int, bias=None) -> dict[str, Any]:
        # Digits stored [K, digits, N]: contracting axis first, so no per-call transposes.
        out = {"w": jnp.asarray(np.moveaxis(_digits_np(self.q, digits), 0, 1))}
        out["exp"] = jnp.asarray(self.k.astype(np.int32))
        if bias is not None:
            out["b"] = jnp.asarray(bias.astype(np.int32))
        return out


def _frac_bits(bound: F, name: str) -> int:
    """Fraction bits F with bound * 2**F < 2**29, at most F_MAX; ValueError below F_MIN."""
    bits = HEADROOM_BITS - max(1, math.ceil(bound)).bit_length()
    if bits < F_MIN:
        raise ValueError(
            f"{name} may reach {float(bound):.4g} in magnitude, which leaves {bits} fraction bits "
            f"in int32 (at least {F_MIN} are required): the parameters are too large for the "
            "integer coding path."
        )
    return min(F_MAX, bits)


def _positions(cfg: transformer.TransformerConfig) -> str:
    return getattr(cfg, "positions", "rotary")  # configs older than the field are rotary


def _check_config(cfg: transformer.TransformerConfig) -> None:
    if cfg.norm not in ("pre", "post"):
        raise ValueError(f"norm must be 'pre' or 'post', got {cfg.norm!r}.")
    if cfg.width % cfg.num_heads or cfg.head_dim % 2:
        raise ValueError(f"width {cfg.width} must split into {cfg.num_heads} heads of even size.")
    if cfg.width > MAX_WIDTH or cfg.mlp_ratio * cfg.width > 4 * MAX_WIDTH:
        raise ValueError(f"width {cfg.width} exceeds the integer path's limit of {MAX_WIDTH}.")
    if _positions(cfg) not in ("rotary", "sinusoidal"):
        raise ValueError(f"positions must be 'rotary' or 'sinusoidal', got {_positions(cfg)!r}.")
    if cfg.context_length > MAX_CONTEXT:
        raise ValueError(f"context {cfg.context_length} exceeds the limit of {MAX_CONTEXT}.")
    quantize.check_table_shape(cfg.vocab_size, PRECISION_BITS)


class _LayerNormQ:
    """A LayerNorm's quantised scale (times sqrt(d)) and its output bounds."""

    def __init__(self, p: dict, width: int, name: str):
        sqrt_d = _constant(math.isqrt(width << (2 * _PREC)))
        self.scale = _check_finite(f"{name}.scale", p["scale"])
        self.bias = _check_finite(f"{name}.bias", p["bias"])
        q, k = _quantize_columns(self.scale[:, None], LN_SCALE_BITS, sqrt_d)
        self.g, self.kg = q[:, 0], int(k[0])
        g_max = F(int(np.max(np.abs(self.g)))) / F(2) ** self.kg
        b_max = _max_abs(self.bias)
        self.bounds = _Bounds(g_max + b_max * _sqrt_up(F(width)), g_max + b_max)

    def arrays(self, f_out: int) -> dict[str, Any]:
        return {
            "g": jnp.asarray(self.g.astype(np.int32)),
            "b": jnp.asarray(_to_fixed(self.bias, f_out).astype(np.int32)),
        }


def _eps_constant(width: int) -> tuple[int, int]:
    """d * eps (eps as float32, like flax) as (M, e): M * 2**e with 2**28 <= M < 2**30."""
    exact = F(width) * F(float(np.float32(LN_EPS)))
    e = exact.numerator.bit_length() - exact.denominator.bit_length() - 29
    num, den = exact.numerator << max(-e, 0), exact.denominator << max(e, 0)
    return _round_div(num, den), e


class _Formats:
    """Chooses fraction bits from bounds and remembers the largest int32 magnitude reached."""

    def __init__(self):
        self.max_bits = 0

    def __call__(self, bound: F, name: str) -> int:
        bits = _frac_bits(bound, name)
        self.max_bits = max(self.max_bits, math.ceil(bound * (1 << bits)).bit_length())
        return bits


def _fx_recip_sqrt(n: int) -> int:
    return _fx_div(_ONE, math.isqrt(n << (2 * _PREC)))


def _quantize_block(cfg, p: dict, x: _Bounds, f_in: int, digits: int, fmt: _Formats, name: str):
    """Quantises one block given its input bounds and format.

    Returns:
      (arrays dict, LayerSpec, output bounds, output fraction bits).
    """
    d, heads, hd = cfg.width, cfg.num_heads, cfg.head_dim
    score_const = _constant(_fx_mul(_fx_div(_ONE, _ln2()), _fx_recip_sqrt(hd)))
    kernel = lambda key, shape: _check_finite(f"{name}.{key}", p[key]["kernel"]).reshape(shape)  # noqa: E731
    ln1 = _LayerNormQ(p["norm_attn"], d, f"{name}.norm_attn")
    ln2 = _LayerNormQ(p["norm_mlp"], d, f"{name}.norm_mlp")
    bits = DIGIT_BITS * digits
    wq = _Matrix.build(kernel("query", (d, d)), bits, score_const)
    wk = _Matrix.build(kernel("key", (d, d)), bits)
    wv = _Matrix.build(kernel("value", (d, d)), bits)
    wo = _Matrix.build(kernel("out", (d, d)), bits)
    wi = _Matrix.build(kernel("mlp_in", (d, -1)), bits)
    wm = _Matrix.build(kernel("mlp_out", (-1, d)), bits)
    b_in = _check_finite(f"{name}.mlp_in.bias", p["mlp_in"]["bias"])
    b_out = _check_finite(f"{name}.mlp_out.bias", p["mlp_out"]["bias"])

    pre = cfg.norm == "pre"
    f_ln1 = fmt(ln1.bounds.linf, f"{name}.norm_attn") if pre else None
    h = ln1.bounds if pre else x
    f = {"f_in": f_in}
    f["f_q"] = fmt(wq.apply(h).linf, f"{name}.query")
    f["f_k"] = fmt(wk.apply(h).linf, f"{name}.key")
    f["f_v"] = fmt(wv.apply(h).linf, f"{name}.value")
    per_head = [slice(i * hd, (i + 1) * hd) for i in range(heads)]
    # |q . k| = |h W_q R W_k^T h'| (R a rotation) <= ||W_q R W_k^T||_F ||h|| ||h'||, and
    # ||W_q R W_k^T||_F**2 = <R^T G_q R, G_k> <= ||G_q||_F ||G_k||_F for Gram matrices G.
    scores = max(_sqrt_up(wq.gram_fro(c) * wk.gram_fro(c)) for c in per_head) * h.l2 * h.l2
    f["f_s"] = fmt(2 * scores, f"{name} attention scores")
    att = _Bounds(wv.fro() * h.l2, wv.apply(h).linf)
    f["f_att"] = fmt(att.linf, f"{name} attention output")
    res1 = x + wo.apply(att)
    f["f_res1"] = fmt(res1.linf, f"{name} residual after attention")
    if not pre:
        f_ln1 = fmt(ln1.bounds.linf, f"{name}.norm_attn")
    f["f_ln1"] = f_ln1
    mlp_in = ln2.bounds if pre else ln1.bounds
    f["f_ln2"] = fmt(ln2.bounds.linf, f"{name}.norm_mlp")
    hidden = wi.apply(mlp_in, b_in)
    f["f_h"] = fmt(hidden.linf, f"{name} MLP hidden")
    res2 = (res1 if pre else ln1.bounds) + wm.apply(hidden, b_out)
    f["f_res2"] = fmt(res2.linf, f"{name} residual after the MLP")
    spec = LayerSpec(**f, g1=ln1.kg, g2=ln2.kg)
    arrays = {
        "q": wq.arrays(digits),
        "k": wk.arrays(digits),
        "v": wv.arrays(digits),
        "o": wo.arrays(digits),
        "mlp_in": wi.arrays(digits, _to_fixed(b_in, spec.f_h)),
        "mlp_out": wm.arrays(digits, _to_fixed(b_out, spec.f_res2)),
        "ln1": ln1.arrays(spec.f_ln1),
        "ln2": ln2.arrays(spec.f_ln2),
    }
    if pre:
        return arrays, spec, res2, spec.f_res2
    return arrays, spec, ln2.bounds, spec.f_ln2


def _embedding(table: np.ndarray, width: int, sinusoids: bool, fmt: _Formats):
    """The embedding times sqrt(width): (int32 [vocab, width] fixed point, its F, its bounds).

    With `sinusoids`, the bounds include the added sinusoids (each entry at most 1)."""
    sqrt_d = _constant(math.isqrt(width << (2 * _PREC)))
    _, exponent = np.frexp(table.astype(np.float64))
    probe_k = 20 - int(np.max(exponent))
    z = np.abs(_to_fixed(table, probe_k)) + 1  # >= |E| * 2**probe_k, at most 2**20 + 1
    rows = int(np.max(np.sum(z * z, axis=1)))
    scale = _sqrt_up(F(width))
    bounds = _Bounds(_sqrt_up(F(rows)) / F(2) ** probe_k * scale, _max_abs(table) * scale)
    if sinusoids:
        bounds = bounds + _Bounds(scale, F(1))
    f_emb = fmt(bounds.linf, "embedding")
    return _to_fixed(table, f_emb, sqrt_d).astype(np.int32), f_emb, bounds


def quantize_params(
    cfg: transformer.TransformerConfig, params: Any, weight_digits: int = 1, head_digits: int = 2
) -> IntegerParams:
    """Builds the integer model from a trained float parameter tree (deterministically).

    Args:
      cfg: the architecture (`norm` 'post' or 'pre').
      params: the float32 parameter tree of `transformer.Transformer(cfg)`.
      weight_digits: int8 digits per block matrix entry: 1 (int8) or 2 (14 bits).
      head_digits: int8 digits per output-layer entry.

    Returns:
      IntegerParams: int8 / int32 arrays and the static spec.

    Raises:
      ValueError: unsupported shapes (width > 1024, context >= 2**15, vocab > 2**15), NaN or inf
        parameters, or parameters so large that some tensor gets fewer than 8 fraction bits.
    """
    _check_config(cfg)
    if weight_digits not in (1, 2) or head_digits not in (1, 2):
        raise ValueError("weight_digits and head_digits must be 1 or 2.")
    p = jax.tree_util.tree_map(np.asarray, params)
    fmt = _Formats()
    table = _check_finite("embed", p["embed"]["embedding"])
    sinusoids = _positions(cfg) == "sinusoidal"
    embed, f_emb, x = _embedding(table, cfg.width, sinusoids, fmt)
    blocks, layers, f_x = [], [], f_emb
    for i in range(cfg.num_layers):
        arrays, spec, x, f_x = _quantize_block(
            cfg, p[f"block_{i}"], x, f_x, weight_digits, fmt, f"block_{i}"
        )
        blocks.append(arrays)
        layers.append(spec)
    out = {"embed": jnp.asarray(embed), "blocks": blocks}
    g_final = 0
    if cfg.norm == "pre":
        final = _LayerNormQ(p["final_norm"], cfg.width, "final_norm")
        x, g_final = final.bounds, final.kg
        f_x = fmt(x.linf, "final_norm")
        out["final_ln"] = final.arrays(f_x)
    log2e = _constant(_fx_div(_ONE, _ln2()))
    head = _Matrix.build(
        _check_finite("head", p["head"]["kernel"]), DIGIT_BITS * head_digits, log2e
    )
    bias = _check_finite("head.bias", p["head"]["bias"])
    logits = head.apply(x, None)
    logits = _Bounds(logits.l2, logits.linf + _max_abs(bias) * F(log2e[0], 1 << log2e[1]))
    f_logits = fmt(2 * logits.linf, "logits")
    out["head"] = head.arrays(head_digits, _to_fixed(bias, f_logits, log2e))
    out["tables"] = {"exp2": jnp.asarray(_exp2_table()), "gelu": jnp.asarray(_gelu_table())}
    if sinusoids:
        table = _sinusoid_table(cfg.width, cfg.context_length, f_emb)
        out["tables"]["sinusoids"] = jnp.asarray(table.astype(np.int32))
    else:
        cos, sin = _rotary_tables(float(cfg.rope_base), cfg.head_dim // 2, cfg.context_length)
        out["tables"].update(cos=jnp.asarray(cos), sin=jnp.asarray(sin))
    spec = IntegerSpec(
        vocab_size=cfg.vocab_size,
        width=cfg.width,
        num_heads=cfg.num_heads,
        head_dim=cfg.head_dim,
        norm=cfg.norm,
        positions=_positions(cfg),
        context_length=cfg.context_length,
        weight_digits=weight_digits,
        head_digits=head_digits,
        layers=tuple(layers),
        f_emb=f_emb,
        f_final=f_x,
        g_final=g_final,
        f_logits=f_logits,
        eps=_eps_constant(cfg.width),
        bound_bits=fmt.max_bits,
    )
    return IntegerParams(out, spec)


# ------------------------------------------------------------------------------------------------
# The integer forward (jnp, int8 / int32 only).

Cache = dict[str, jax.Array]


def _materialize(*xs):
    """The arrays as they are, computed once: XLA may not fuse them into their consumers.

    Without this, XLA's loop fusion inlines a producer into every consumer and recomputes it per
    output element: a row's LayerNorm statistics once per entry, a softmax row once per digit
    and value column. The values are unchanged; only where they are computed changes.
    """
    out = jax.lax.optimization_barrier(xs)
    return out[0] if len(xs) == 1 else out


_FOLD = 32  # XLA:CPU splits a reduction of more elements into a reduce-window and a reduce


def _fold(reduce, x: jax.Array, axis: int = -1, keepdims: bool = True) -> jax.Array:
    """`reduce(x, axis)` (jnp.sum or jnp.max of int32: any order gives the same integers).

    On a CPU a reduction over more than 32 elements (a multiple of 32) is in slices of 32 first,
    kept apart by a barrier: XLA:CPU would otherwise rewrite it into a reduce-window and a
    reduce, two kernels of their own that no producer fuses into (a fifth of a decode step).
    Elsewhere, as it is.
    """
    axis = axis % x.ndim
    n = x.shape[axis]
    plain = functools.partial(reduce, axis=axis, keepdims=keepdims)
    if n <= _FOLD or n % _FOLD:
        return plain(x)

    def folded(x):
        parts = x.reshape(x.shape[:axis] + (n // _FOLD, _FOLD) + x.shape[axis + 1 :])
        return plain(_materialize(reduce(parts, axis=axis + 1)))

    return jax.lax.platform_dependent(x, cpu=folded, default=plain)


def _bitlen(x: jax.Array) -> jax.Array:
    """Bit length of non-negative int32 x (0 for 0)."""
    return 32 - jax.lax.clz(x)


def _shift(x: jax.Array, n) -> jax.Array:
    """x * 2**n for int32 |x| < 2**30: a left shift for n >= 0, else a right shift rounding half
    up, (x + 2**(-n - 1)) >> -n.

    Args:
      x: int32 array, |x| < 2**30 (and x * 2**n < 2**31 for n > 0).
      n: Python int or int32 array broadcastable with x; right shifts stop at 30.

    Returns:
      int32 array, the broadcast shape.
    """
    if isinstance(n, int):
        if n >= 0:
            return jnp.left_shift(x, n)
        n = min(-n, 30)
        return jnp.right_shift(x + (1 << (n - 1)), n)
    x = jnp.left_shift(x, jnp.maximum(n, 0))
    return _shift_down(x, jnp.maximum(-n, 0))


def _shift_down(x: jax.Array, n: jax.Array) -> jax.Array:
    """round(x / 2**n), half up, for int32 |x| < 2**30 and int32 n >= 0 (stopping at 30)."""
    n = jnp.minimum(n, 30)
    return jnp.right_shift(x + jnp.right_shift(jnp.left_shift(1, n), 1), n)


def _quantize_rows(x: jax.Array, bits: int) -> tuple[jax.Array, jax.Array]:
    """Scales each vector (last axis) by 2**-s to |a| <= 2**bits - 1.

    Args:
      x: int32 [..., n].
      bits: magnitude bits of the result.

    Returns:
      (a int32 [..., n], s int32 [..., 1] >= 0), a ~= x * 2**-s.
    """
    top = _fold(jnp.max, jnp.abs(x))
    s = jnp.maximum(_bitlen(top) - bits, 0)
    limit = (1 << bits) - 1
    return jnp.clip(_shift_down(x, s), -limit, limit), s


def _digits(a: jax.Array, count: int) -> jax.Array:
    """int8 digits [count, ...] of a (|a| < 2**(7 count)), lowest first: a = sum_i d_i 128**i."""
    out = [jnp.bitwise_and(jnp.right_shift(a, DIGIT_BITS * i), 127) for i in range(count - 1)]
    out.append(jnp.right_shift(a, DIGIT_BITS * (count - 1)))
    return jnp.stack(out).astype(jnp.int8)


def _dot_shift(length: int, a_digits: int, w_digits: int) -> int:
    """Right shift r that keeps a digit product's combination under 2**30 (module docstring)."""
    pairs = sum(1 << (DIGIT_BITS * (i + j)) for i in range(a_digits) for j in range(w_digits))
    bound = length * (1 << (2 * DIGIT_BITS)) * pairs
    return max(0, bound.bit_length() - 30)


def _digit_dot(a: jax.Array, w: jax.Array, spec: str, r: int) -> jax.Array:
    """sum_ij (a_i . w_j) 2**(7 (i + j) - r): one int8 product with int32 accumulation.

    Args:
      a, w: int8 digit-stacked operands, lowest digit first.
      spec: einsum whose output starts with the two digit axes, e.g. "ibqhd,jbkhd->ijbhqk":
        every digit pair in one dot_general.
      r: right shift applied to the combination (each term rounded on its own).

    Returns:
      int32 array.
    """
    acc = jnp.einsum(spec, a, w, preferred_element_type=jnp.int32)
    return _combine(acc, r)


def _combine(acc: jax.Array, r: int) -> jax.Array:
    """sum_ij acc[i, j] 2**(7 (i + j) - r) over the two leading digit axes."""
    total = None
    for i in range(acc.shape[0]):
        for j in range(acc.shape[1]):
            term = _shift(acc[i, j], DIGIT_BITS * (i + j) - r)
            total = term if total is None else total + term
    return total


def _linear(x: jax.Array, f_in: int, layer: dict, f_out: int) -> jax.Array:
    """x @ W (+ b) from int32 fixed point x [..., K] (2**f_in) to [..., N] at 2**f_out."""
    a, s = _materialize(*_quantize_rows(_materialize(x), ACT_BITS))
    r = _dot_shift(x.shape[-1], 2, layer["w"].shape[1])
    # Output [2, ..., nw, N] as dot_general lays it out; the digit axes are moved for free.
    acc = jnp.einsum(
        "i...k,kjn->i...jn", _digits(a, 2), layer["w"], preferred_element_type=jnp.int32
    )
    acc = _combine(jnp.moveaxis(acc, -2, 1), r)
    out = _shift(acc, r + s - f_in - layer["exp"] + f_out)
    return out + layer["b"] if "b" in layer else out


def _isqrt(n: jax.Array) -> jax.Array:
    """floor(sqrt(n)) for int32 0 <= n < 2**31, exactly: a float32 square root, corrected.

    float32(n) is within 2**-24 of n relatively, and a square root within 2**-21 of its value
    (IEEE-754 rounds it correctly; even an approximate one is far inside this), so the float
    root is within 46341 (2**-25 + 2**-21) < 0.03 of sqrt(n), and its floor r is the answer, one
    more or one less. `r * r > n` takes 1 off and `n - r * r >= 2 r + 1` adds 1 (int32 products
    below 46340**2 < 2**31), leaving the exact root on any machine: one float operation instead
    of 16 unrolled integer steps (with `coding.quantize`'s float64 division, about 15% off the
    parallel pass's compile time: BENCHMARKS.md).
    tests/integer_test.py checks every square and its neighbours up to 2**31.
    """
    r = jnp.floor(jnp.sqrt(n.astype(jnp.float32))).astype(jnp.int32)
    r = jnp.clip(r, 0, 46340)  # floor(sqrt(2**31 - 1)): r * r stays an int32
    r = r - (r * r > n).astype(jnp.int32)
    return r + (n - r * r >= 2 * r + 1).astype(jnp.int32)


def _layer_norm(x, f_in: int, ln: dict, g_exp: int, f_out: int, eps: tuple[int, int]):
    """Integer LayerNorm of x [..., d] (2**f_in) to 2**f_out; see the module docstring.

    Args:
      x: int32 [..., d].
      f_in, f_out: fraction bits of input and output.
      ln: {"g": int32 [d] (gamma * sqrt(d) * 2**g_exp), "b": int32 [d] (beta at 2**f_out)}.
      g_exp: the scale's power-of-two exponent.
      eps: d * eps as (M, e).

    Returns:
      int32 [..., d].
    """
    # The barrier stops XLA from fusing LayerNorms with their surroundings into ever larger
    # fusions, which made compile time grow faster than the model (4 chained: 4.4 s -> 1 s).
    x = jax.lax.optimization_barrier(x)
    d = x.shape[-1]
    s1 = jnp.maximum(_bitlen(_fold(jnp.max, jnp.abs(x))) - 20, 0)
    x1 = _shift_down(x, s1)  # |x1| <= 2**20: the sum of d <= 1024 fits.
    mean = jnp.floor_divide(_fold(jnp.sum, x1) + d // 2, d)
    c = x1 - mean
    s2 = _bitlen(_fold(jnp.max, jnp.abs(c))) - 20
    c = _materialize(_shift(c, -s2))  # |c| <= 2**20, the largest >= 2**19 unless all are 0
    # sum c**2 / 2**20 from c = hi 2**10 + lo: hi**2 + round(hi lo / 2**9), each sum < 2**30.
    hi, lo = jnp.right_shift(c, 10), jnp.bitwise_and(c, 1023)
    total = _fold(jnp.sum, hi * hi) + _fold(jnp.sum, _shift(hi * lo, -9))
    # d * eps in the same units (c**2 / 2**20 at this row's scale), saturating at 2**29.
    e = eps[1] + 2 * (f_in - s1 - s2) - 20
    saturated = (e > 0) & (jnp.int32(eps[0]) > jnp.right_shift(1 << 29, jnp.clip(e, 0, 31)))
    total = total + jnp.where(saturated, 1 << 29, _shift(jnp.int32(eps[0]), e))
    t = jnp.bitwise_and(31 - _bitlen(total), -2)  # even, n = total << t in [2**29, 2**31)
    n = jnp.left_shift(total, t)
    root = _isqrt(n)
    # sqrt(n) * 2**8 to 2**-23 relative: root + (n - root**2) / (2 root), n - root**2 <= 2 root.
    fine = jnp.left_shift(root, 8) + jax.lax.div(jnp.left_shift(n - root * root, 7),
                                                      jnp.maximum(root, 1))  # fmt: skip
    fine = jnp.maximum(fine, 1)
    # y = c / sqrt(2**20 total) * 2**20 = |c| * 2**(18 + t / 2) / fine. One reciprocal per row,
    # recip = floor(2**43 / fine) < 2**20.5 by long division (remainders < fine < 2**23.5),
    # then |c| = hi 2**10 + lo (hi, lo < 2**10) times recip: products < 2**30.5.
    num = jnp.full_like(fine, 1 << 30)
    recip = jax.lax.div(num, fine)
    rem = num - recip * fine
    for step in (7, 6):
        rem = jnp.left_shift(rem, step)
        digit = jax.lax.div(rem, fine)
        recip, rem = jnp.left_shift(recip, step) + digit, rem - digit * fine
    recip, half_t = _materialize(recip, jnp.right_shift(t, 1))  # per row, computed once
    hi, lo = jnp.right_shift(jnp.abs(c), 10), jnp.bitwise_and(jnp.abs(c), 1023)
    y = _shift(hi * recip, half_t - 15) + _shift(lo * recip, half_t - 25)
    y = jnp.sign(c) * jnp.minimum(y, 1 << LN_Y_BITS)
    # gamma in two 8-bit halves keeps each product under 2**28.
    g_hi, g_lo = jnp.right_shift(ln["g"], 8), jnp.bitwise_and(ln["g"], 255)
    shift = f_out - LN_Y_BITS - g_exp
    return _shift(y * g_hi, shift + 8) + _shift(y * g_lo, shift) + ln["b"]


def _exp2_neg(u: jax.Array, f: int, out_bits: int, table: jax.Array) -> jax.Array:
    """floor(2**(out_bits - u)) for int32 u >= 0 at 2**f (u rounded to 2**-12 first)."""
    u = _shift(jnp.minimum(u, 64 << f), EXP_FRAC_BITS - f)
    whole = jnp.right_shift(u, EXP_FRAC_BITS)
    frac = jnp.bitwise_and(u, (1 << EXP_FRAC_BITS) - 1)
    return jnp.right_shift(table[frac], jnp.minimum(whole + EXP_TABLE_BITS - out_bits, 31))


def _gelu(h: jax.Array, f: int, table: jax.Array) -> jax.Array:
    """Table GELU of int32 h at 2**f (GELU_STEP_BITS <= f <= 24), same format."""
    lo, hi = -GELU_RANGE << f, GELU_RANGE << f
    g = jnp.clip(h, lo, hi - 1) - lo
    step = f - GELU_STEP_BITS
    index = jnp.right_shift(g, step)
    frac = jnp.bitwise_and(g, (1 << step) - 1)
    low, high = table[index], table[index + 1]
    y = _shift(low + _shift((high - low) * frac, -step), f - GELU_TABLE_BITS)
    return jnp.where(h >= hi, h, jnp.where(h < lo, 0, y))


def _rotate(x: jax.Array, f: int, cos: jax.Array, sin: jax.Array):
    """Rotary positions on x [B, T, H, D] (2**f) -> (14-bit ints [B, T, H, D], exps [B, T, H]).

    cos and sin are int32 at 2**14, broadcastable to [B, T, 1, D / 2]; the result is
    value * 2**exp.
    """
    a, s = _quantize_rows(x, 15)
    half = a.shape[-1] // 2
    a1, a2 = a[..., :half], a[..., half:]
    z = jnp.concatenate(
        [_shift(a1 * cos - a2 * sin, -TRIG_BITS), _shift(a2 * cos + a1 * sin, -TRIG_BITS)], -1
    )
    q, s2 = _quantize_rows(z, ACT_BITS)
    return q, (s + s2)[..., 0] - f


def _scores(q: jax.Array, k: jax.Array, r: int) -> jax.Array:
    """round(q . k / 2**r), half up, exactly, for 14-bit q [B, H, Tq, D] and k [B, H, Tk, D].

    Every way below computes the exact q . k and rounds it once, so all give the same integers:

    * One query (the KV-cache step): D elementwise int32 products q_d k_d < 2**28, each split
      as hi 2**14 + lo and the parts summed term by term (|sum hi| <= D 2**14, sum lo <
      D 2**14), vectorised along the keys (`_scores_by_terms`): XLA:CPU's int32 dot and its
      sums over the short head axis take 2-3 times as long, and a float64 dot (below) twice.
    * Several queries on a CPU: one float64 dot in which no rounding can happen
      (`_scores_float64`), about a sixth less time for the whole parallel pass than the terms.
    * Several queries elsewhere: int8 digit products (one dot_general) whose sums are carried
      into the form hi 2**14 + lo (`_scores_digits`), which int8 matrix units run fastest.

    The choice depends only on the shape and the platform (`jax.lax.platform_dependent`).

    Returns:
      int32 [B, H, Tq, Tk].
    """
    if q.shape[2] == 1:
        return _scores_by_terms(q, k, r)
    cpu, digits = (functools.partial(f, r=r) for f in (_scores_float64, _scores_digits))
    return jax.lax.platform_dependent(q, k, cpu=cpu, default=digits)


def _scores_by_terms(q: jax.Array, k: jax.Array, r: int) -> jax.Array:
    """`_scores` of one query as a sum of D products q_d k_d, each split as hi 2**14 + lo (see
    there), the keys read where they are in the cache."""
    high = low = jnp.zeros((), jnp.int32)
    for d in range(q.shape[-1]):
        prod = q[..., d, None] * k[:, :, None, :, d].astype(jnp.int32)  # [B, H, 1, Tk]
        high = high + jnp.right_shift(prod, 14)
        low = low + jnp.bitwise_and(prod, (1 << 14) - 1)
    # floor((high 2**14 + low + 2**(r - 1)) / 2**r) with 0 <= r <= 14.
    return jnp.left_shift(high, 14 - r) + _shift(low, -r)


def _scores_float64(q: jax.Array, k: jax.Array, r: int) -> jax.Array:
    """`_scores` as one float64 dot, exact (one of the module's exact float steps: its docstring).

    q and k are integers below 2**14 in magnitude, so each product is an integer below 2**28
    and each partial sum, in whatever order and with or without fused multiply-adds, one below
    D 2**28 <= 2**52: float64 holds every one exactly, as it does the sum plus 2**(r - 1), that
    times 2**-r and its floor. Nothing is ever rounded, so every IEEE-754 machine gives the
    same integers as the integer forms (tests/integer_test.py compares them at the extremes).
    """
    assert q.shape[-1] <= 1 << 24, "more than 2**24 terms could leave float64's exact range"
    with jax.enable_x64(True):
        acc = jnp.einsum(
            "bhqd,bhkd->bhqk", q.astype(jnp.float64), k.astype(jnp.float64),
            precision=jax.lax.Precision.HIGHEST,
        )  # fmt: skip
        return jnp.floor((acc + ((1 << r) >> 1)) * 2.0**-r).astype(jnp.int32)


def _scores_digits(q: jax.Array, k: jax.Array, r: int) -> jax.Array:
    """`_scores` through int8 digit products (see there)."""
    acc = jnp.einsum(
        "ibhqd,jbhkd->ijbhqk", _digits(q, 2), _digits(k.astype(jnp.int32), 2),
        preferred_element_type=jnp.int32,
    )  # fmt: skip
    carry0 = acc[0, 0]
    carry1 = acc[0, 1] + acc[1, 0] + jnp.right_shift(carry0, DIGIT_BITS)
    high = acc[1, 1] + jnp.right_shift(carry1, DIGIT_BITS)
    low = jnp.left_shift(jnp.bitwise_and(carry1, 127), 7) + jnp.bitwise_and(carry0, 127)
    return jnp.left_shift(high, 14 - r) + _shift(low, -r)


def _weighted_sum(w: jax.Array, v: jax.Array) -> jax.Array:
    """sum_k w[..., q, k] v[..., k, :] exactly: w [B, H, Tq, Tk] (sum <= 2**14 + 1 per query,
    each < 2**14), v [B, H, Tk, D] 14-bit; every partial sum < 2**28, so int32 sums are exact
    in any order. One query: int32 products summed; several: one exact float32 product on a CPU
    (`_weighted_sum_float32`: a tenth off the parallel pass against an int32 product), int8
    digit products elsewhere (`jax.lax.platform_dependent`).

    Returns:
      int32 [B, H, Tq, D].
    """
    if w.shape[2] == 1:
        return _fold(jnp.sum, w[..., None] * v[:, :, None, :, :].astype(jnp.int32), -2, False)
    return jax.lax.platform_dependent(w, v, cpu=_weighted_sum_float32, default=_weighted_sum_digits)


def _weighted_sum_float32(w: jax.Array, v: jax.Array) -> jax.Array:
    """`_weighted_sum` as one float32 product, exact: v's two digits (v = hi 128 + lo, lo in
    [0, 127], hi in [-128, 127]) side by side, each times w.

    Every product w_k d_k is an integer below 2**21 in magnitude and every partial sum, in
    whatever order and with or without fused multiply-adds, at most 128 sum(w) <= 2**21 + 128
    (`_attend`'s weights sum to at most 2**14 + 1): below 2**24, so float32 holds each one
    exactly and nothing is ever rounded, on any IEEE-754 machine. The digit sums come back to
    int32 exactly and combine as hi 128 + lo < 2**28.
    """
    v = v.astype(jnp.int32)
    # `_digits`' split, side by side along D: a digit axis of its own ran 7-10% slower here.
    digits = jnp.concatenate([jnp.bitwise_and(v, 127), jnp.right_shift(v, DIGIT_BITS)], -1)
    acc = jnp.einsum(
        "bhqk,bhkd->bhqd", w.astype(jnp.float32), digits.astype(jnp.float32),
        precision=jax.lax.Precision.HIGHEST,
    ).astype(jnp.int32)  # fmt: skip
    low, high = jnp.split(acc, 2, axis=-1)
    return low + jnp.left_shift(high, DIGIT_BITS)


def _weighted_sum_digits(w: jax.Array, v: jax.Array) -> jax.Array:
    """`_weighted_sum` through int8 digit products."""
    acc = jnp.einsum(
        "ibhqk,jbhkd->ijbhqd", _digits(w, 2), _digits(v.astype(jnp.int32), 2),
        preferred_element_type=jnp.int32,
    )  # fmt: skip
    return _combine(acc, 0)  # all shifts left: exact


def _attend(q, eq, k, ek, v, ev, mask, ls: LayerSpec, exp_table: jax.Array) -> jax.Array:
    """Integer softmax attention.

    Args:
      q: int32 [B, Tq, H, D] 14-bit, eq int32 [B, Tq, H]: queries q * 2**eq (log2 units).
      k, v: int16 [B, H, Tk, D] 14-bit; ek, ev int32 [B, H, Tk] their exponents.
      mask: bool broadcastable to [B, H, Tq, Tk], True where the key is visible.
      ls: the layer's formats.
      exp_table: the 2**-f table.

    Returns:
      int32 [B, Tq, H, D] at 2**ls.f_att.
    """
    r = _dot_shift(q.shape[-1], 2, 2)
    q, eq = _materialize(q, eq)
    acc = _scores(jnp.transpose(q, (0, 2, 1, 3)), k, r)
    e_q = jnp.transpose(eq, (0, 2, 1))[..., None]
    scores = _materialize(_shift(acc, r + ls.f_s + e_q + ek[:, :, None, :]))
    top = _fold(jnp.max, jnp.where(mask, scores, _NEG))
    p = jnp.where(
        mask, _exp2_neg(jnp.where(mask, top - scores, 0), ls.f_s, PROB_BITS, exp_table), 0
    )
    p = _materialize(p)
    # w = p 2**14 / sum(p) through one division per row: with b = bitlen(sum) and the sum's
    # top 15 bits m (in [2**14, 2**15)), w = p floor((2**29 - 1) / m) / 2**b, p <= 2**16:
    # each product < 2**31, and sum(w) <= 2**14 (1 + 2**-14).
    total = _fold(jnp.sum, p)  # >= 2**16 (the maximum), < 2**31
    b = _bitlen(total)
    scale = jax.lax.div(jnp.int32((1 << 29) - 1), jnp.right_shift(total, b - 15))
    w = jnp.minimum(jnp.right_shift(p * scale, b), (1 << WEIGHT_BITS) - 1)
    # Each value's own exponent: shift its weight to the largest visible exponent's scale.
    e_v = ev[:, :, None, :]
    e_top = _fold(jnp.max, jnp.where(mask, e_v, _NEG))  # [B, H, Tq, 1]
    w = _materialize(jnp.right_shift(w, jnp.minimum(e_top - e_v, 31)))
    out = _shift(_weighted_sum(w, v), e_top - WEIGHT_BITS + ls.f_att)  # [B, H, Tq, D]
    return jnp.transpose(out, (0, 2, 1, 3))


def _qkv(layer: dict, ls: LayerSpec, h, f_h: int, positions, heads: int):
    """Projections as 14-bit ints with exponents: (q, eq), (k, ek) (rotated if `positions` holds
    rotary (cos, sin) tables broadcastable to [B, T, 1, D / 2]; None: not rotated), (v, ev)."""
    batch, length, width = h.shape
    shape = (batch, length, heads, width // heads)

    def project(name, f, rotate):
        x = _linear(h, f_h, layer[name], f).reshape(shape)
        if rotate and positions is not None:
            return _rotate(x, f, *positions)
        x, s = _quantize_rows(x, ACT_BITS)
        return x, s[..., 0] - f

    return (*project("q", ls.f_q, True), *project("k", ls.f_k, True), *project("v", ls.f_v, False))


def _block(layer: dict, ls: LayerSpec, spec: IntegerSpec, tables: dict, x, positions, attend):
    """One residual block on x [B, T, width] (2**ls.f_in); `attend` maps q, k, v to the output.

    Returns:
      (x int32 [B, T, width] at the block's output format, whatever `attend` returned second).
    """
    pre = spec.norm == "pre"
    ln = functools.partial(_layer_norm, eps=spec.eps)
    h, f_h = x, ls.f_in
    if pre:
        h, f_h = ln(x, ls.f_in, layer["ln1"], ls.g1, ls.f_ln1), ls.f_ln1
    att, extra = attend(*_qkv(layer, ls, h, f_h, positions, spec.num_heads))
    att = att.reshape(x.shape)
    x1 = _shift(x, ls.f_res1 - ls.f_in) + _linear(att, ls.f_att, layer["o"], ls.f_res1)
    if pre:
        h, f_h = ln(x1, ls.f_res1, layer["ln2"], ls.g2, ls.f_ln2), ls.f_ln2
        base, f_base = x1, ls.f_res1
    else:
        h, f_h = ln(x1, ls.f_res1, layer["ln1"], ls.g1, ls.f_ln1), ls.f_ln1
        base, f_base = h, f_h
    hidden = _gelu(_linear(h, f_h, layer["mlp_in"], ls.f_h), ls.f_h, tables["gelu"])
    x2 = _shift(base, ls.f_res2 - f_base) + _linear(hidden, ls.f_h, layer["mlp_out"], ls.f_res2)
    if pre:
        return x2, extra
    return ln(x2, ls.f_res2, layer["ln2"], ls.g2, ls.f_ln2), extra


def _output_tables(params: IntegerParams, x: jax.Array) -> jax.Array:
    """Frequency tables int32 [..., vocab] (total 2**16) from the last block's output."""
    spec, arrays = params.spec, params.arrays
    f_x = spec.layers[-1].f_res2 if spec.norm == "pre" else spec.layers[-1].f_ln2
    if spec.norm == "pre":
        x = _layer_norm(x, f_x, arrays["final_ln"], spec.g_final, spec.f_final, spec.eps)
    logits = _linear(x, spec.f_final, arrays["head"], spec.f_logits)  # log2 units
    u = _fold(jnp.max, logits) - logits
    bits = 30 - math.ceil(math.log2(spec.vocab_size))  # a table's weights sum to <= 2**30
    weights = _materialize(_exp2_neg(u, spec.f_logits, bits, arrays["tables"]["exp2"]))
    return quantize.quantize_weights(weights.astype(jnp.uint32), PRECISION_BITS, jnp)


QUERY_BLOCK = 64  # queries per attention block of the parallel pass (`tables`)
MAX_QUERY_BLOCKS = 8  # each block compiles on its own; more did not run faster (BENCHMARKS.md)


def _query_blocks(length: int, block: int) -> list[tuple[int, int]]:
    """[start, stop) of about `length / block` equal blocks of positions (one if shorter), at
    most MAX_QUERY_BLOCKS (bench/query_blocks.py measures the choice)."""
    n = max(1, min(MAX_QUERY_BLOCKS, length // block))
    bounds = [length * i // n for i in range(n + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def tables(params: IntegerParams, tokens: jax.Array, query_block: int = QUERY_BLOCK) -> jax.Array:
    """Frequency tables of every position in one parallel pass (jittable).

    Attention goes in blocks of about `query_block` queries (at most MAX_QUERY_BLOCKS blocks),
    each against the keys up to its last query only: causal attention's other scores are
    masked anyway, so every block's numbers are those of one pass over all keys (every op is
    exact and per query), in about 5/8 of the work at four blocks and with a block's scores
    small enough to stay in a CPU's cache.

    Args:
      params: from `quantize_params`.
      tokens: int32 [batch, length], length <= the context.
      query_block: queries per attention block (static).

    Returns:
      int32 [batch, length, vocab]: entry t is the table of tokens[:, t] given tokens[:, :t]
      (token 0 stands before the first), each >= 1 and summing to 2**16.
    """
    spec, arrays = params.spec, params.arrays
    length = tokens.shape[1]
    inputs = jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)))
    x, rotary = arrays["embed"][inputs], None
    if spec.positions == "sinusoidal":
        x = x + arrays["tables"]["sinusoids"][None, :length]
    else:
        rotary = tuple(arrays["tables"][k][None, :length, None, :] for k in ("cos", "sin"))
    causal = jnp.tril(jnp.ones((length, length), bool))

    for layer, ls in zip(arrays["blocks"], spec.layers, strict=True):

        def attend(q, eq, k, ek, v, ev, ls=ls):
            k, v = (jnp.transpose(x, (0, 2, 1, 3)).astype(jnp.int16) for x in (k, v))
            ek, ev = jnp.transpose(ek, (0, 2, 1)), jnp.transpose(ev, (0, 2, 1))
            out = []
            for start, stop in _query_blocks(length, query_block):  # keys up to `stop`
                out.append(_attend(
                    q[:, start:stop], eq[:, start:stop], k[:, :, :stop], ek[:, :, :stop],
                    v[:, :, :stop], ev[:, :, :stop], causal[start:stop, :stop], ls,
                    arrays["tables"]["exp2"],
                ))  # fmt: skip
            return jnp.concatenate(out, axis=1), None

        x, _ = _block(layer, ls, spec, arrays["tables"], x, rotary, attend)
    return _output_tables(params, x)


def init_cache(
    model: "IntegerParams | transformer.TransformerConfig",
    batch_size: int,
    max_length: int | None = None,
) -> Cache:
    """An empty KV cache for `decode_step`.

    Args:
      model: the integer params or the architecture.
      batch_size: rows.
      max_length: cache length (default the context).

    Returns:
      Per layer i: "k{i}", "v{i}" int16 [batch, heads, length, head_dim] (14-bit keys and
      values) and "ke{i}", "ve{i}" int32 [batch, heads, length] (their exponents).
    """
    spec = model.spec if isinstance(model, IntegerParams) else model
    layers = len(spec.layers) if isinstance(model, IntegerParams) else spec.num_layers
    length = max_length or spec.context_length
    shape = (batch_size, spec.num_heads, length, spec.head_dim)
    cache = {}
    for i in range(layers):
        for kind in "kv":
            cache[f"{kind}{i}"] = jnp.zeros(shape, jnp.int16)
            cache[f"{kind}e{i}"] = jnp.zeros(shape[:3], jnp.int32)
    return cache


def decode_step(
    params: IntegerParams,
    prev_tokens: jax.Array,
    index: jax.Array,
    cache: Cache,
    kv_length: int | None = None,
) -> tuple[jax.Array, Cache]:
    """One incremental step with the same numbers as `tables` (jittable; mirrors
    `transformer.Transformer.decode`).

    Args:
      params: from `quantize_params`.
      prev_tokens: int32 [batch], the token at position index - 1 (0 at index 0).
      index: int32 scalar position whose table is returned.
      cache: from `init_cache` (filled by the previous steps).
      kv_length: static bound (> index) on the filled cache; attention reads only that much.

    Returns:
      (int32 [batch, vocab] table of position `index`, the updated cache).
    """
    spec, arrays = params.spec, params.arrays
    x, rotary = arrays["embed"][prev_tokens][:, None, :], None
    at = functools.partial(jax.lax.dynamic_index_in_dim, index=index, keepdims=False)
    if spec.positions == "sinusoidal":
        x = x + at(arrays["tables"]["sinusoids"])
    else:
        rotary = (at(arrays["tables"]["cos"]), at(arrays["tables"]["sin"]))
    new_cache = {}
    for i, (layer, ls) in enumerate(zip(arrays["blocks"], spec.layers, strict=True)):

        def attend(q, eq, k, ek, v, ev, ls=ls, i=i):
            update = functools.partial(jax.lax.dynamic_update_slice_in_dim, start_index=index)
            heads_first = functools.partial(jnp.swapaxes, axis1=1, axis2=2)
            ks = update(cache[f"k{i}"], heads_first(k).astype(jnp.int16), axis=2)
            vs = update(cache[f"v{i}"], heads_first(v).astype(jnp.int16), axis=2)
            kes = update(cache[f"ke{i}"], heads_first(ek), axis=2)
            ves = update(cache[f"ve{i}"], heads_first(ev), axis=2)
            length = min(kv_length or ks.shape[2], ks.shape[2])
            mask = (jnp.arange(length) <= index)[None, :]
            out = _attend(
                q, eq, ks[:, :, :length], kes[:, :, :length], vs[:, :, :length],
                ves[:, :, :length], mask, ls, arrays["tables"]["exp2"],
            )  # fmt: skip
            return out, {f"k{i}": ks, f"v{i}": vs, f"ke{i}": kes, f"ve{i}": ves}

        x, entries = _block(layer, ls, spec, arrays["tables"], x, rotary, attend)
        new_cache.update(entries)
    return _output_tables(params, x)[:, 0], new_cache


def code_length_bits(freqs, tokens) -> np.ndarray:
    """Ideal code length of tokens under integer tables: sum -log2(freq / 2**16) per row.

    Args:
      freqs: int [batch, length, vocab] tables (total 2**16).
      tokens: int [batch, length].

    Returns:
      float64 [batch] bits (a host-side measurement, not part of any coding).
    """
    freqs = np.asarray(freqs)
    picked = np.take_along_axis(freqs, np.asarray(tokens)[..., None], -1)[..., 0]
    return np.sum(PRECISION_BITS - np.log2(picked.astype(np.float64)), axis=-1)
