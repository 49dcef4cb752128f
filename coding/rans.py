"""Batched rANS coder: a NumPy reference and a JAX implementation that agree word for word.

Each chunk of a batch is an independent stream with its own 32-bit state and output.

Invariants (precision `n <= 16`, table total `T = 2**n`, word size 16 bits):

* Between symbols the state `x` lies in `[L, 2**32)` with `L = STATE_LOWER_BOUND = 2**16`.
* Encoding symbol `(start, freq)`: if `x >= freq * 2**(32 - n)`, emit the low 16 bits of `x` and
  shift it right by 16 (once is enough: afterwards `x < 2**16 <= freq * 2**(32 - n)`); then
  `x = (x // freq) * T + x % freq + start`, which stays below 2**32 and at least `L`.
* Decoding inverts this: `slot = x % T` finds the symbol by `start <= slot < start + freq`,
  `x = freq * (x // T) + slot - start`, and if `x < L` one 16-bit word is read (`x >= 1` before
  the read, so one read restores `x >= L`).
* The encoder runs backwards over a chunk from state `L`, then flushes its final state as two
  words. The stream, in decoding order, is `[x_final >> 16, x_final & 0xffff]` followed by the
  word emitted at step 0, step 1, ... (in increasing step order). The decoder starts from
  `x_final` and, after the last symbol, must be back at exactly `L` having read every word: this
  is the built-in integrity check reported by `decode_finish_*`.

Every step reads at most one word, the number of steps is fixed, and reads past the end return
0 and set a flag, so a corrupted or truncated stream can never hang the decoder or make it index
out of bounds. The coder round-trips for ANY valid tables (every frequency >= 1 and a total of
exactly `T`); how the decoder gets the encoder's tables is the caller's job (`coding.quantize`).

Measured cost of 16-bit words with `n = 16`: about 0.1% above the ideal code length of the
quantised tables, plus the 32-bit flush per chunk.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from coding import quantize

STATE_LOWER_BOUND = 1 << 16  # Initial encoder state and the decoder's expected final state.
WORD_BITS = 16
FLUSH_WORDS = 2  # The final 32-bit state.
_WORD_MASK = (1 << WORD_BITS) - 1

# Bits of the per-chunk error code returned by `decode_finish_*`.
ERROR_READ_PAST_END = 1
ERROR_INVALID_TABLE = 2
ERROR_BAD_INITIAL_STATE = 4
ERROR_FINAL_STATE = 8
ERROR_UNREAD_WORDS = 16
ERROR_NOT_FINISHED = 32
_ERROR_NAMES = {
    ERROR_READ_PAST_END: "read past the end of the stream (truncated?)",
    ERROR_INVALID_TABLE: "invalid frequency table (zero frequency or wrong total)",
    ERROR_BAD_INITIAL_STATE: "initial state below 2**16 (not a stream from this encoder)",
    ERROR_FINAL_STATE: "final state is not the initial constant (corrupted stream or tables)",
    ERROR_UNREAD_WORDS: "words left unread (trailing garbage?)",
    ERROR_NOT_FINISHED: "fewer decode steps run than the chunk has symbols",
}


class CorruptStreamError(ValueError):
    """A decoded chunk failed the integrity checks."""


class DecoderState(NamedTuple):
    """State of a batch of rANS decoders (a pytree; NumPy or JAX arrays).

    Attributes:
        x: uint32 `[batch]` coder states.
        pos: int32 `[batch]` index of the next word to read.
        step: int32 `[]` number of decode steps run so far.
        errors: int32 `[batch]` bitwise OR of the `ERROR_*` flags raised so far.
        words: uint16 `[batch, capacity]` streams in decoding order, left aligned.
        num_words: int32 `[batch]` valid words of each stream.
        num_steps: int32 `[batch]` symbols in each chunk; later steps leave the chunk untouched.
    """

    x: np.ndarray | jax.Array
    pos: np.ndarray | jax.Array
    step: np.ndarray | jax.Array
    errors: np.ndarray | jax.Array
    words: np.ndarray | jax.Array
    num_words: np.ndarray | jax.Array
    num_steps: np.ndarray | jax.Array


def describe_errors(code: int) -> str:
    """Returns a readable list of the `ERROR_*` flags set in `code` ('ok' for 0)."""
    names = [name for bit, name in _ERROR_NAMES.items() if code & bit]
    return "; ".join(names) if names else "ok"


def check_errors(errors) -> None:
    """Raises if any chunk's error code (from `decode_finish_*`) is non-zero.

    Args:
        errors: int `[batch]` error codes.

    Raises:
        CorruptStreamError: naming the first bad chunks and their problems.
    """
    errors = np.asarray(errors)
    bad = np.flatnonzero(errors)
    if bad.size:
        details = ", ".join(f"chunk {i}: {describe_errors(int(errors[i]))}" for i in bad[:3])
        raise CorruptStreamError(f"{bad.size} of {errors.size} chunks failed to decode: {details}")


def _check_precision(precision_bits: int) -> None:
    quantize.check_table_shape(1, precision_bits)


def words_to_bytes(words) -> bytes:
    """Serialises one stream of 16-bit words (little-endian).

    Args:
        words: integer `[num_words]` values below 2**16.

    Returns:
        `2 * num_words` bytes.
    """
    return np.asarray(words, dtype="<u2").tobytes()


def bytes_to_words(payload: bytes) -> np.ndarray:
    """Parses a stream written by `words_to_bytes`.

    Args:
        payload: bytes of even length.

    Returns:
        uint16 `[len(payload) // 2]`.

    Raises:
        ValueError: odd length.
    """
    if len(payload) % 2:
        raise ValueError(f"a stream of 16-bit words needs an even byte count, got {len(payload)}")
    return np.frombuffer(payload, dtype="<u2").astype(np.uint16)


def pad_streams(streams: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stacks streams of different lengths into a zero-padded batch.

    Args:
        streams: list of `batch` uint16 `[num_words_i]` arrays.

    Returns:
        `(words, num_words)`: uint16 `[batch, max_i num_words_i]` and int32 `[batch]`.
    """
    num_words = np.array([len(s) for s in streams], dtype=np.int32)
    words = np.zeros((len(streams), int(num_words.max(initial=0))), dtype=np.uint16)
    for row, stream in zip(words, streams, strict=True):
        row[: len(stream)] = stream
    return words, num_words


