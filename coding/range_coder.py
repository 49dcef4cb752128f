"""Batched byte-oriented range coder: a NumPy reference and a JAX version that agree byte for byte.

Each chunk of a batch is an independent stream: a big-endian fraction in `[0, 1)` whose digits
are bytes. It starts at full precision and ends with at most one byte, so a 2048-symbol chunk
costs about 0.3 bytes more than the ideal code length of its tables on average, and less than
one byte more at worst (measured; rANS with its flushed 32-bit state: about 4, up to 7).
Written here rather than taken from a library (e.g. constriction) because those code one stream
at a time on the host, while this one runs a whole batch inside a jitted step on the device,
with every byte of the output fixed by the invariants below.

Invariants (precision `n <= 16`, table total `T = 2**n`, `scale(c) = floor(range * c / T)`):

* Encoder state: `low`, the bottom of the current interval inside a 32-bit window whose more
  significant digits are the bytes emitted so far (adding to `low` may carry into them), and
  `range`, the interval's width. Initially `low = 0`, `range = 2**32 - 1`; between symbols
  `2**24 <= range < 2**32`.
* Encoding symbol `(start, freq)`: `low += scale(start)` (a wrap past 2**32 is a carry into the
  emitted bytes, propagating through 0xff bytes), `range = scale(start + freq) - scale(start)`.
  The symbols' sub-intervals tile `[0, range)` exactly (`scale(T) = range`), so nothing is lost
  but the rounding of their ends, which averages out. `scale` is exact in uint32 arithmetic:
  `(range >> n) * c + ((range mod T) * c >> n)` (`_scale`), both products below 2**32.
* Normalisation: while `range < 2**24`, emit `low >> 24`, then `low <<= 8` and `range <<= 8`.
  As `range >= (range >> n) * freq >= 2**(24 - n)` after a step, a symbol emits at most
  `ceil(n / 8)` bytes, so a chunk takes at most `capacity_bytes(steps, n) = ceil(n / 8) * steps
  + 1` bytes (every symbol of frequency 1 reaches `ceil(n / 8) * steps`).
* Carries: after a carry the interval lies inside the window (`low + range <= 2**32`), so the
  bytes emitted before it are final and at most one carry happens per window position; before
  the first byte, `low + range < 2**32`, so carries never propagate past the first byte.
* Termination: the value `v` in `[low, low + range)` with the most trailing zero bytes is written:
  `v = 0` if `low = 0`; `v = 2**32` (a carry, no byte) if `low + range > 2**32`; otherwise the
  smallest multiple of `2**24` not below `low` (one nonzero byte; `range >= 2**24` guarantees it
  exists). Then all trailing zero bytes of the stream are stripped, since the decoder reads zeros
  past the end. The stream is canonical: empty or ending in a nonzero byte.
* Decoder: `code = floor(V - low)`, with `V` the stream's value at the window's scale, lies in
  `[0, range)`. Step: the symbol with `scale(start) <= code < scale(start + freq)` (a search
  over the scaled cumulative table, no division), `code -= scale(start)`, the encoder's new
  `range`, and one byte read per shift (zeros past the end). The decoder never needs the
  carries: it works with differences.
* Final check (`decode_finish_*`): the decoder recovers `low = window - code (mod 2**32)` from its
  last 4 bytes, recomputes the encoder's termination and requires the window to equal it, `code`
  to lie in `[0, range)`, no byte past the window and no trailing zero byte. These hold if and
  only if the stream is exactly the encoder's output for the decoded symbols.

Integrity: a code this close to optimal leaves few byte strings invalid. A truncated stream, and
about half of the single bit flips, decode cleanly to other symbols (every accepted stream is the
exact encoding of what it decodes to), so corruption must be caught by the container's lengths
and checksums; the error bits here catch zero padding, trailing garbage, values outside the
interval, invalid tables and unfinished decodes.

Every step does a fixed amount of work (`ceil(n / 8)` reads at most, reads past the end return
0, indices are clipped, no division), so a corrupted or truncated stream can never hang the
decoder or make it index out of bounds. The coder round-trips for ANY valid tables (every
frequency >= 1, a total of exactly `T`); how the decoder gets the encoder's tables is the
caller's job (`coding.quantize`).
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from coding import quantize

INITIAL_RANGE = (1 << 32) - 1
RANGE_BOTTOM = 1 << 24  # `range` after normalisation is at least this.
WINDOW_BYTES = 4  # The decoder reads this many bytes before the first symbol.
_MASK32 = (1 << 32) - 1

# Bits of the per-chunk error code returned by `decode_finish_*`.
ERROR_OUT_OF_RANGE = 1
ERROR_INVALID_TABLE = 2
ERROR_NOT_CANONICAL = 4
ERROR_UNREAD_BYTES = 8
ERROR_BAD_TERMINATION = 16
ERROR_NOT_FINISHED = 32
_ERROR_NAMES = {
    ERROR_OUT_OF_RANGE: "value outside the coder's interval (corrupted stream or wrong tables)",
    ERROR_INVALID_TABLE: "invalid frequency table (zero frequency or wrong total)",
    ERROR_NOT_CANONICAL: "stream ends in a zero byte (zero padded?)",
    ERROR_UNREAD_BYTES: "bytes left unread (trailing garbage?)",
    ERROR_BAD_TERMINATION: "final bytes are not the encoder's termination (corrupted stream?)",
    ERROR_NOT_FINISHED: "fewer decode steps run than the chunk has symbols",
}


class CorruptStreamError(ValueError):
    """A decoded chunk failed the integrity checks."""


class DecoderState(NamedTuple):
    """State of a batch of range decoders (a pytree; NumPy or JAX arrays).

    Attributes:
        code: uint32 `[batch]` offset of the stream's value above the interval's bottom.
        range: uint32 `[batch]` interval widths.
        pos: int32 `[batch]` index of the next byte to read.
        step: int32 `[]` number of decode steps run so far.
        errors: int32 `[batch]` bitwise OR of the `ERROR_*` flags raised so far.
        data: uint8 `[batch, capacity]` streams, left aligned.
        num_bytes: int32 `[batch]` valid bytes of each stream.
        num_steps: int32 `[batch]` symbols in each chunk; later steps leave the chunk untouched.
    """

    code: np.ndarray | jax.Array
    range: np.ndarray | jax.Array
    pos: np.ndarray | jax.Array
    step: np.ndarray | jax.Array
    errors: np.ndarray | jax.Array
    data: np.ndarray | jax.Array
    num_bytes: np.ndarray | jax.Array
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


def _max_shifts(precision_bits: int) -> int:
    """Bytes one symbol may emit (and the decoder read) at most: `ceil(n / 8)`."""
    return -(-precision_bits // 8)


def capacity_bytes(steps: int, precision_bits: int = 16) -> int:
    """Returns the most bytes a chunk of `steps` symbols can take: `ceil(n / 8) * steps + 1`.

    Args:
        steps: symbols in the chunk.
        precision_bits: log2 of the table total.

    Returns:
        The bound (module docstring). Symbols of frequency 1 reach `ceil(n / 8) * steps` at
        `n = 8` and `n = 16`; the last byte is the termination's, never seen added to that.

    Raises:
        ValueError: bad precision.
    """
    _check_precision(precision_bits)
    return _max_shifts(precision_bits) * steps + 1


def pad_streams(streams: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stacks streams of different lengths into a zero-padded batch.

    Args:
        streams: list of `batch` uint8 `[num_bytes_i]` arrays (or `bytes`).

    Returns:
        `(data, num_bytes)`: uint8 `[batch, max_i num_bytes_i]` and int32 `[batch]`.
    """
    streams = [np.frombuffer(s, np.uint8) if isinstance(s, bytes) else s for s in streams]
    num_bytes = np.array([len(s) for s in streams], dtype=np.int32)
    data = np.zeros((len(streams), int(num_bytes.max(initial=0))), dtype=np.uint8)
    for row, stream in zip(data, streams, strict=True):
        row[: len(stream)] = stream
    return data, num_bytes


