"""Tests for coding.quantize: valid tables, an exact rational check, NumPy == JAX bit for bit."""

import math
from fractions import Fraction

import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import strategies as st

from coding import quantize

KINDS = ("random", "peaked", "near_zero", "uniform", "sum_high", "sum_low", "spiky_logits")


def make_probs(kind: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Returns float32 probabilities `[*shape]` of a given kind (last axis is the vocab)."""
    rng = np.random.default_rng(seed)
    vocab = shape[-1]
    if kind == "random":
        p = rng.dirichlet(np.full(vocab, 0.3), size=shape[:-1])
    elif kind == "peaked":  # One symbol at ~1 - 1e-7, the rest sharing 1e-7.
        p = rng.dirichlet(np.ones(vocab), size=shape[:-1]) * 1e-7
        top = rng.integers(vocab, size=shape[:-1])
        np.put_along_axis(p, top[..., None], 1 - 1e-7, axis=-1)
    elif kind == "near_zero":  # Tiny, subnormal and zero entries next to normal ones.
        p = rng.choice([0.0, 1e-45, 1e-40, 1e-30, 1e-9, 1e-6], size=shape)
        top = rng.integers(vocab, size=shape[:-1])
        np.put_along_axis(p, top[..., None], 1.0, axis=-1)
    elif kind == "uniform":
        p = np.full(shape, 1.0 / vocab)
    elif kind in ("sum_high", "sum_low"):  # Sums slightly off 1, as after a float32 softmax.
        p = rng.dirichlet(np.full(vocab, 0.5), size=shape[:-1])
        p = p * (1 + rng.choice([1e-6, 1e-3], size=shape[:-1] + (1,)) * (kind == "sum_high" or -1))
    elif kind == "spiky_logits":
        logits = rng.standard_normal(shape) * rng.choice([1.0, 5.0, 20.0], size=shape[:-1] + (1,))
        return np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32)))
    else:
        raise ValueError(kind)
    return p.astype(np.float32)


def _exact_reference(probs: np.ndarray, precision_bits: int) -> np.ndarray:
    """Computes one table with Python fractions and big integers (independent of the code)."""
    vocab = probs.shape[-1]
    bits = min(24, 30 - math.ceil(math.log2(vocab)))
    clipped = [
        min(max(Fraction(float(p)), Fraction(0)), Fraction(1)) if p == p else 0 for p in probs
    ]
    weights = [math.floor(p * 2**bits) for p in clipped]
    if sum(weights) == 0:
        weights = [1] * vocab
    spare = 2**precision_bits - vocab
    scaled = [w * spare // sum(weights) for w in weights]
    top = max(range(vocab), key=lambda i: (weights[i], -i))
    scaled[top] += spare - sum(scaled)
    return np.array([s + 1 for s in scaled])


_quantize_jit = jax.jit(quantize.quantize_jax, static_argnames="precision_bits")


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(
    kind=st.sampled_from(KINDS),
    vocab=st.sampled_from([1, 2, 3, 17, 256, 4096]),
    precision_bits=st.sampled_from([13, 16]),
    seed=st.integers(0, 2**32 - 1),
)
def test_tables_are_valid_and_match_exact_rational_computation(kind, vocab, precision_bits, seed):
    probs = make_probs(kind, (3, vocab), seed)
    freqs = quantize.quantize_np(probs, precision_bits)
    assert freqs.dtype == np.int32 and freqs.shape == probs.shape
    assert freqs.min() >= 1
    np.testing.assert_array_equal(freqs.sum(-1), 2**precision_bits)
    if vocab <= 256:
        for row_probs, row_freqs in zip(probs, freqs, strict=True):
            np.testing.assert_array_equal(row_freqs, _exact_reference(row_probs, precision_bits))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("vocab", [2, 3, 256, 4096])
def test_numpy_and_jax_agree_bit_for_bit(kind, vocab):
    for seed in range(4):
        probs = make_probs(kind, (8, vocab), seed + 1000 * vocab)
        expected = quantize.quantize_np(probs)
        np.testing.assert_array_equal(np.asarray(_quantize_jit(probs)), expected)
        if vocab <= 2048:
            coarse = quantize.quantize_np(probs, precision_bits=12)
            np.testing.assert_array_equal(
                np.asarray(_quantize_jit(probs, precision_bits=12)), coarse
            )


def _boundary_quotients():
    """(w, total) uint32 [n, 1] with w m / total (m = 2**16 - 256) on, just under and just over
    integers, w <= total, and the exact floors."""
    m = (1 << 16) - 256
    w, totals = [], []
    for total in (1 << 30, (1 << 30) - 1, (1 << 30) - 3, 999_999_937, 65_281, 3):
        if math.gcd(m, total) == 1:  # w m = d (mod total): the quotient an integer + d / total
            w += [(d * pow(m, -1, total)) % total for d in range(-3, 4)]
            totals += [total] * 7
        w += [total, total - 1, total // 2, 1, 0]
        totals += [total] * 5
    w, totals = np.array(w, np.uint32)[:, None], np.array(totals, np.uint32)[:, None]
    return w, totals, (w.astype(object) * m) // totals.astype(object)


@pytest.mark.parametrize("floor_error", [0, -1, 1])
def test_floor_mul_div_exact_on_either_side_of_integers(monkeypatch, floor_error):
    """floor(w m / total) by JAX (on a CPU one float64 division whose quotient integer checks
    correct: here also with its floor made one too small or too large) and by the uint32 long
    division, where w m lies on, just under and just over multiples of total."""
    w, totals, want = _boundary_quotients()
    m = (1 << 16) - 256
    pairs = zip(w[:, 0].tolist(), totals[:, 0].tolist(), strict=True)
    assert any(x * m % t == t - 1 for x, t in pairs)  # a quotient just under an integer
    np.testing.assert_array_equal(quantize._floor_mul_div(w, totals, m, 16, np), want)
    # What other devices run, run here in JAX.
    other = jax.jit(lambda w, t: quantize._long_division(w, t, m, 16, jnp))(w, totals)
    np.testing.assert_array_equal(np.asarray(other).astype(object), want)
    floor = jnp.floor
    monkeypatch.setattr(quantize.jnp, "floor", lambda x: floor(x) + floor_error)
    got = jax.jit(lambda w, t: quantize._floor_mul_div(w, t, m, 16, jnp))(w, totals)
    np.testing.assert_array_equal(np.asarray(got).astype(object), want)


def test_jax_agrees_under_vmap_and_scan():
    probs = make_probs("spiky_logits", (6, 5, 256), seed=7)
    expected = quantize.quantize_np(probs)
    vmapped = jax.jit(jax.vmap(jax.vmap(quantize.quantize_jax)))(probs)

    def step(carry, p):
        return carry, quantize.quantize_jax(p)

    _, scanned = jax.jit(lambda p: jax.lax.scan(step, 0, p))(probs)
    np.testing.assert_array_equal(np.asarray(vmapped), expected)
    np.testing.assert_array_equal(np.asarray(scanned), expected)


def test_nan_inf_negative_and_zero_inputs_are_sanitised_identically():
    probs = np.array(
        [
            [np.nan, 0.5, np.inf, -1.0],
            [0.0, 0.0, 0.0, 0.0],
            [np.nan, np.nan, np.nan, np.nan],
            [-0.0, 1e-45, 1e-38, 2.0],
        ],
        dtype=np.float32,
    )
    freqs = quantize.quantize_np(probs)
    np.testing.assert_array_equal(np.asarray(_quantize_jit(probs)), freqs)
    np.testing.assert_array_equal(freqs[0], [1, 21845, 43689, 1])  # NaN, -1 -> 0; inf -> 1.
    np.testing.assert_array_equal(freqs[1], [16384] * 4)  # All zero -> uniform.
    np.testing.assert_array_equal(freqs[3], [1, 1, 1, 65533])


def test_peaked_distribution_leaves_the_minimum_to_the_rest():
    probs = np.full(256, 1e-7 / 255, dtype=np.float32)
    probs[42] = 1 - 1e-7
    freqs = quantize.quantize_np(probs)
    assert freqs[42] == 2**16 - 255
    assert np.all(np.delete(freqs, 42) == 1)


def test_golden_table():
    np.testing.assert_array_equal(quantize.quantize_np([0.7, 0.2, 0.1]), [45875, 13107, 6554])
    np.testing.assert_array_equal(quantize.quantize_np([0.5, 0.25, 0.125, 0.125], 4), [8, 4, 2, 2])


def test_uniform_and_ties_are_exact():
    np.testing.assert_array_equal(quantize.quantize_np(np.full(256, 1 / 256)), 256)
    # Three-way tie: the remainder goes to the lowest index among the largest weights.
    np.testing.assert_array_equal(quantize.quantize_np(np.full(3, 1 / 3)), [21846, 21845, 21845])


@pytest.mark.parametrize("kind", ["random", "spiky_logits"])
def test_frequencies_are_close_to_probabilities(kind):
    probs = make_probs(kind, (16, 256), seed=3).astype(np.float64)
    probs /= probs.sum(-1, keepdims=True)
    freqs = quantize.quantize_np(probs)
    # Each symbol is within its +1 floor and one unit of rounding, except the remainder holder.
    error = freqs - probs * (2**16 - 256)
    top = np.argmax(freqs, axis=-1)
    np.put_along_axis(error, top[:, None], 1.0, axis=-1)
    assert error.min() >= -0.05 and error.max() <= 2.05


def test_cdf_numpy_and_jax_agree():
    freqs = quantize.quantize_np(make_probs("random", (4, 7, 3), seed=1))
    cdf = quantize.cdf_np(freqs)
    np.testing.assert_array_equal(np.asarray(jax.jit(quantize.cdf_jax)(freqs)), cdf)
    np.testing.assert_array_equal(cdf[..., 0], 0)
    np.testing.assert_array_equal(cdf[..., -1], 2**16)
    np.testing.assert_array_equal(np.diff(cdf, axis=-1), freqs)


def test_rejects_alphabets_that_do_not_fit_one_table():
    with pytest.raises(ValueError, match=r"vocab=32769 .* factorise the alphabet"):
        quantize.quantize_np(np.ones(32769) / 32769)
    with pytest.raises(ValueError, match=r"vocab=257 .* precision_bits=9"):
        quantize.quantize_jax(jnp.ones(257), precision_bits=9)
    with pytest.raises(ValueError, match=r"vocab=0"):
        quantize.quantize_np(np.ones((3, 0)))


@pytest.mark.parametrize("precision_bits", [0, 17, 16.0])
def test_rejects_bad_precision(precision_bits):
    with pytest.raises(ValueError, match="precision_bits"):
        quantize.quantize_np(np.ones(4) / 4, precision_bits)