# ----------------------------------------------------------------------------------------------
# NumPy reference.


def _check_tables_np(tables: np.ndarray, precision_bits: int) -> None:
    """Raises ValueError unless every frequency is >= 1 and every table sums to the total."""
    if not np.issubdtype(tables.dtype, np.integer):
        raise ValueError(f"frequency tables must be integers, got {tables.dtype}")
    if not tables.size:
        return
    lowest = tables.min()
    if lowest < 1:
        raise ValueError(
            f"frequency table has a symbol with frequency {lowest} (< 1); every symbol needs "
            "frequency >= 1 (build tables with coding.quantize.quantize_np/_jax)"
        )
    totals = tables.sum(axis=-1, dtype=np.int64)
    wrong = totals != 1 << precision_bits
    if np.any(wrong):
        raise ValueError(
            f"frequency table sums to {totals[wrong].flat[0]}, expected exactly "
            f"2**{precision_bits} = {1 << precision_bits}"
        )


def symbol_intervals_np(freq_tables, symbols, precision_bits: int = 16):
    """Looks up each symbol's `(start, freq)` in its table, validating the tables.

    Args:
        freq_tables: integer `[..., vocab]` tables, e.g. from `quantize.quantize_np`.
        symbols: integer `[...]` symbols.
        precision_bits: log2 of the required table total.

    Returns:
        `(starts, freqs)`, both uint32 `[...]`.

    Raises:
        ValueError: a table with a zero (or negative) frequency or a total other than
            `2**precision_bits`, or a symbol outside `[0, vocab)`.
    """
    _check_precision(precision_bits)
    tables = np.asarray(freq_tables, dtype=np.int64)
    symbols = np.asarray(symbols, dtype=np.int64)
    vocab = tables.shape[-1]
    _check_tables_np(tables, precision_bits)
    if symbols.size and (symbols.min() < 0 or symbols.max() >= vocab):
        bad = symbols[(symbols < 0) | (symbols >= vocab)].flat[0]
        raise ValueError(f"symbol {bad} is outside the alphabet [0, {vocab})")
    cdf = quantize.cdf_np(tables)
    starts = np.take_along_axis(cdf, symbols[..., None], axis=-1)[..., 0]
    freqs = np.take_along_axis(tables, symbols[..., None], axis=-1)[..., 0]
    return starts.astype(np.uint32), freqs.astype(np.uint32)