def _termination(low, rng, xp):
    """The encoder's final byte (see the module docstring), shared by encoder and decoder.

    Args:
        low: uint32 `[batch]` window bottoms.
        rng: uint32 `[batch]` ranges, at least `RANGE_BOTTOM`.
        xp: `numpy` or `jax.numpy`.

    Returns:
        `(byte, has_byte, carry)`: uint32 `[batch]` final byte (0 if none), bool `[batch]` whether
        it is written, and bool `[batch]` whether `v = 2**32`, a carry into the emitted bytes.
    """
    carry = low + (rng - 1) < low  # low + range > 2**32, detected as a uint32 wrap.
    has_byte = (low != 0) & ~carry
    # Smallest multiple of 2**24 >= low; cannot wrap when there is no carry.
    byte = (low + (RANGE_BOTTOM - 1)) >> 24
    return xp.where(has_byte, byte, xp.uint32(0)), has_byte, carry


def _stripped_length(data, xp):
    """int32 `[batch]`: the length of each row without its trailing zero bytes."""
    index = xp.arange(1, data.shape[1] + 1, dtype=xp.int32)
    return xp.max(xp.where(data != 0, index, 0), axis=1, initial=0).astype(xp.int32)


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


def _add_carry_np(data: np.ndarray, head: np.ndarray, rows: np.ndarray) -> None:
    """Adds 1 to the last emitted byte of each of `rows`, propagating through 0xff bytes."""
    index = head[rows] - 1
    while rows.size:
        # Invariant (module docstring): a carry never propagates past the first byte.
        assert index.min() >= 0, "carry past the first byte: the coder's invariant is broken"
        full = data[rows, index] == 0xFF
        data[rows[~full], index[~full]] += 1
        data[rows[full], index[full]] = 0
        rows, index = rows[full], index[full] - 1


