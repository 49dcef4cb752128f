"""Tests for coding.rans: round trips, NumPy == JAX words, code length, errors, corruption."""

import constriction
import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import strategies as st

from coding import quantize, rans

BATCH = 4
STEPS = 300  # One padded length for every property example: JAX compiles once per vocab.


def _tables(kind: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Returns int32 frequency tables `[*shape]` of a given kind via `quantize_np`."""
    rng = np.random.default_rng(seed)
    vocab = shape[-1]
    if kind == "random":
        probs = rng.dirichlet(np.full(vocab, 0.3), size=shape[:-1])
    elif kind == "peaked":
        probs = np.full(shape, 1e-7 / vocab)
        top = rng.integers(vocab, size=shape[:-1])
        np.put_along_axis(probs, top[..., None], 1 - 1e-7, axis=-1)
    elif kind == "near_zero":
        probs = rng.choice([0.0, 1e-40, 1e-12, 1e-5], size=shape)
        top = rng.integers(vocab, size=shape[:-1])
        np.put_along_axis(probs, top[..., None], rng.uniform(0.5, 1), axis=-1)
    else:
        probs = np.ones(shape)
    return quantize.quantize_np(probs.astype(np.float32))


def _sample(tables: np.ndarray, seed: int, adversarial: bool = False) -> np.ndarray:
    """Draws one symbol per table: from the table, or uniformly (worst case for code length)."""
    rng = np.random.default_rng(seed)
    if adversarial:
        return rng.integers(tables.shape[-1], size=tables.shape[:-1])
    cdf = quantize.cdf_np(tables)
    slots = rng.integers(2**16, size=tables.shape[:-1] + (1,))
    return (cdf[..., 1:] <= slots).sum(-1)


def _ideal_bits(tables: np.ndarray, symbols: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Returns `[batch]` sums of -log2(freq / 2**16) over each chunk's valid steps."""
    freqs = np.take_along_axis(tables, symbols[..., None], axis=-1)[..., 0]
    valid = np.arange(symbols.shape[1])[None, :] < lengths[:, None]
    return np.where(valid, -np.log2(freqs / 2**16), 0).sum(axis=1)


_intervals_jit = jax.jit(rans.symbol_intervals_jax, static_argnames="precision_bits")


def _round_trip(tables, symbols, lengths):
    """Encodes with both coders, checks they agree, decodes with both, returns the words."""
    starts, freqs = rans.symbol_intervals_np(tables, symbols)
    words, num_words = rans.encode_np(starts, freqs, lengths)
    jax_starts, jax_freqs = _intervals_jit(tables, symbols)
    np.testing.assert_array_equal(np.asarray(jax_starts), starts)
    np.testing.assert_array_equal(np.asarray(jax_freqs), freqs)
    jax_words, jax_num_words = rans.encode_jax(jax_starts, jax_freqs, lengths)
    np.testing.assert_array_equal(np.asarray(jax_words), words)
    np.testing.assert_array_equal(np.asarray(jax_num_words), num_words)
    valid = np.arange(symbols.shape[1])[None, :] < lengths[:, None]
    for decode in (rans.decode_tables_np, rans.decode_tables_jax):
        decoded, errors = decode(words, num_words, tables, lengths)
        np.testing.assert_array_equal(np.asarray(errors), 0)
        np.testing.assert_array_equal(np.where(valid, symbols, 0), np.asarray(decoded))
    return words, num_words


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
    kind=st.sampled_from(["random", "peaked", "near_zero", "uniform"]),
    vocab=st.sampled_from([2, 3, 256]),
    lengths=st.lists(st.sampled_from([0, 1, 2, 57, 299, STEPS]), min_size=BATCH, max_size=BATCH),
    adversarial=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_and_code_length(kind, vocab, lengths, adversarial, seed):
    tables = _tables(kind, (BATCH, STEPS, vocab), seed)
    symbols = _sample(tables, seed, adversarial)
    lengths = np.array(lengths)
    _, num_words = _round_trip(tables, symbols, lengths)
    # 32 bits of flushed state, plus the 16-bit word granularity, plus ~0.1% coder overhead.
    assert np.all(num_words * 16 <= _ideal_bits(tables, symbols, lengths) + 64)


def test_golden_stream():
    """Freezes the bitstream format: regenerate only on purpose (files on disk depend on it)."""
    tables = np.broadcast_to(quantize.quantize_np([0.5, 0.25, 0.125, 0.125]), (1, 10, 4))
    symbols = np.array([[0, 1, 2, 3, 0, 0, 3, 1, 0, 2]])  # 20 bits of information.
    words, num_words = rans.encode_np(*rans.symbol_intervals_np(tables, symbols))
    assert words[0, : num_words[0]].tolist() == [23, 1427, 57344]
    np.testing.assert_array_equal(
        np.asarray(
            rans.encode_jax_core(*rans.symbol_intervals_np(tables, symbols), np.array([10]))[0]
        ),
        words,
    )


def test_single_symbol_alphabet_and_lower_precision():
    tables = np.full((2, 50, 1), 2**16, dtype=np.int32)  # Probability 1: costs no bits.
    symbols = np.zeros((2, 50), dtype=np.int32)
    _, num_words = _round_trip(tables, symbols, np.array([50, 3]))
    np.testing.assert_array_equal(num_words, rans.FLUSH_WORDS)
    probs = np.random.default_rng(0).dirichlet(np.ones(5), size=(3, 40)).astype(np.float32)
    tables = quantize.quantize_np(probs, precision_bits=10)
    symbols = _sample(tables, 1, adversarial=True)
    starts, freqs = rans.symbol_intervals_np(tables, symbols, precision_bits=10)
    words, num_words = rans.encode_np(starts, freqs, precision_bits=10)
    jax_words, _ = rans.encode_jax(starts, freqs, precision_bits=10)
    np.testing.assert_array_equal(np.asarray(jax_words), words)
    decoded, errors = rans.decode_tables_jax(words, num_words, tables, np.full(3, 40), 10)
    np.testing.assert_array_equal(np.asarray(decoded), symbols)
    np.testing.assert_array_equal(np.asarray(errors), 0)


@pytest.mark.parametrize("kind", ["random", "peaked", "near_zero"])
def test_code_length_matches_constriction(kind):
    tables = _tables(kind, (3, 400, 256), seed=11)
    symbols = _sample(tables, seed=12)
    lengths = np.array([400, 250, 1])
    starts, freqs = rans.symbol_intervals_np(tables, symbols)
    _, num_words = rans.encode_np(starts, freqs, lengths)
    ideal = _ideal_bits(tables, symbols, lengths)
    for chunk in range(3):
        coder = constriction.stream.stack.AnsCoder()
        model = constriction.stream.model.Categorical(perfect=False)
        n = lengths[chunk]
        probs = tables[chunk, :n].astype(np.float64) / 2**16
        coder.encode_reverse(symbols[chunk, :n].astype(np.int32), model, probs)
        reference_bits = 32 * coder.num_words()
        our_bits = 16 * int(num_words[chunk])
        assert abs(our_bits - reference_bits) <= 64, (chunk, our_bits, reference_bits)
        assert ideal[chunk] <= our_bits <= ideal[chunk] + 64


def test_jax_decoder_in_jitted_scan_with_tables_from_previous_symbol():
    """A Markov 'model': each step's table is quantised on device from the decoded symbol."""
    vocab, steps = 256, 200
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((vocab, vocab)).astype(np.float32) * 4
    transition = np.asarray(jax.nn.softmax(jnp.asarray(logits)))  # [previous, vocab]
    symbols = np.zeros((BATCH, steps), dtype=np.int32)
    previous = np.zeros(BATCH, dtype=np.int32)
    all_tables = quantize.quantize_np(transition)  # The encoder quantises with NumPy.
    for t in range(steps):
        symbols[:, t] = _sample(all_tables[previous], seed=t)
        previous = symbols[:, t]
    contexts = np.concatenate([np.zeros((BATCH, 1), np.int32), symbols[:, :-1]], axis=1)
    lengths = np.array([steps, 0, 1, 123])
    starts, freqs = rans.symbol_intervals_np(all_tables[contexts], symbols)
    words, num_words = rans.encode_np(starts, freqs, lengths)

    @jax.jit
    def decode(words, num_words, num_steps):
        def step(carry, _):
            state, previous = carry
            tables = quantize.quantize_jax(jnp.asarray(transition)[previous])  # Needs t - 1.
            decoded, state = rans.decode_step_jax(state, tables)
            return (state, decoded), decoded

        state = rans.decode_init_jax(words, num_words, num_steps)
        (state, _), decoded = jax.lax.scan(
            step, (state, jnp.zeros(BATCH, jnp.int32)), None, length=steps
        )
        return decoded.T, rans.decode_finish_jax(state)

    decoded, errors = decode(words, num_words, lengths)
    valid = np.arange(steps)[None, :] < lengths[:, None]
    np.testing.assert_array_equal(np.asarray(decoded), np.where(valid, symbols, 0))
    rans.check_errors(errors)


def _encoded_example(seed=0, steps=200):
    tables = _tables("random", (2, steps, 256), seed)
    symbols = _sample(tables, seed + 1)
    starts, freqs = rans.symbol_intervals_np(tables, symbols)
    words, num_words = rans.encode_np(starts, freqs)
    return tables, symbols, words, num_words


@pytest.mark.parametrize("decode", [rans.decode_tables_np, rans.decode_tables_jax])
def test_truncated_stream_is_detected(decode):
    tables, _, words, num_words = _encoded_example()
    for cut in (1, 5, int(num_words[0]) - 2, int(num_words[0])):
        _, errors = decode(words, num_words - np.array([cut, 0]), tables, np.full(2, 200))
        assert np.asarray(errors)[0] & rans.ERROR_READ_PAST_END, cut
        assert np.asarray(errors)[1] == 0
    with pytest.raises(rans.CorruptStreamError, match=r"chunk 0: read past the end"):
        rans.check_errors(errors)


@pytest.mark.parametrize("decode", [rans.decode_tables_np, rans.decode_tables_jax])
def test_appended_garbage_is_detected(decode):
    tables, symbols, words, num_words = _encoded_example()
    garbage = np.random.default_rng(3).integers(2**16, size=(2, 7), dtype=np.uint16)
    padded = np.concatenate([words, garbage], axis=1)
    padded[0, num_words[0] : num_words[0] + 7] = garbage[0]
    decoded, errors = decode(padded, num_words + np.array([7, 0]), tables, np.full(2, 200))
    np.testing.assert_array_equal(np.asarray(decoded), symbols)  # The payload itself is intact.
    np.testing.assert_array_equal(np.asarray(errors), [rans.ERROR_UNREAD_WORDS, 0])
    with pytest.raises(rans.CorruptStreamError, match="words left unread"):
        rans.check_errors(errors)


def test_bit_flips_are_detected_and_decoding_stays_bounded():
    tables, _, words, num_words = _encoded_example(seed=8)
    rng = np.random.default_rng(9)
    trials = 60
    batch_words = np.repeat(words[:1], trials, axis=0)
    for row in batch_words:
        position = rng.integers(num_words[0])
        row[position] ^= np.uint16(1 << rng.integers(16))
    batch_tables = np.repeat(tables[:1], trials, axis=0)
    lengths = np.full(trials, 200)
    counts = np.full(trials, num_words[0])
    errors_np = rans.decode_tables_np(batch_words, counts, batch_tables, lengths)[1]
    errors_jax = rans.decode_tables_jax(batch_words, counts, batch_tables, lengths)[1]
    np.testing.assert_array_equal(np.asarray(errors_jax), errors_np)
    # A flip changes the decoder's path; ending exactly in the initial state is then very rare.
    detected = np.count_nonzero(errors_np & rans.ERROR_FINAL_STATE)
    assert detected >= trials - 1, detected


def test_garbage_and_empty_streams_fail_cleanly():
    tables = _tables("random", (3, 50, 256), 0)
    garbage = np.random.default_rng(1).integers(2**16, size=(3, 60), dtype=np.uint16)
    garbage[1, 0] = 0  # Initial state below 2**16: cannot come from the encoder.
    for decode in (rans.decode_tables_np, rans.decode_tables_jax):
        _, errors = decode(garbage, np.array([60, 60, 0]), tables, np.full(3, 50))
        errors = np.asarray(errors)
        assert np.all(errors != 0)
        assert errors[1] & rans.ERROR_BAD_INITIAL_STATE
        assert errors[2] & rans.ERROR_READ_PAST_END
    _, errors = rans.decode_tables_np(np.zeros((1, 0), np.uint16), [0], tables[:1, :0], [0])
    assert errors[0] & rans.ERROR_READ_PAST_END and not errors[0] & rans.ERROR_BAD_INITIAL_STATE


def test_unfinished_decode_is_reported():
    tables, _, words, num_words = _encoded_example()
    state = rans.decode_init_np(words, num_words, np.full(2, 200))
    _, state = rans.decode_step_np(state, tables[:, 0])
    assert rans.decode_finish_np(state)[0] & rans.ERROR_NOT_FINISHED
    assert "fewer decode steps" in rans.describe_errors(rans.ERROR_NOT_FINISHED)


def test_invalid_tables_and_symbols_raise():
    good = quantize.quantize_np(np.ones((2, 4)) / 4)
    zero = good.copy()
    zero[0, 0], zero[0, 1] = 0, zero[0, 1] + zero[0, 0]
    with pytest.raises(ValueError, match=r"frequency 0 \(< 1\)"):
        rans.symbol_intervals_np(zero, [0, 0])
    with pytest.raises(ValueError, match=r"sums to 65537, expected exactly 2\*\*16"):
        rans.symbol_intervals_np(good + np.array([[1, 0, 0, 0]]), [0, 0])
    with pytest.raises(ValueError, match=r"symbol 4 is outside the alphabet \[0, 4\)"):
        rans.symbol_intervals_np(good, [1, 4])
    with pytest.raises(ValueError, match=r"invalid interval at chunk 1, step 0"):
        rans.encode_np([[0], [65000]], [[16384], [1000]])
    with pytest.raises(ValueError, match=r"invalid interval at chunk 0, step 1"):
        rans.encode_np([[0, 0]], [[16384, 0]])
    rans.encode_np([[0, 0]], [[16384, 0]], lengths=[1])  # The bad step is masked out.
    with pytest.raises(ValueError, match=r"starts and freqs must both be \[batch, steps\]"):
        rans.encode_np([0, 0], [1, 1])
    with pytest.raises(ValueError, match="precision_bits"):
        rans.encode_np([[0]], [[1]], precision_bits=17)
    with pytest.raises(ValueError, match="frequency"):
        rans.decode_step_np(rans.decode_init_np(np.ones((2, 2)), [2, 2], [1, 1]), zero)


def test_invalid_tables_on_device_raise_or_flag():
    good = quantize.quantize_np(np.ones((2, 4)) / 4)
    for tables, symbols in ((good * 2, [0, 0]), (good, [0, 9])):
        starts, freqs = rans.symbol_intervals_jax(tables, jnp.array(symbols))
        assert int(freqs[1 if symbols[1] == 9 else 0]) == 0
        with pytest.raises(ValueError, match=r"invalid interval in chunk"):
            rans.encode_jax(starts[:, None], freqs[:, None])
    zero_freq = good.copy()
    zero_freq[:, 0], zero_freq[:, 1] = 0, 2 * good[:, 1]  # Right total, one zero frequency.
    for bad in (good * 2, zero_freq):
        state = rans.decode_init_jax(jnp.ones((2, 4)), jnp.array([4, 4]), jnp.array([1, 1]))
        _, state = rans.decode_step_jax(state, jnp.asarray(np.stack([good[0], bad[1]])))
        np.testing.assert_array_equal(np.asarray(state.errors), [0, rans.ERROR_INVALID_TABLE])


def test_payload_bytes_round_trip():
    words = np.array([0, 1, 0xABCD, 0xFFFF], dtype=np.uint16)
    payload = rans.words_to_bytes(words)
    assert payload == b"\x00\x00\x01\x00\xcd\xab\xff\xff"
    np.testing.assert_array_equal(rans.bytes_to_words(payload), words)
    with pytest.raises(ValueError, match="even byte count"):
        rans.bytes_to_words(b"abc")
    padded, counts = rans.pad_streams([words, words[:1], words[:0]])
    np.testing.assert_array_equal(counts, [4, 1, 0])
    np.testing.assert_array_equal(padded[1], [0, 0, 0, 0])