def _check_intervals_np(starts, freqs, active, precision_bits: int) -> None:
    """Raises ValueError if an active step has an interval outside `[0, 2**precision_bits)`."""
    total = 1 << precision_bits
    bad = active & ((freqs < 1) | (freqs > total) | (starts < 0) | (starts + freqs > total))
    if np.any(bad):
        chunk, step = (int(i[0]) for i in np.nonzero(bad))
        raise ValueError(
            f"invalid interval at chunk {chunk}, step {step}: start={starts[chunk, step]}, "
            f"freq={freqs[chunk, step]}; need freq >= 1 and start + freq <= 2**{precision_bits}"
        )


def _as_batch(starts, freqs, lengths):
    """Validates shapes; returns int64 NumPy `starts, freqs [batch, steps]`, `lengths [batch]`."""
    starts = np.asarray(starts, dtype=np.int64)
    freqs = np.asarray(freqs, dtype=np.int64)
    if starts.ndim != 2 or starts.shape != freqs.shape:
        raise ValueError(
            f"starts and freqs must both be [batch, steps], got {starts.shape} and {freqs.shape}"
        )
    batch, steps = starts.shape
    if lengths is None:
        lengths = np.full(batch, steps)
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.shape != (batch,) or (batch and (lengths.min() < 0 or lengths.max() > steps)):
        raise ValueError(f"lengths must be [batch={batch}] with values in [0, {steps}]")
    return starts, freqs, lengths


def encode_np(starts, freqs, lengths=None, precision_bits: int = 16):
    """Encodes a batch of chunks (NumPy reference).

    Args:
        starts: integer `[batch, steps]` interval starts (`symbol_intervals_np`).
        freqs: integer `[batch, steps]` interval sizes.
        lengths: integer `[batch]` number of valid steps per chunk (default: all `steps`);
            steps at or beyond a chunk's length are ignored.
        precision_bits: log2 of the table total.

    Returns:
        `(words, num_words)`: uint16 `[batch, steps + 2]`, each row's first `num_words` entries
        being that chunk's stream in decoding order (zero padded), and int32 `[batch]`.

    Raises:
        ValueError: bad shapes or an invalid interval on a valid step.
    """
    _check_precision(precision_bits)
    starts, freqs, lengths = _as_batch(starts, freqs, lengths)
    batch, steps = starts.shape
    active = np.arange(steps)[None, :] < lengths[:, None]
    _check_intervals_np(starts, freqs, active, precision_bits)
    starts = np.where(active, starts, 0).astype(np.uint32)
    freqs = np.where(active, freqs, 1).astype(np.uint32)
    capacity = steps + FLUSH_WORDS
    buffer = np.zeros((batch, capacity), dtype=np.uint16)
    head = np.full(batch, capacity, dtype=np.int64)  # Words are written backwards from the end.
    x = np.full(batch, STATE_LOWER_BOUND, dtype=np.uint32)
    for t in reversed(range(steps)):
        x = _encode_step_np(
            x, starts[:, t], freqs[:, t], active[:, t], buffer, head, precision_bits
        )
    head -= FLUSH_WORDS
    rows = np.arange(batch)
    buffer[rows, head] = x >> WORD_BITS
    buffer[rows, head + 1] = x & _WORD_MASK
    num_words = capacity - head
    index = np.minimum(head[:, None] + np.arange(capacity), capacity - 1)
    words = np.take_along_axis(buffer, index, axis=1)
    words[np.arange(capacity)[None, :] >= num_words[:, None]] = 0
    return words, num_words.astype(np.int32)