def _encode_step_np(low, rng, start, freq, data, head, precision_bits: int):
    """One encoding step for all chunks; writes bytes into `data` and advances `head` in place.

    Args:
        low, rng: uint64 `[batch]` coder states (below 2**32).
        start, freq: uint64 `[batch]` this step's intervals (masked steps: `(0, 2**n)`, which
            leaves the state unchanged).
        data: uint8 `[batch, capacity]` output.
        head: int64 `[batch]` bytes emitted so far.
        precision_bits: log2 of the table total.

    Returns:
        The new `(low, rng)`.
    """
    n = np.uint64(precision_bits)
    bottom = (rng * start) >> n  # 48-bit products: exact in 64 bits.
    top = (rng * (start + freq)) >> n
    low = low + bottom  # Below 2**33: bit 32 is the carry.
    carried = np.flatnonzero(low >> np.uint64(32))
    if carried.size:
        _add_carry_np(data, head, carried)
        low &= np.uint64(_MASK32)
    rng = top - bottom
    while True:  # Normalise; at most `ceil(n / 8)` rounds for valid intervals.
        rows = np.flatnonzero(rng < RANGE_BOTTOM)
        if not rows.size:
            break
        data[rows, head[rows]] = (low[rows] >> np.uint64(24)).astype(np.uint8)
        head[rows] += 1
        low[rows] = (low[rows] << np.uint64(8)) & np.uint64(_MASK32)
        rng[rows] <<= np.uint64(8)
    return low, rng


def encode_np(starts, freqs, lengths=None, precision_bits: int = 16):
    """Encodes a batch of chunks (NumPy reference; 64-bit integers inside, same bytes as JAX).

    Args:
        starts: integer `[batch, steps]` interval starts (`symbol_intervals_np`).
        freqs: integer `[batch, steps]` interval sizes.
        lengths: integer `[batch]` number of valid steps per chunk (default: all `steps`);
            steps at or beyond a chunk's length are ignored.
        precision_bits: log2 of the table total.

    Returns:
        `(data, num_bytes)`: uint8 `[batch, capacity_bytes(steps, precision_bits)]`, each row's
        first `num_bytes` entries being that chunk's stream (zero padded), and int32 `[batch]`.

    Raises:
        ValueError: bad shapes or an invalid interval on a valid step.
    """
    _check_precision(precision_bits)
    starts, freqs, lengths = _as_batch(starts, freqs, lengths)
    batch, steps = starts.shape
    active = np.arange(steps)[None, :] < lengths[:, None]
    _check_intervals_np(starts, freqs, active, precision_bits)
    starts = np.where(active, starts, 0).astype(np.uint64)
    freqs = np.where(active, freqs, 1 << precision_bits).astype(np.uint64)  # Probability 1.
    data = np.zeros((batch, capacity_bytes(steps, precision_bits)), dtype=np.uint8)
    head = np.zeros(batch, dtype=np.int64)  # Bytes emitted so far.
    low = np.zeros(batch, dtype=np.uint64)
    rng = np.full(batch, INITIAL_RANGE, dtype=np.uint64)
    for t in range(steps):
        low, rng = _encode_step_np(low, rng, starts[:, t], freqs[:, t], data, head, precision_bits)
    byte, has_byte, carry = _termination(low.astype(np.uint32), rng.astype(np.uint32), np)
    _add_carry_np(data, head, np.flatnonzero(carry))
    rows = np.flatnonzero(has_byte)
    data[rows, head[rows]] = byte[rows]
    return data, _stripped_length(data, np)


