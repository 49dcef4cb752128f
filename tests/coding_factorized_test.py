"""Tests for coding.factorized: large alphabets coded exactly as high and low parts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coding import factorized
from coding import range_coder as rc


def _softmax_probs(shape, seed, scale=3.0):
    logits = np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * scale
    return np.array(jax.nn.softmax(jnp.asarray(logits)))


def _sample_tokens(probs, seed):
    rng = np.random.default_rng(seed)
    p = probs.astype(np.float64).reshape(-1, probs.shape[-1])
    p /= p.sum(-1, keepdims=True)
    return np.array([rng.choice(p.shape[-1], p=row) for row in p]).reshape(probs.shape[:-1])


_high_jit = jax.jit(factorized.high_freqs_jax)
_low_jit = jax.jit(factorized.low_freqs_jax)


def test_split_and_merge_are_inverse():
    tokens = np.arange(65536)
    high, low = factorized.split_tokens(tokens)
    assert high.max() == 255 and low.max() == 255
    np.testing.assert_array_equal(factorized.merge_tokens(high, low), tokens)


@pytest.mark.parametrize("vocab", [3, 256, 4096, 50257, 65536])
def test_tables_are_valid_and_identical_in_numpy_and_jax(vocab):
    probs = _softmax_probs((4, vocab), seed=vocab)
    probs[0] = 0.0  # All zero: uniform fallback.
    probs[1, :] = 1e-40
    probs[1, vocab // 2] = 1 - 1e-7  # Peaked with subnormal tail.
    high = factorized.high_freqs_np(probs)
    assert high.shape == (4, factorized.num_groups(vocab))
    np.testing.assert_array_equal(np.asarray(_high_jit(probs)), high)
    np.testing.assert_array_equal(high.sum(-1), 2**16)
    assert high.min() >= 1
    groups = np.random.default_rng(0).integers(factorized.num_groups(vocab), size=4)
    low = factorized.low_freqs_np(probs, groups)
    np.testing.assert_array_equal(np.asarray(_low_jit(probs, groups)), low)
    np.testing.assert_array_equal(low.sum(-1), 2**16)
    assert low.min() >= 1


def test_high_table_follows_group_probabilities():
    probs = _softmax_probs((8, 4096), seed=1, scale=1.0)
    group_probs = probs.astype(np.float64).reshape(8, 16, 256).sum(-1)
    high = factorized.high_freqs_np(probs)
    error = high - group_probs / group_probs.sum(-1, keepdims=True) * 2**16
    top = np.argmax(high, axis=-1)[:, None]
    assert np.abs(np.take_along_axis(error, top, axis=-1)).max() <= 16 + 2  # Gets the remainder.
    np.put_along_axis(error, top, 0, axis=-1)
    assert np.abs(error).max() <= 2  # Everything else: +1 floor, flooring, float32 rounding.


@pytest.mark.parametrize("vocab", [4096, 65536])
def test_round_trip_numpy_and_jax(vocab):
    batch, tokens_per_chunk = 3, 24
    probs = _softmax_probs((batch, tokens_per_chunk, vocab), seed=vocab, scale=4.0)
    tokens = _sample_tokens(probs, seed=2)
    tokens[0, :3] = [0, vocab - 1, vocab // 3]  # Unlikely tokens at the alphabet's edges.
    lengths = np.array([tokens_per_chunk, 0, 7])
    starts, freqs = factorized.intervals_np(probs, tokens)
    jax_starts, jax_freqs = jax.jit(factorized.intervals_jax)(probs, tokens)
    np.testing.assert_array_equal(np.asarray(jax_starts), starts)
    np.testing.assert_array_equal(np.asarray(jax_freqs), freqs)
    steps = factorized.STEPS_PER_TOKEN * lengths
    data, num_bytes = rc.encode_np(starts, freqs, steps)
    np.testing.assert_array_equal(np.asarray(rc.encode_jax(starts, freqs, steps)[0]), data)
    valid = np.arange(tokens_per_chunk)[None, :] < lengths[:, None]

    state = rc.decode_init_np(data, num_bytes, steps)
    decoded = np.zeros_like(tokens)
    for t in range(tokens_per_chunk):
        decoded[:, t], state = factorized.decode_step_np(state, probs[:, t])
    rc.check_errors(rc.decode_finish_np(state))
    np.testing.assert_array_equal(decoded, np.where(valid, tokens, 0))

    @jax.jit
    def decode_jax(data, num_bytes, steps, probs):
        def step(state, step_probs):
            return factorized.decode_step_jax(state, step_probs)[::-1]

        state = rc.decode_init_jax(data, num_bytes, steps)
        state, decoded = jax.lax.scan(step, state, jnp.swapaxes(probs, 0, 1))
        return decoded.T, rc.decode_finish_jax(state)

    decoded, errors = decode_jax(data, num_bytes, steps, probs)
    rc.check_errors(errors)
    np.testing.assert_array_equal(np.asarray(decoded), np.where(valid, tokens, 0))
    # Code length: the model's own -log2 p plus quantisation loss and the final byte.
    picked = np.take_along_axis(probs.astype(np.float64), tokens[..., None], axis=-1)[..., 0]
    ideal = np.where(valid, -np.log2(picked), 0).sum(-1)
    assert np.all(num_bytes * 8 <= ideal * 1.01 + 0.02 * lengths + 8)


def test_invalid_inputs_raise():
    with pytest.raises(ValueError, match=r"vocab=65537 must lie in \[1, 2\*\*\(2\*low_bits\)"):
        factorized.high_freqs_np(np.ones(65537))
    with pytest.raises(ValueError, match=r"vocab=256 symbols does not fit one table"):
        factorized.high_freqs_np(np.ones(300), precision_bits=8)
    probs = np.ones((1, 2, 300), np.float32) / 300
    with pytest.raises(ValueError, match=r"token 300 is outside the alphabet \[0, 300\)"):
        factorized.intervals_np(probs, [[0, 300]])
    starts, freqs = factorized.intervals_jax(probs, jnp.array([[0, -1]]))
    with pytest.raises(ValueError, match="invalid interval in chunk 0"):
        rc.encode_jax(starts, freqs)