def _encode_step_np(x, start, freq, active, buffer, head, precision_bits: int):
    """One backwards encoding step for all chunks; writes emitted words into `buffer` in place."""
    limit_minus_1 = (freq << (32 - precision_bits)) - np.uint32(1)  # Wraps to 2**32-1 if freq=T.
    emit = active & (x > limit_minus_1)
    rows = np.flatnonzero(emit)
    head[rows] -= 1
    buffer[rows, head[rows]] = x[rows] & _WORD_MASK
    x = np.where(emit, x >> WORD_BITS, x)
    quotient = x // freq
    encoded = (quotient << precision_bits) + (x - quotient * freq) + start
    return np.where(active, encoded, x)


def decode_init_np(words, num_words, num_steps) -> DecoderState:
    """Starts decoding a batch of streams (NumPy reference).

    Args:
        words: integer `[batch, capacity]` streams in decoding order, left aligned.
        num_words: integer `[batch]` valid words per stream (<= capacity).
        num_steps: integer `[batch]` symbols to decode per chunk.

    Returns:
        The initial `DecoderState` (NumPy arrays).

    Raises:
        ValueError: inconsistent shapes or `num_words` outside `[0, capacity]`.
    """
    words = np.asarray(words, dtype=np.uint16)
    num_words = np.asarray(num_words, dtype=np.int32)
    num_steps = np.asarray(num_steps, dtype=np.int32)
    _check_decoder_inputs(words.shape, num_words, num_steps)
    padded = np.concatenate([words, np.zeros((words.shape[0], FLUSH_WORDS), np.uint16)], axis=1)
    x = (padded[:, 0].astype(np.uint32) << WORD_BITS) | padded[:, 1].astype(np.uint32)
    bad_state = np.where(x < STATE_LOWER_BOUND, ERROR_BAD_INITIAL_STATE, 0)
    errors = np.where(num_words < FLUSH_WORDS, ERROR_READ_PAST_END, bad_state)
    return DecoderState(
        x=x,
        pos=np.full(words.shape[0], FLUSH_WORDS, dtype=np.int32),
        step=np.int32(0),
        errors=errors.astype(np.int32),
        words=words,
        num_words=num_words,
        num_steps=num_steps,
    )


def _check_decoder_inputs(words_shape, num_words, num_steps) -> None:
    if len(words_shape) != 2:
        raise ValueError(f"words must be [batch, capacity], got shape {words_shape}")
    batch, capacity = words_shape
    if num_words.shape != (batch,) or num_steps.shape != (batch,):
        raise ValueError(f"num_words and num_steps must be [batch={batch}]")
    if batch and (num_words.min() < 0 or num_words.max() > capacity or num_steps.min() < 0):
        raise ValueError(f"num_words must lie in [0, {capacity}] and num_steps be >= 0")


def decode_step_np(state: DecoderState, freqs, precision_bits: int = 16):
    """Decodes one symbol per chunk (NumPy reference).

    Args:
        state: from `decode_init_np` or a previous step.
        freqs: integer `[batch, vocab]` tables for this step (same as the encoder's).
        precision_bits: log2 of the table total.

    Returns:
        `(symbols, state)`: int32 `[batch]` (0 for chunks already finished) and the new state.

    Raises:
        ValueError: an invalid table for a chunk still decoding.
    """
    _check_precision(precision_bits)
    tables = np.asarray(freqs)
    active = state.step < state.num_steps
    if active.all():
        _check_tables_np(tables, precision_bits)
        tables = tables.astype(np.uint32)
    else:
        _check_tables_np(tables[active], precision_bits)
        tables = np.where(active[:, None], tables, 1).astype(np.uint32)
    total = 1 << precision_bits
    cdf_inclusive = np.cumsum(tables, axis=-1, dtype=np.uint32)
    slot = state.x & np.uint32(total - 1)
    symbols = np.minimum((cdf_inclusive <= slot[:, None]).sum(axis=-1), tables.shape[-1] - 1)
    freq = np.take_along_axis(tables, symbols[:, None], axis=-1)[:, 0]
    start = np.take_along_axis(cdf_inclusive, symbols[:, None], axis=-1)[:, 0] - freq
    x = freq * (state.x >> precision_bits) + slot - start
    x, pos, errors = _refill_np(x, state, active)
    symbols = np.where(active, symbols, 0).astype(np.int32)
    new_state = state._replace(
        x=np.where(active, x, state.x), pos=pos, step=state.step + 1, errors=errors
    )
    return symbols, new_state