def _check_decoder_inputs(data_shape, num_bytes, num_steps) -> None:
    if len(data_shape) != 2:
        raise ValueError(f"data must be [batch, capacity], got shape {data_shape}")
    batch, capacity = data_shape
    if num_bytes.shape != (batch,) or num_steps.shape != (batch,):
        raise ValueError(f"num_bytes and num_steps must be [batch={batch}]")
    if batch and (num_bytes.min() < 0 or num_bytes.max() > capacity or num_steps.min() < 0):
        raise ValueError(f"num_bytes must lie in [0, {capacity}] and num_steps be >= 0")


def _read_byte(data, num_bytes, index, xp):
    """uint32 `[batch]`: `data[i, index[i]]`, or 0 past the stream's end; never out of bounds."""
    if data.shape[1] == 0:
        return xp.zeros(index.shape, xp.uint32)
    clipped = xp.clip(index, 0, data.shape[1] - 1)
    byte = xp.take_along_axis(data, clipped[:, None], axis=1)[:, 0].astype(xp.uint32)
    return xp.where((index >= 0) & (index < num_bytes), byte, xp.uint32(0))


def _read_window(data, num_bytes, end, xp):
    """uint32 `[batch]`: the 4 bytes before `end` as a big-endian number (zeros past the end)."""
    window = xp.zeros(end.shape, xp.uint32)
    for offset in range(WINDOW_BYTES, 0, -1):
        window = (window << 8) | _read_byte(data, num_bytes, end - offset, xp)
    return window


def _init(data, num_bytes, num_steps, xp) -> DecoderState:
    """Shared body of `decode_init_np` and `decode_init_jax` (inputs already converted)."""
    batch = data.shape[0]
    return DecoderState(
        code=_read_window(data, num_bytes, xp.full(batch, WINDOW_BYTES, xp.int32), xp),
        range=xp.full(batch, INITIAL_RANGE, xp.uint32),
        pos=xp.full(batch, WINDOW_BYTES, xp.int32),
        step=xp.int32(0),
        errors=xp.zeros(batch, xp.int32),
        data=data,
        num_bytes=num_bytes,
        num_steps=num_steps,
    )


def decode_init_np(data, num_bytes, num_steps) -> DecoderState:
    """Starts decoding a batch of streams (NumPy reference).

    Args:
        data: integer `[batch, capacity]` byte streams, left aligned.
        num_bytes: integer `[batch]` valid bytes per stream (<= capacity).
        num_steps: integer `[batch]` symbols to decode per chunk.

    Returns:
        The initial `DecoderState` (NumPy arrays).

    Raises:
        ValueError: inconsistent shapes or `num_bytes` outside `[0, capacity]`.
    """
    data = np.asarray(data, dtype=np.uint8)
    num_bytes = np.asarray(num_bytes, dtype=np.int32)
    num_steps = np.asarray(num_steps, dtype=np.int32)
    _check_decoder_inputs(data.shape, num_bytes, num_steps)
    return _init(data, num_bytes, num_steps, np)


