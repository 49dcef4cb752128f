"""Tests for coding.topk: the paper's top-k coding with an escape, exact in NumPy and JAX."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coding import topk

coder = topk._coder  # the coder topk is wired to (the range coder)


def _softmax_probs(shape, seed, scale=3.0):
    logits = np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * scale
    return np.array(jax.nn.softmax(jnp.asarray(logits)))


def _tokens(probs, k, seed):
    """Tokens half inside the top k (ranks 0 and k - 1 included), half drawn uniformly."""
    rng = np.random.default_rng(seed)
    order = np.argsort(-probs, axis=-1, kind="stable")
    ranks = rng.choice([0, 1, k - 1], size=probs.shape[:-1])
    tokens = np.take_along_axis(order, ranks[..., None], axis=-1)[..., 0]
    uniform = rng.integers(0, probs.shape[-1], size=probs.shape[:-1])
    return np.where(rng.random(probs.shape[:-1]) < 0.5, tokens, uniform)


def _escapes_reference(probs, tokens, k):
    """Independent: a token escapes iff k ids rank before it (larger weight, or equal and lower)."""
    bits = 30 - math.ceil(math.log2(k + 1))
    weights = np.floor(np.clip(probs.astype(np.float64), 0, 1) * 2.0**bits)
    out = np.zeros(tokens.shape, bool)
    for index in np.ndindex(tokens.shape):
        w, t = weights[index], tokens[index]
        better = np.sum(w > w[t]) + np.sum(w[:t] == w[t])  # ids ranked before t
        out[index] = better >= k
    return out


@functools.partial(jax.jit, static_argnames=("k", "steps"))
def _decode_jax(words, num_words, probs, lengths, *, k, steps):
    """Decodes [batch, tokens] in one scan of topk.decode_step_jax, as a coder would."""
    state = coder.decode_init_jax(words, num_words, lengths * steps)

    def step(state, p):
        token, state = topk.decode_step_jax(state, p, topk.TopK(k))
        return state, token

    state, tokens = jax.lax.scan(step, state, jnp.swapaxes(probs, 0, 1))
    return tokens.T, coder.decode_finish_jax(state)


def test_steps_per_token_and_digit_layout():
    assert topk.steps_per_token(320) == 1 + 3  # 9 bits in 4-bit digits
    assert topk.steps_per_token(50257) == 1 + 4
    assert topk.steps_per_token(128256) == 1 + 5
    assert topk.digit_sizes(128256) == [2, 16, 16, 16, 16]  # 2 * 16**4 >= 128256
    assert topk.digit_sizes(50257) == [13, 16, 16, 16]
    assert topk.digit_sizes(2, digit_bits=1) == [2] and topk.digit_sizes(1) == [1]


@pytest.mark.parametrize("vocab,k", [(2, 1), (320, 10), (4096, 100), (50257, 100)])
def test_intervals_identical_in_numpy_and_jax(vocab, k):
    probs = _softmax_probs((4, 6, vocab), seed=vocab)
    probs[0, 0] = 1.0 / vocab  # all tied: the top k are ids 0..k-1
    probs[0, 1] = 0.0  # all zero
    probs[0, 2] = np.nan  # sanitised to zero like coding.quantize
    probs[1, 0, :] = 1e-40
    probs[1, 0, vocab // 2] = 1 - 1e-7  # peaked with a subnormal tail
    tokens = _tokens(np.nan_to_num(probs), k, seed=1)
    starts, freqs = topk.intervals_np(probs, tokens, topk.TopK(k))
    jax_starts, jax_freqs = jax.jit(topk.intervals_jax, static_argnums=2)(
        probs, tokens, topk.TopK(k)
    )
    np.testing.assert_array_equal(np.asarray(jax_starts), starts)
    np.testing.assert_array_equal(np.asarray(jax_freqs), freqs)
    assert freqs.shape == (4, 6, topk.steps_per_token(vocab)) and freqs.min() >= 1
    np.testing.assert_array_equal(
        topk.is_escape_np(probs, tokens, k),
        np.asarray(jax.jit(topk.is_escape_jax, static_argnums=2)(probs, tokens, k)),
    )


def test_ties_take_the_lowest_ids():
    vocab, k = 50, 5
    probs = np.full((1, vocab), 1 / vocab, np.float32)
    probs[0, 40] = 0.5  # the single largest, then ids 0..3 among the tied rest
    tokens = np.array([[40, 0, 3, 4, 49]])
    escaped = topk.is_escape_np(np.broadcast_to(probs, (5, vocab)), tokens[0], k)
    np.testing.assert_array_equal(escaped, [False, False, False, True, True])
    np.testing.assert_array_equal(
        escaped, np.asarray(topk.is_escape_jax(np.broadcast_to(probs, (5, vocab)), tokens[0], k))
    )


@pytest.mark.parametrize("vocab,k", [(320, 10), (50257, 100)])
def test_round_trip_numpy_and_jax_with_escapes_counted(vocab, k):
    batch, length = 3, 16
    probs = _softmax_probs((batch, length, vocab), seed=vocab + 1, scale=4.0)
    tokens = _tokens(probs, k, seed=2)
    tokens[0, :3] = [0, vocab - 1, vocab // 3]  # ids at the alphabet's edges
    lengths = np.array([length, 0, 9])
    steps = topk.steps_per_token(vocab)
    escapes = topk.count_escapes_np(probs, tokens, k, lengths)
    valid = np.arange(length) < lengths[:, None]
    reference = _escapes_reference(probs, tokens, k)
    np.testing.assert_array_equal(escapes, (reference & valid).sum(-1))
    assert escapes[0] >= 3 and escapes[1] == 0  # both kinds are exercised

    starts, freqs = topk.intervals_np(probs, tokens, topk.TopK(k))
    jax_starts, jax_freqs = jax.jit(topk.intervals_jax, static_argnums=2)(
        probs, tokens, topk.TopK(k)
    )
    # JAX intervals -> JAX encoder -> NumPy decoder.
    words, num_words = coder.encode_jax(
        jnp.reshape(jax_starts, (batch, -1)), jnp.reshape(jax_freqs, (batch, -1)), lengths * steps
    )
    state = coder.decode_init_np(np.asarray(words), np.asarray(num_words), lengths * steps)
    decoded = np.zeros_like(tokens)
    for t in range(length):
        decoded[:, t], state = topk.decode_step_np(state, probs[:, t], topk.TopK(k))
    np.testing.assert_array_equal(coder.decode_finish_np(state), 0)
    np.testing.assert_array_equal(np.where(valid, decoded, 0), np.where(valid, tokens, 0))
    # NumPy intervals -> NumPy encoder -> JAX decoder (a jitted scan).
    words, num_words = coder.encode_np(
        starts.reshape(batch, -1), freqs.reshape(batch, -1), lengths * steps
    )
    decoded, errors = _decode_jax(words, num_words, probs, lengths, k=k, steps=steps)
    np.testing.assert_array_equal(np.asarray(errors), 0)
    np.testing.assert_array_equal(
        np.where(valid, np.asarray(decoded), 0), np.where(valid, tokens, 0)
    )


def test_cost_follows_the_documented_charging():
    vocab, k, length = 4096, 100, 64
    probs = _softmax_probs((1, length, vocab), seed=5, scale=2.5)
    tokens = _tokens(probs, k, seed=6)
    escaped = topk.is_escape_np(probs, tokens, k)
    _, freqs = topk.intervals_np(probs, tokens, topk.TopK(k))
    bits = topk.code_length_bits(freqs)[0]
    p = np.take_along_axis(probs, tokens[..., None], axis=-1)[0, :, 0].astype(np.float64)
    top = -np.sort(-probs[0].astype(np.float64), axis=-1)[:, :k]
    escape_mass = 1 - top.sum(-1)
    expected = np.where(escaped[0], -np.log2(escape_mass) + 12.0, -np.log2(p))  # 4096 = 2**12
    assert escaped.sum() > 10 and (~escaped).sum() > 10
    assert np.abs(bits - expected).max() < 0.05  # quantisation and the near-certain digits
    overhead = bits[~escaped[0]] - expected[~escaped[0]]
    assert overhead.mean() < 0.01


def test_renormalize_gives_the_escape_only_the_floor():
    vocab, k = 320, 10
    probs = _softmax_probs((1, 8, vocab), seed=7)
    tokens = _tokens(probs, k, seed=8)
    escaped = topk.is_escape_np(probs, tokens, k)[0]
    _, freqs = topk.intervals_np(probs, tokens, topk.TopK(k, renormalize=True))
    np.testing.assert_array_equal(freqs[0, escaped, 0], 1)  # probability 2**-16
    top = -np.sort(-probs[0].astype(np.float64), axis=-1)[:, :k]
    p = np.take_along_axis(probs, tokens[..., None], axis=-1)[0, :, 0]
    rank_bits = 16 - np.log2(freqs[0, ~escaped, 0].astype(np.float64))
    np.testing.assert_allclose(rank_bits, -np.log2(p[~escaped] / top[~escaped].sum(-1)), atol=0.01)


def test_errors():
    probs = np.full((2, 8), 1 / 8, np.float32)
    with pytest.raises(ValueError, match="outside the alphabet"):
        topk.intervals_np(probs, np.array([0, 8]), topk.TopK(2))
    with pytest.raises(ValueError, match="k=9 must lie"):
        topk.intervals_np(probs, np.array([0, 1]), topk.TopK(9))
    with pytest.raises(ValueError, match="does not fit one table"):
        topk.check_topk(1 << 20, 1 << 15, 16, 4)
    with pytest.raises(ValueError, match="digit_bits"):
        topk.check_topk(320, 10, 16, 16)
    starts, freqs = topk.intervals_jax(probs, jnp.array([0, -1]), topk.TopK(2))
    assert int(freqs[1, 0]) == 0  # flagged for the encoder
    with pytest.raises(ValueError, match="invalid interval"):
        coder.encode_jax(starts, freqs)