def _refill_np(x, state: DecoderState, active):
    """Reads one word into each active state below the lower bound, never past the buffer."""
    need = active & (x < STATE_LOWER_BOUND)
    past_end = need & (state.pos >= state.num_words)
    index = np.minimum(state.pos, state.words.shape[1] - 1)[:, None]
    if state.words.shape[1]:
        word = np.take_along_axis(state.words, index, axis=1)[:, 0].astype(np.uint32)
    else:
        word = np.zeros_like(x)
    word = np.where(past_end, np.uint32(0), word)
    x = np.where(need, (x << WORD_BITS) | word, x)
    pos = state.pos + need.astype(np.int32)
    errors = state.errors | np.where(past_end, ERROR_READ_PAST_END, 0).astype(np.int32)
    return x, pos, errors


def decode_finish_np(state: DecoderState) -> np.ndarray:
    """Runs the end-of-stream checks (NumPy).

    Args:
        state: the state after the last `decode_step_np`.

    Returns:
        int32 `[batch]` error codes: 0 if the chunk decoded cleanly (final state equals
        `STATE_LOWER_BOUND`, every word read, no read past the end), else `ERROR_*` bits; see
        `describe_errors` and `check_errors`.
    """
    errors = state.errors | np.where(state.x != STATE_LOWER_BOUND, ERROR_FINAL_STATE, 0)
    errors |= np.where(state.pos < state.num_words, ERROR_UNREAD_WORDS, 0)
    errors |= np.where(state.step < state.num_steps, ERROR_NOT_FINISHED, 0)
    return errors.astype(np.int32)


def decode_tables_np(words, num_words, freq_tables, num_steps=None, precision_bits: int = 16):
    """Decodes a batch whose tables are all known in advance (NumPy reference).

    Args:
        words: integer `[batch, capacity]` streams in decoding order.
        num_words: integer `[batch]` valid words per stream.
        freq_tables: integer `[batch, steps, vocab]` tables.
        num_steps: integer `[batch]` symbols per chunk (default: `steps`).
        precision_bits: log2 of the table total.

    Returns:
        `(symbols, errors)`: int32 `[batch, steps]` (0 past each chunk's end) and int32
        `[batch]` error codes from `decode_finish_np`.

    Raises:
        ValueError: bad shapes or an invalid table.
    """
    batch, steps = np.shape(freq_tables)[:2]
    num_steps = np.full(batch, steps) if num_steps is None else num_steps
    state = decode_init_np(words, num_words, num_steps)
    symbols = np.zeros((batch, steps), dtype=np.int32)
    for t in range(steps):
        symbols[:, t], state = decode_step_np(state, freq_tables[:, t], precision_bits)
    return symbols, decode_finish_np(state)


# ----------------------------------------------------------------------------------------------
# JAX implementation (uint32 only; no jax_enable_x64).


def symbol_intervals_jax(freq_tables, symbols, precision_bits: int = 16):
    """JAX version of `symbol_intervals_np` (jittable).

    Invalid entries cannot raise under jit; instead their `freq` is 0, which `encode_jax`
    reports as a ValueError (and `encode_jax_core` as its `invalid` flag).

    Args:
        freq_tables: integer `[..., vocab]` tables.
        symbols: integer `[...]` symbols.
        precision_bits: log2 of the required table total (static).

    Returns:
        `(starts, freqs)`, both uint32 `[...]`; `freqs == 0` marks a zero-frequency symbol, a
        table with a wrong total, or a symbol outside `[0, vocab)`.
    """
    tables = jnp.asarray(freq_tables, dtype=jnp.int32)
    symbols = jnp.asarray(symbols, dtype=jnp.int32)
    vocab = tables.shape[-1]
    total = jnp.sum(tables, axis=-1, dtype=jnp.int32)
    in_range = (jnp.min(tables, axis=-1) >= 1) & (jnp.max(tables, axis=-1) <= 1 << precision_bits)
    valid = in_range & (total == 1 << precision_bits)
    valid &= (symbols >= 0) & (symbols < vocab)
    index = jnp.clip(symbols, 0, vocab - 1)[..., None]
    cdf = quantize.cdf_jax(tables)
    starts = jnp.take_along_axis(cdf, index, axis=-1)[..., 0]
    freqs = jnp.take_along_axis(tables, index, axis=-1)[..., 0]
    return starts.astype(jnp.uint32), jnp.where(valid, freqs, 0).astype(jnp.uint32)