def _scale(rng, cumulative, precision_bits: int, xp):
    """`floor(rng * cumulative / 2**n)` in uint32 arithmetic, exact for `cumulative <= 2**n`.

    `rng * c = (rng >> n) * c * 2**n + (rng mod 2**n) * c`, and both products fit in 32 bits.

    Args:
        rng: uint32 `[...]` ranges.
        cumulative: uint32 `[...]` (broadcastable) cumulative frequencies, at most `2**n`.
        precision_bits: `n`.
        xp: `numpy` or `jax.numpy`.

    Returns:
        uint32 `[...]`.
    """
    mask = (1 << precision_bits) - 1
    return (rng >> precision_bits) * cumulative + (((rng & mask) * cumulative) >> precision_bits)


def _decode_update(state: DecoderState, start, freq, active, precision_bits: int, xp):
    """Narrows the interval to the decoded symbol's and reads the bytes it shifted out.

    Shared by `decode_step_np` and `decode_step_jax` once the symbol has been found.

    Returns:
        The new state (`step` advanced; chunks not `active` unchanged).
    """
    bottom = _scale(state.range, start, precision_bits, xp)
    code = state.code - bottom
    rng = _scale(state.range, start + freq, precision_bits, xp) - bottom
    pos = state.pos
    for _ in range(_max_shifts(precision_bits)):
        need = active & (rng < RANGE_BOTTOM)
        byte = _read_byte(state.data, state.num_bytes, pos, xp)
        code = xp.where(need, (code << 8) | byte, code)
        rng = xp.where(need, rng << 8, rng)
        pos = pos + need.astype(xp.int32)
    # Only a corrupted stream (or wrong tables) puts the value outside the interval.
    outside = active & (state.code >= state.range)
    errors = state.errors | xp.where(outside, ERROR_OUT_OF_RANGE, 0)
    return state._replace(
        code=xp.where(active, code, state.code),
        range=xp.where(active, rng, state.range),
        pos=pos,
        step=state.step + 1,
        errors=errors.astype(xp.int32),
    )


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
    cdf_inclusive = np.cumsum(tables, axis=-1, dtype=np.uint32)
    # Symbol s covers [scale(cdf[s]), scale(cdf[s + 1])), and scale(c) <= code exactly when
    # c <= slot = ((code + 1) * T - 1) // range (a 48-bit division, in 64 bits).
    code = state.code.astype(np.uint64)
    rng = np.maximum(state.range, 1).astype(np.uint64)  # 0 only after an invalid table.
    slot = (((code + 1) << np.uint64(precision_bits)) - np.uint64(1)) // rng
    symbols = (cdf_inclusive <= slot[:, None]).sum(axis=-1)
    symbols = np.minimum(symbols, tables.shape[-1] - 1)  # `code >= range`: a corrupted stream.
    freq = np.take_along_axis(tables, symbols[:, None], axis=-1)[:, 0]
    start = np.take_along_axis(cdf_inclusive, symbols[:, None], axis=-1)[:, 0] - freq
    new_state = _decode_update(state, start, freq, active, precision_bits, np)
    return np.where(active, symbols, 0).astype(np.int32), new_state


def _finish(state: DecoderState, xp):
    """Shared body of `decode_finish_np` and `decode_finish_jax`."""
    window = _read_window(state.data, state.num_bytes, state.pos, xp)
    byte, _, _ = _termination(window - state.code, state.range, xp)
    bad_end = (state.code >= state.range) | (window != byte << 24)
    last = _read_byte(state.data, state.num_bytes, state.num_bytes - 1, xp)
    errors = state.errors | xp.where(bad_end, ERROR_BAD_TERMINATION, 0)
    errors |= xp.where((state.num_bytes > 0) & (last == 0), ERROR_NOT_CANONICAL, 0)
    errors |= xp.where(state.num_bytes > state.pos, ERROR_UNREAD_BYTES, 0)
    errors |= xp.where(state.step < state.num_steps, ERROR_NOT_FINISHED, 0)
    return errors.astype(xp.int32)


def decode_finish_np(state: DecoderState) -> np.ndarray:
    """Runs the end-of-stream checks (NumPy).

    Args:
        state: the state after the last `decode_step_np`.

    Returns:
        int32 `[batch]` error codes: 0 if the chunk decoded cleanly (the stream is exactly the
        encoder's output for the decoded symbols), else `ERROR_*` bits; see `describe_errors`
        and `check_errors`.
    """
    return _finish(state, np)