@functools.partial(jax.jit, static_argnames=("precision_bits",))
def encode_jax_core(starts, freqs, lengths, precision_bits: int = 16):
    """Encodes a batch of chunks on device (jittable; one reverse `lax.scan`).

    Args:
        starts: integer `[batch, steps]` interval starts.
        freqs: integer `[batch, steps]` interval sizes.
        lengths: integer `[batch]` number of valid steps per chunk.
        precision_bits: log2 of the table total (static).

    Returns:
        `(words, num_words, invalid)`: uint16 `[batch, steps + 2]` and int32 `[batch]` exactly as
        `encode_np` returns them, and bool `[batch]` marking chunks that had an invalid interval
        (their words are meaningless).
    """
    _check_precision(precision_bits)
    starts = jnp.asarray(starts).astype(jnp.uint32)
    freqs = jnp.asarray(freqs).astype(jnp.uint32)
    batch, steps = starts.shape
    total = 1 << precision_bits
    active = jnp.arange(steps)[None, :] < jnp.asarray(lengths)[:, None]
    invalid = active & (
        (freqs < 1) | (freqs > total) | (starts > total - jnp.minimum(freqs, total))
    )
    freqs = jnp.where(active & ~invalid, freqs, 1)
    starts = jnp.where(active & ~invalid, starts, 0)

    def step(x, inputs):
        start, freq, is_active = inputs
        limit_minus_1 = (freq << (32 - precision_bits)) - 1  # Wraps to 2**32-1 if freq=T.
        emit = is_active & (x > limit_minus_1)
        word = (x & _WORD_MASK).astype(jnp.uint16)
        x = jnp.where(emit, x >> WORD_BITS, x)
        quotient = x // freq
        encoded = (quotient << precision_bits) + (x - quotient * freq) + start
        return jnp.where(is_active, encoded, x), (word, emit)

    x0 = jnp.full((batch,), STATE_LOWER_BOUND, dtype=jnp.uint32)
    x, (emitted, emit) = jax.lax.scan(step, x0, (starts.T, freqs.T, active.T), reverse=True)
    emitted, emit = emitted.T, emit.T  # [batch, steps]
    # The word emitted at step t is read by the decoder at step t: order by step after the flush.
    position = FLUSH_WORDS + jnp.cumsum(emit, axis=1, dtype=jnp.int32) - emit
    capacity = steps + FLUSH_WORDS
    position = jnp.where(emit, position, capacity)  # Out of range: dropped by the scatter.
    rows = jnp.broadcast_to(jnp.arange(batch)[:, None], (batch, steps))
    words = jnp.zeros((batch, capacity), jnp.uint16).at[rows, position].set(emitted, mode="drop")
    words = words.at[:, 0].set((x >> WORD_BITS).astype(jnp.uint16))
    words = words.at[:, 1].set((x & _WORD_MASK).astype(jnp.uint16))
    num_words = FLUSH_WORDS + jnp.sum(emit, axis=1, dtype=jnp.int32)
    return words, num_words, jnp.any(invalid, axis=1)