def decode_tables_np(data, num_bytes, freq_tables, num_steps=None, precision_bits: int = 16):
    """Decodes a batch whose tables are all known in advance (NumPy reference).

    Args:
        data: integer `[batch, capacity]` byte streams.
        num_bytes: integer `[batch]` valid bytes per stream.
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
    state = decode_init_np(data, num_bytes, num_steps)
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


def _encode_scan_jax(starts, freqs, precision_bits: int):
    """Runs the encoder forwards over the steps (one `lax.scan`), leaving carries unresolved.

    Args:
        starts: uint32 `[batch, steps]` valid interval starts.
        freqs: uint32 `[batch, steps]` valid interval sizes (masked steps: `(0, 2**n)`, which
            leaves the state unchanged).
        precision_bits: log2 of the table total.

    Returns:
        `(words, heads, low, rng)`: uint32 `[steps, batch]` words packing the top 16 bits of
        `low` before the shifts (the bytes emitted, most significant first), the number of bytes
        emitted (bits 16-17) and whether the step carried into earlier bytes (bit 18); int32
        `[steps, batch]` bytes emitted before each step; the final uint32 `[batch]` `low` and
        `range`.
    """
    batch = starts.shape[0]

    def step(carry, inputs):
        low, rng, head = carry
        start, freq = inputs
        bottom = _scale(rng, start, precision_bits, jnp)
        top = _scale(rng, start + freq, precision_bits, jnp)
        moved = low + bottom
        carried = moved < low  # A uint32 wrap: bit 32 of the true sum.
        low, rng = moved, top - bottom
        count = jnp.zeros(batch, jnp.uint32)
        for shift in range(_max_shifts(precision_bits)):
            count += (rng < RANGE_BOTTOM >> (8 * shift)).astype(jnp.uint32)
        word = (low >> 16) | (count << 16) | (carried.astype(jnp.uint32) << 18)
        bits = 8 * count
        return (low << bits, rng << bits, head + count.astype(jnp.int32)), (word, head)

    init = (
        jnp.zeros(batch, jnp.uint32),
        jnp.full(batch, INITIAL_RANGE, jnp.uint32),
        jnp.zeros(batch, jnp.int32),
    )
    (low, rng, _), (words, heads) = jax.lax.scan(step, init, (starts.T, freqs.T))
    return words, heads, low, rng


def _resolve_carries_jax(words, final_carry):
    """Adds every step's carry to the bytes emitted before it (one reverse `lax.scan`).

    A carry at step t adds 1 to the bytes emitted before step t; scanning backwards, the carry
    into step t's bytes is the carry out of step t + 1's. At most one unit is pending at a time
    (module docstring: bytes before a carry are final), so the carries fit in one bit.

    Args:
        words: uint32 `[steps, batch]` from `_encode_scan_jax`.
        final_carry: bool `[batch]` the termination's carry.

    Returns:
        uint32 `[steps, batch]`: each step's bytes after carries, most significant first
        (bits 8-15 then 0-7; unused bytes are 0).
    """

    def step(carry_in, word):
        count = (word >> 16) & 3
        unused = 16 - 8 * count
        value = ((word & 0xFFFF) >> unused) + carry_in
        carry_out = (value >> (8 * count)) | (word >> 18)
        return carry_out, (value << unused) & 0xFFFF

    _, values = jax.lax.scan(step, final_carry.astype(jnp.uint32), words, reverse=True)
    return values


def _place_bytes_jax(values, heads, capacity: int):
    """Writes each step's (up to) two bytes at its position: one windowed scatter-add.

    Args:
        values: uint32 `[steps, batch]` from `_resolve_carries_jax`.
        heads: int32 `[steps, batch]` position of each step's first byte.
        capacity: bytes per row.

    Returns:
        uint8 `[batch, capacity]`. A step with one byte adds 0 at the next position, which the
        next emitting step fills: positions hold one byte each, so adding equals writing.
    """
    steps, batch = values.shape
    pairs = jnp.stack([values >> 8, values & 0xFF], axis=-1).astype(jnp.uint8)
    rows = jnp.broadcast_to(jnp.arange(batch, dtype=jnp.int32), (steps, batch))
    columns = jnp.where(values != 0, heads, capacity + 1)  # Nothing to add: out of range.
    numbers = jax.lax.ScatterDimensionNumbers(
        update_window_dims=(2,), inserted_window_dims=(0,), scatter_dims_to_operand_dims=(0, 1)
    )
    data = jax.lax.scatter_add(
        jnp.zeros((batch, capacity + 1), jnp.uint8),
        jnp.stack([rows, columns], axis=-1),
        pairs,
        numbers,
        mode=jax.lax.GatherScatterMode.FILL_OR_DROP,
    )
    return data[:, :capacity]


@functools.partial(jax.jit, static_argnames=("precision_bits",))
def encode_jax_core(starts, freqs, lengths, precision_bits: int = 16):
    """Encodes a batch of chunks on device (jittable).

    A forward `lax.scan` runs the coder, a reverse one resolves the carries, and one scatter
    places the bytes.

    Args:
        starts: integer `[batch, steps]` interval starts.
        freqs: integer `[batch, steps]` interval sizes.
        lengths: integer `[batch]` number of valid steps per chunk.
        precision_bits: log2 of the table total (static).

    Returns:
        `(data, num_bytes, invalid)`: uint8 `[batch, capacity_bytes(steps, precision_bits)]` and
        int32 `[batch]` exactly as `encode_np` returns them, and bool `[batch]` marking chunks
        that had an invalid interval (their bytes are meaningless).
    """
    capacity = capacity_bytes(jnp.shape(starts)[1], precision_bits)
    starts = jnp.asarray(starts).astype(jnp.uint32)
    freqs = jnp.asarray(freqs).astype(jnp.uint32)
    steps = starts.shape[1]
    total = 1 << precision_bits
    active = jnp.arange(steps)[None, :] < jnp.asarray(lengths)[:, None]
    invalid = active & (
        (freqs < 1) | (freqs > total) | (starts > total - jnp.minimum(freqs, total))
    )
    freqs = jnp.where(active & ~invalid, freqs, total)  # Probability 1: no change.
    starts = jnp.where(active & ~invalid, starts, 0)
    words, heads, low, rng = _encode_scan_jax(starts, freqs, precision_bits)
    byte, has_byte, carry = _termination(low, rng, jnp)
    data = _place_bytes_jax(_resolve_carries_jax(words, carry), heads, capacity)
    head = heads[-1] + ((words[-1] >> 16) & 3).astype(jnp.int32) if steps else 0
    at_end = (jnp.arange(capacity) == jnp.asarray(head)[..., None]) & has_byte[:, None]
    data = data + jnp.where(at_end, byte[:, None], 0).astype(jnp.uint8)
    return data, _stripped_length(data, jnp), jnp.any(invalid, axis=1)


def encode_jax(starts, freqs, lengths=None, precision_bits: int = 16):
    """Encodes a batch on device and validates the result on the host.

    Args:
        starts: integer `[batch, steps]` interval starts (`symbol_intervals_jax`).
        freqs: integer `[batch, steps]` interval sizes.
        lengths: integer `[batch]` valid steps per chunk (default: all).
        precision_bits: log2 of the table total.

    Returns:
        `(data, num_bytes)`: uint8 `[batch, capacity_bytes(steps, precision_bits)]` and int32
        `[batch]` device arrays, identical to `encode_np`.

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
    data, num_bytes, invalid = encode_jax_core(starts, freqs, lengths, precision_bits)
    invalid = np.asarray(invalid)
    if invalid.any():
        raise ValueError(
            f"invalid interval in chunk {int(np.flatnonzero(invalid)[0])}: need freq >= 1 and "
            f"start + freq <= 2**{precision_bits} (a zero-frequency symbol, a table with the "
            "wrong total, or a symbol outside the alphabet)"
        )
    return data, num_bytes