def encode_jax(starts, freqs, lengths=None, precision_bits: int = 16):
    """Encodes a batch on device and validates the result on the host.

    Args:
        starts: integer `[batch, steps]` interval starts (`symbol_intervals_jax`).
        freqs: integer `[batch, steps]` interval sizes.
        lengths: integer `[batch]` valid steps per chunk (default: all).
        precision_bits: log2 of the table total.

    Returns:
        `(words, num_words)`: uint16 `[batch, steps + 2]` and int32 `[batch]` device arrays,
        identical to `encode_np`.

    Raises:
        ValueError: bad precision or an invalid interval (including those flagged with
            `freq == 0` by `symbol_intervals_jax`).
    """
    _check_precision(precision_bits)
    if jnp.ndim(starts) != 2 or jnp.shape(starts) != jnp.shape(freqs):
        raise ValueError(
            f"starts and freqs must both be [batch, steps], got {jnp.shape(starts)} and "
            f"{jnp.shape(freqs)}"
        )
    if lengths is None:
        lengths = jnp.full((jnp.shape(starts)[0],), jnp.shape(starts)[1], dtype=jnp.int32)
    words, num_words, invalid = encode_jax_core(starts, freqs, lengths, precision_bits)
    invalid = np.asarray(invalid)
    if invalid.any():
        raise ValueError(
            f"invalid interval in chunk {int(np.flatnonzero(invalid)[0])}: need freq >= 1 and "
            f"start + freq <= 2**{precision_bits} (a zero-frequency symbol, a table with the "
            "wrong total, or a symbol outside the alphabet)"
        )
    return words, num_words


def decode_init_jax(words, num_words, num_steps) -> DecoderState:
    """Starts decoding a batch of streams on device (jittable).

    Args:
        words: integer `[batch, capacity]` streams in decoding order (uint16 preferred).
        num_words: integer `[batch]` valid words per stream (clipped to `[0, capacity]`).
        num_steps: integer `[batch]` symbols to decode per chunk.

    Returns:
        The initial `DecoderState` (JAX arrays).
    """
    words = jnp.asarray(words).astype(jnp.uint16)
    batch, capacity = words.shape
    num_words = jnp.clip(jnp.asarray(num_words, dtype=jnp.int32), 0, capacity)
    padded = jnp.concatenate([words, jnp.zeros((batch, FLUSH_WORDS), jnp.uint16)], axis=1)
    x = (padded[:, 0].astype(jnp.uint32) << WORD_BITS) | padded[:, 1].astype(jnp.uint32)
    bad_state = jnp.where(x < STATE_LOWER_BOUND, ERROR_BAD_INITIAL_STATE, 0)
    errors = jnp.where(num_words < FLUSH_WORDS, ERROR_READ_PAST_END, bad_state)
    return DecoderState(
        x=x,
        pos=jnp.full((batch,), FLUSH_WORDS, dtype=jnp.int32),
        step=jnp.int32(0),
        errors=errors.astype(jnp.int32),
        words=words,
        num_words=num_words,
        num_steps=jnp.asarray(num_steps, dtype=jnp.int32),
    )