def decode_init_jax(data, num_bytes, num_steps) -> DecoderState:
    """Starts decoding a batch of streams on device (jittable).

    Args:
        data: integer `[batch, capacity]` byte streams (uint8 preferred).
        num_bytes: integer `[batch]` valid bytes per stream (clipped to `[0, capacity]`).
        num_steps: integer `[batch]` symbols to decode per chunk.

    Returns:
        The initial `DecoderState` (JAX arrays).
    """
    data = jnp.asarray(data).astype(jnp.uint8)
    num_bytes = jnp.clip(jnp.asarray(num_bytes, dtype=jnp.int32), 0, data.shape[1])
    return _init(data, num_bytes, jnp.asarray(num_steps, dtype=jnp.int32), jnp)


def _lookup_jax(tables, code, rng, precision_bits: int):
    """Finds, per row, the symbol whose interval `[scale(start), scale(start + freq))` holds `code`.

    `scale(c) = floor(range * c / 2**n)` is increasing in `c`, so this is the last symbol whose
    scaled cumulative start is at most `code`. A two-level search: sum blocks of about
    sqrt(vocab) symbols, find the block holding `code`, then search inside that block. This
    costs O(vocab) per row, whereas a full cumulative sum is the slowest part of a decode step on
    CPU (XLA lowers cumsum to a reduce_window).

    Args:
        tables: uint32 `[batch, vocab]` frequency tables.
        code: uint32 `[batch]` decoder values, below `rng` in a valid stream.
        rng: uint32 `[batch]` decoder ranges.
        precision_bits: `n`.

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
    rng, code = rng[:, None], code[:, None]
    before = _scale(rng, block_ends, precision_bits, jnp) <= code
    # Clamped (like the symbol) when `code >= range`, which only a corrupted stream gives.
    chosen = jnp.minimum(jnp.sum(before, axis=-1, dtype=jnp.int32), num_blocks - 1)
    base = jnp.take_along_axis(block_ends - block_sums, chosen[:, None], axis=-1)
    members = jnp.take_along_axis(padded, chosen[:, None, None], axis=1)[:, 0]
    ends = base + jnp.cumsum(members, axis=-1, dtype=jnp.uint32)
    inside = _scale(rng, ends, precision_bits, jnp) <= code
    offset = jnp.minimum(jnp.sum(inside, axis=-1, dtype=jnp.int32), block - 1)[:, None]
    freqs = jnp.take_along_axis(members, offset, axis=-1)[:, 0]
    starts = jnp.take_along_axis(ends, offset, axis=-1)[:, 0] - freqs
    return chosen * block + offset[:, 0], starts, freqs, block_ends[:, -1]


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
    symbols, start, freq, total = _lookup_jax(tables, state.code, state.range, precision_bits)
    # One pass for 1 <= freq <= T: freq - 1 wraps to 2**32 - 1 for freq == 0.
    table_ok = (jnp.max(tables - 1, axis=-1) < 1 << precision_bits) & (total == 1 << precision_bits)
    symbols = jnp.minimum(symbols, vocab - 1)  # Only an invalid table can point past the end.
    state = _decode_update(state, start, freq, active, precision_bits, jnp)
    errors = state.errors | jnp.where(active & ~table_ok, ERROR_INVALID_TABLE, 0)
    return jnp.where(active, symbols, 0), state._replace(errors=errors.astype(jnp.int32))


def decode_finish_jax(state: DecoderState) -> jax.Array:
    """JAX version of `decode_finish_np` (jittable): int32 `[batch]` error codes, 0 if clean."""
    return _finish(state, jnp)


@functools.partial(jax.jit, static_argnames=("precision_bits",))
def decode_tables_jax(data, num_bytes, freq_tables, num_steps, precision_bits: int = 16):
    """Decodes a batch whose tables are all known in advance, in one jitted `lax.scan`.

    Args:
        data: integer `[batch, capacity]` byte streams.
        num_bytes: integer `[batch]` valid bytes per stream.
        freq_tables: integer `[batch, steps, vocab]` tables.
        num_steps: integer `[batch]` symbols per chunk.
        precision_bits: log2 of the table total (static).

    Returns:
        `(symbols, errors)`: int32 `[batch, steps]` and int32 `[batch]` error codes.
    """

    def step(state, tables):
        return decode_step_jax(state, tables, precision_bits)[::-1]

    state = decode_init_jax(data, num_bytes, num_steps)
    state, symbols = jax.lax.scan(step, state, jnp.swapaxes(freq_tables, 0, 1))
    return symbols.T, decode_finish_jax(state)