def _lookup_jax(tables, slot):
    """Finds, per row, the symbol whose interval `[start, start + freq)` contains `slot`.

    A two-level search: sum blocks of about sqrt(vocab) symbols, find the block holding `slot`,
    then search inside that block. This costs O(vocab) per row, whereas a full cumulative sum
    is the slowest part of a decode step on CPU (XLA lowers cumsum to a reduce_window).

    Args:
        tables: uint32 `[batch, vocab]` frequency tables.
        slot: uint32 `[batch]` values in `[0, 2**precision_bits)`.

    Returns:
        `(symbols, starts, freqs, totals)`: int32 `[batch]` (possibly >= vocab, or inconsistent
        with `starts`/`freqs`, only if the table is invalid) and uint32 `[batch]` x 3.
    """
    batch, vocab = tables.shape
    block = 1 << math.ceil(math.log2(vocab) / 2)
    num_blocks = -(-vocab // block)
    padded = jnp.pad(tables, ((0, 0), (0, num_blocks * block - vocab)))
    padded = padded.reshape(batch, num_blocks, block)
    block_sums = jnp.sum(padded, axis=-1, dtype=jnp.uint32)
    block_ends = jnp.cumsum(block_sums, axis=-1, dtype=jnp.uint32)
    before = block_ends <= slot[:, None]
    chosen = jnp.minimum(jnp.sum(before, axis=-1, dtype=jnp.int32), num_blocks - 1)
    base = jnp.sum(jnp.where(before, block_sums, 0), axis=-1, dtype=jnp.uint32)
    members = jnp.take_along_axis(padded, chosen[:, None, None], axis=1)[:, 0]
    inside = base[:, None] + jnp.cumsum(members, axis=-1, dtype=jnp.uint32) <= slot[:, None]
    offset = jnp.minimum(jnp.sum(inside, axis=-1, dtype=jnp.int32), block - 1)
    freqs = jnp.take_along_axis(members, offset[:, None], axis=-1)[:, 0]
    starts = base + jnp.sum(jnp.where(inside, members, 0), axis=-1, dtype=jnp.uint32)
    return chosen * block + offset, starts, freqs, block_ends[:, -1]


def decode_step_jax(state: DecoderState, freqs, precision_bits: int = 16):
    """Decodes one symbol per chunk on device; call it inside a jitted `lax.scan`/`fori_loop`.

    Args:
        state: from `decode_init_jax` or a previous step.
        freqs: integer `[batch, vocab]` tables for this step, e.g. `quantize.quantize_jax` of the
            model's probabilities given the symbols decoded so far.
        precision_bits: log2 of the table total (static).

    Returns:
        `(symbols, state)`: int32 `[batch]` (0 for finished chunks) and the new state. An
        invalid table sets `ERROR_INVALID_TABLE` in `state.errors` instead of raising.
    """
    _check_precision(precision_bits)
    tables = jnp.asarray(freqs).astype(jnp.uint32)
    vocab = tables.shape[-1]
    active = state.step < state.num_steps
    slot = state.x & ((1 << precision_bits) - 1)
    symbols, start, freq, total = _lookup_jax(tables, slot)
    # One pass for 1 <= freq <= T: freq - 1 wraps to 2**32 - 1 for freq == 0.
    table_ok = (jnp.max(tables - 1, axis=-1) < 1 << precision_bits) & (total == 1 << precision_bits)
    symbols = jnp.minimum(symbols, vocab - 1)  # Only an invalid table can point past the end.
    x = freq * (state.x >> precision_bits) + slot - start
    # Refill: at most one word, never reading outside `words`.
    need = active & (x < STATE_LOWER_BOUND)
    past_end = need & (state.pos >= state.num_words)
    index = jnp.clip(state.pos, 0, state.words.shape[1] - 1)[:, None]
    word = jnp.take_along_axis(state.words, index, axis=1)[:, 0].astype(jnp.uint32)
    word = jnp.where(past_end, jnp.uint32(0), word)
    x = jnp.where(need, (x << WORD_BITS) | word, x)
    errors = state.errors | jnp.where(past_end, ERROR_READ_PAST_END, 0)
    errors |= jnp.where(active & ~table_ok, ERROR_INVALID_TABLE, 0)
    new_state = state._replace(
        x=jnp.where(active, x, state.x),
        pos=state.pos + need.astype(jnp.int32),
        step=state.step + 1,
        errors=errors.astype(jnp.int32),
    )
    return jnp.where(active, symbols, 0), new_state


def decode_finish_jax(state: DecoderState) -> jax.Array:
    """JAX version of `decode_finish_np` (jittable): int32 `[batch]` error codes, 0 if clean."""
    errors = state.errors | jnp.where(state.x != STATE_LOWER_BOUND, ERROR_FINAL_STATE, 0)
    errors |= jnp.where(state.pos < state.num_words, ERROR_UNREAD_WORDS, 0)
    errors |= jnp.where(state.step < state.num_steps, ERROR_NOT_FINISHED, 0)
    return errors.astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("precision_bits",))
def decode_tables_jax(words, num_words, freq_tables, num_steps, precision_bits: int = 16):
    """Decodes a batch whose tables are all known in advance, in one jitted `lax.scan`.

    Args:
        words: integer `[batch, capacity]` streams in decoding order.
        num_words: integer `[batch]` valid words per stream.
        freq_tables: integer `[batch, steps, vocab]` tables.
        num_steps: integer `[batch]` symbols per chunk.
        precision_bits: log2 of the table total (static).

    Returns:
        `(symbols, errors)`: int32 `[batch, steps]` and int32 `[batch]` error codes.
    """

    def step(state, tables):
        return decode_step_jax(state, tables, precision_bits)[::-1]

    state = decode_init_jax(words, num_words, num_steps)
    state, symbols = jax.lax.scan(step, state, jnp.swapaxes(freq_tables, 0, 1))
    return symbols.T, decode_finish_jax(state)
