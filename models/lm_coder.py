"""A Transformer as an exact entropy coder: the one compiled step that encoder and decoder share.

Exactness by construction. The decoder must see the encoder's integer frequency tables bit for
bit, but XLA's float results depend on the shape and the program they are computed in (the same
sequence gives different log-probs at batch 1 and 16, or through the parallel pass and the KV
cache). So both directions run *the same compiled functions* (`_start_jit`, then `_block_jit`
once per attention block: one executable per coder and block) on inputs of *the same shape* with
*the same values*:

* chunks are coded in groups of `lanes` rows (a group is padded with empty chunks); the group
  layout is part of the stream format, so decoding never depends on how a caller batches;
* blocks past the longest chunk of a group are skipped in both directions (both know the
  lengths), and in the decoder blocks past the longest chunk it still has to decode; skipping
  a whole call leaves the other calls' floats as they were;
* at step t every row is fed token t-1 of its chunk, or 0 past the chunk's end, in both
  directions: the encoder knows the tokens, the decoder has just decoded them;
* inside the step, the model's float32 probabilities go through `coding.quantize` (exact integer
  arithmetic from there on); the encoder then takes the interval of the known token while the
  decoder searches the same table for it. A single `encoding` flag, an argument rather than a
  trace-time constant, selects which symbol is kept, so it cannot change the compiled program.

A model whose tables are exact integers whatever the program (`Net.exact`: our integer model, the
portable path) has its encoder take them all from one parallel pass (`Net.parallel`,
`LMCoder._parallel_intervals`) instead; the decoder still runs the steps, and the stream is the
same byte for byte.

The model is any `models.coding_model.Net` (our Transformer, its integer twin, a pretrained
checkpoint); the coder never asks which. A float model's tokens are coded under one table, two
factorised steps (`coding.factorized`) or the paper's top-k tables with an escape (`coding.topk`),
as `coding.tables` quantises them.
The range coder's bytes are produced after the scan by `coding.range_coder.encode_jax_core` from the
recorded intervals; decoding reads them inside the scan, one step per token, on the device, without
a host round trip. Each chunk's payload is its coded bytes, about 0.3 bytes above the model's ideal
code length on average (`coding.range_coder`).
"""

import dataclasses
import functools
import hashlib
import itertools
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from coding import range_coder
from coding import tables as coding_tables
from models import transformer

MAX_LANES = 1 << 16
MAX_ATTENTION_BLOCKS = 16  # each block is a scan of its own: compile time grows with them
# The portable encoder's parallel pass, per call, on a CPU: 16 rows of the demo model (200K,
# 256 bytes), whose attention blocks then stay near the cache; 32 or 64 rows a call ran slower.
CPU_PARALLEL_BYTES = 1 << 27


@dataclasses.dataclass(frozen=True)
class CoderShape:
    """What fixes the compiled program besides the model: part of the stream format.

    Attributes:
      lanes: chunks coded together in one group.
      chunk_tokens: tokens per chunk (the model's context at most).
      precision_bits: log2 of each frequency table's total.
      attention_blocks: the chunk runs in this many blocks, each attending only to the cache
        filled so far (more blocks: less attention work, longer compiles).
      low_bits: 0 codes each token with one table over the vocabulary; k > 0 codes it as two
        steps, its high bits then its low `k` bits (`coding.factorized`), which for bytes (k = 4:
        two 16-symbol tables) costs less: the `+1` floor every symbol needs in a table takes
        16/2**16 of the mass instead of 256/2**16 (0.03 against 0.58 bytes per 2048-byte chunk
        of text, BENCHMARKS.md). -1 (the default) lets the model choose (`Net.table_spec`: the
        cheapest by `coding.tables.default_low_bits` for float models, 0 for exact ones).
      kv_dtype: a float Transformer's KV cache: '' (the compute dtype), 'bfloat16' or 'int8'
        (half or a quarter of the memory a decode step reads, which bounds a GPU's speed; what
        each costs in bits/byte is in BENCHMARKS.md).
      top_k: 0 codes every token under the whole vocabulary; k > 0 under the paper's top-k
        tables with an escape (`coding.topk`: a rank step, then the id's digits when escaped;
        low_bits must then be 0 or -1). Float models only.
    """

    lanes: int
    chunk_tokens: int
    precision_bits: int = 16
    attention_blocks: int = 8
    low_bits: int = -1
    kv_dtype: str = ""
    top_k: int = 0

    def check(self, context_length: int, vocab_size: int) -> None:
        """Raises ValueError unless this shape fits a model of this context and vocabulary."""
        if not 1 <= self.chunk_tokens <= context_length:
            raise ValueError(
                f"chunk of {self.chunk_tokens} tokens does not fit the model's context of "
                f"{context_length}: use a chunk size of at most {context_length}."
            )
        if not 1 <= self.lanes <= MAX_LANES:
            raise ValueError(f"lanes must lie in [1, {MAX_LANES}], got {self.lanes}.")
        if self.low_bits < 0:
            raise ValueError("low_bits must be resolved (>= 0) here.")
        if not 1 <= self.attention_blocks <= min(MAX_ATTENTION_BLOCKS, self.chunk_tokens):
            raise ValueError(
                f"attention_blocks must lie in [1, {min(MAX_ATTENTION_BLOCKS, self.chunk_tokens)}]"
                f", got {self.attention_blocks}."
            )
        if self.kv_dtype not in transformer.KV_DTYPES:
            raise ValueError(f"kv_dtype must be one of {transformer.KV_DTYPES} (float path only).")
        spec = coding_tables.TableSpec(self.precision_bits, self.low_bits, self.top_k)
        coding_tables.check_spec(spec, vocab_size)

    def to_dict(self) -> dict:
        """The fields as a stream's settings record them (`from_dict` reads them back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> "CoderShape":
        """Reads `to_dict`'s fields, typed; raises KeyError, TypeError or ValueError on
        missing or malformed ones."""
        return cls(
            int(fields["lanes"]),
            int(fields["chunk_tokens"]),
            int(fields["precision_bits"]),
            int(fields["attention_blocks"]),
            int(fields["low_bits"]),
            kv_dtype=str(fields.get("kv_dtype", "")),
            top_k=int(fields.get("top_k", 0)),
        )


def default_lanes(net, chunk_tokens: int) -> int:
    """Lanes that fill this device: on a GPU or TPU as many as a quarter of its memory holds
    (up to 2,048: per-step launch overhead needs hundreds to thousands), on a CPU 64."""
    device = jax.local_devices()[0]
    limit = (device.memory_stats() or {}).get("bytes_limit")
    if device.platform == "cpu" or not limit:
        return 64
    probe = LMCoder(net, None, CoderShape(1, chunk_tokens, attention_blocks=1))
    return int(max(1, min(2048, limit // 4 // probe.memory_bytes())))


class LMCoder:
    """Encodes and decodes groups of `lanes` token chunks with one model.

    Args:
      net: the model's computation (`models.coding_model.Net`: our float Transformer, its
        integer twin, a pretrained checkpoint, or any other implementation).
      params: its parameters.
      shape: lanes, chunk length and precision (stored in the stream).

    Raises:
      ValueError: a chunk longer than the model's context, bad lanes / precision, or tables
        the model cannot code with.
    """

    def __init__(self, net, params: Any, shape: CoderShape):
        spec = net.table_spec(shape.precision_bits, shape.low_bits, shape.top_k, shape.kv_dtype)
        shape = dataclasses.replace(shape, low_bits=spec.low_bits)
        shape.check(net.context_length, net.vocab_size)
        self.net, self.params, self.shape, self.spec = net, params, shape, spec
        self.factorized = spec.low_bits > 0
        self.steps_per_token = spec.steps_per_token(net.vocab_size)

    @property
    def capacity_bytes(self) -> int:
        """Bytes a chunk's payload may take at most."""
        steps = self.shape.chunk_tokens * self.steps_per_token
        return range_coder.capacity_bytes(steps, self.shape.precision_bits)

    def memory_bytes(self) -> int:
        """About the most one group takes on the device (a stream's lanes cost its decoder this
        much; see README). Per lane, measured against XLA's own accounting of the block program
        (`tests/lm_coder_test.py`): the carry twice (a block's call returns a new one while its
        argument lives, as XLA accounts it, though the argument is donated: the KV cache and the
        coder's stream), the model's other live memory in a step (`Net.work_bytes`: keys and
        values widened as attention reads them, a layer's attention weights, vectors over the
        vocabulary and the widths), and the recorded intervals twice (as scanned, then in coding
        order); and, once, what the cache holds for all lanes together
        (`Net.shared_cache_bytes`)."""
        s, length = self.shape, self.shape.chunk_tokens
        steps = length * self.steps_per_token
        carry = self.net.cache_bytes(length, s.kv_dtype) + self.capacity_bytes + 64
        recorded = 2 * (length * 9 + steps * 8)  # symbol, bits, escape; start and freq per step
        shared = self.net.shared_cache_bytes()  # once: XLA updates it in place
        return s.lanes * (2 * carry + self.net.work_bytes(length) + recorded) + shared

    def blocks(self) -> list[tuple[int, int]]:
        """The attention blocks: (first, last) steps of each, `attention_blocks` of them."""
        length = self.shape.chunk_tokens
        block_len = -(-length // self.shape.attention_blocks)
        return [(first, min(length, first + block_len)) for first in range(0, length, block_len)]

    def _start(self, params, data, num_bytes, num_steps):
        """The carry before step 0: an empty cache, previous tokens 0, the decoder's state."""
        lanes, length = data.shape[0], self.shape.chunk_tokens
        cache = self.net.init_cache(params, lanes, length, self.shape.kv_dtype)
        decoder = range_coder.decode_init_jax(data, num_bytes, num_steps)
        return cache, jnp.zeros(lanes, jnp.int32), decoder

    def _block(self, params, carry, tokens, lengths, encoding, first, last):
        """Steps first..last - 1 of a group, attending to the first `last` cache entries.

        Args:
          params: model parameters.
          carry: from `_start` or the previous block.
          tokens: int32 [lanes, chunk_tokens], zero past each length (ignored when decoding).
          lengths: int32 [lanes] tokens per chunk.
          encoding: bool [lanes]: lanes whose tokens are known (all of them when encoding; when
            decoding, the chunks stored raw), which the model reads instead of decoding them.
          first, last: the block's steps (static).

        Returns:
          (carry, (symbols [t, lanes], starts and freqs [t, lanes, k], the model's bits
          [t, lanes], top-k escapes [t, lanes])) for the block's t steps and k coder steps a token.
        """

        def step(carry, t):
            cache, prev, decoder = carry
            tables, cache = self.net.step(params, prev, t, cache, last, self.spec)
            decoded, decoder = tables.decode(decoder)
            active = t < lengths
            symbol = jnp.where(active, jnp.where(encoding, tokens[:, t], decoded), 0)
            starts, freqs = tables.intervals(symbol)
            bits = jnp.where(active, tables.bits(symbol), 0.0)
            escaped = active & tables.escaped(symbol)
            return (cache, symbol, decoder), (symbol, starts, freqs, bits, escaped)

        return jax.lax.scan(step, carry, jnp.arange(first, last, dtype=jnp.int32))

    def _run(self, tokens, lengths, data, num_bytes, encoding):
        """Runs the model over a group, token by token, in both directions.

        The chunk runs in attention blocks, block b's steps reading the first (b + 1) *
        block_len cache entries. Each block is one compiled call, the same executable for
        encoder and decoder (`_block_jit`), and blocks past every lane's length are skipped
        (when decoding, past every lane still to decode): they would code nothing, and
        skipping a whole call cannot change the others' floats.

        Args:
          tokens, lengths, encoding: as in `_block`.
          data: uint8 [lanes, capacity] payloads (ignored when encoding).
          num_bytes: int32 [lanes].

        Returns:
          (symbols [lanes, chunk_tokens], starts and freqs [lanes, steps], ideal code length in
          bits [lanes], decoder error codes [lanes], top-k escapes [lanes]).
        """
        lanes = tokens.shape[0]
        num_steps = np.where(encoding, 0, lengths * self.steps_per_token)  # known: nothing to read
        carry = _start_jit(self.params, data, num_bytes, num_steps, net=self.net, shape=self.shape)
        decoding = ~encoding if not encoding.all() else encoding  # the encoder: every lane
        needed = int(np.max(lengths, initial=0, where=decoding))
        outputs = []
        for first, last in self.blocks():
            if first >= needed and outputs:
                break
            carry, out = _block_jit(
                self.params, carry, tokens, lengths, encoding, first, last,
                net=self.net, shape=self.shape,
            )  # fmt: skip
            outputs.append(out)
        symbols_tl, starts_tlk, freqs_tlk, bits_tl, escaped_tl = (
            jnp.concatenate(x) for x in zip(*outputs, strict=True)
        )
        # [t, l, k] -> [l, t * k]: each lane's intervals in coding order, zero for skipped steps
        # (kept on the device for the encoder).
        skipped = self.shape.chunk_tokens - symbols_tl.shape[0]
        pad = ((0, 0), (0, skipped * self.steps_per_token))
        starts = jnp.pad(jnp.transpose(starts_tlk, (1, 0, 2)).reshape(lanes, -1), pad)
        freqs = jnp.pad(jnp.transpose(freqs_tlk, (1, 0, 2)).reshape(lanes, -1), pad)
        symbols = np.pad(np.asarray(symbols_tl).T, ((0, 0), (0, skipped)))
        errors = np.asarray(_finish_jit(carry[2]))
        return symbols, starts, freqs, bits_tl.sum(0), errors, escaped_tl.sum(0)

    def _check_group(self, lengths):
        lengths = np.asarray(lengths, np.int32)
        if lengths.shape != (self.shape.lanes,):
            raise ValueError(f"lengths must have shape ({self.shape.lanes},), got {lengths.shape}.")
        if lengths.min() < 0 or lengths.max() > self.shape.chunk_tokens:
            raise ValueError(f"chunk lengths must lie in [0, {self.shape.chunk_tokens}].")
        return lengths

    def parallel_rows(self, length: int | None = None) -> int:
        """Rows per call of the parallel encoder (`_parallel_intervals`): as many of the
        group's lanes as a quarter of the device's memory holds by the net's
        `parallel_row_bytes` (measured against XLA's own accounting in
        `tests/parallel_encoder_test.py`; on a CPU, `CPU_PARALLEL_BYTES`)."""
        device = jax.local_devices()[0]
        limit = (device.memory_stats() or {}).get("bytes_limit")
        budget = CPU_PARALLEL_BYTES if device.platform == "cpu" or not limit else limit // 4
        per_row = self.net.parallel_row_bytes(length or self.shape.chunk_tokens)
        return int(max(1, min(self.shape.lanes, budget // per_row)))

    def _parallel_intervals(self, tokens: np.ndarray, lengths: np.ndarray):
        """The encoder's intervals from one parallel pass of a model with exact tables.

        `Net.parallel` gives every position's table at once; exact tables are bit for bit
        those its `step` computes (`tests/integer_test.py`): the coder sees the same intervals,
        so the stream is the same. Rows go `parallel_rows` at a time, each
        call padded to the group's longest chunk rounded up to an attention block (few
        compiled lengths); positions past a chunk's length code nothing.

        Args:
          tokens: int32 [lanes, chunk_tokens], zero past each length.
          lengths: int32 [lanes].

        Returns:
          (starts, freqs uint32 [lanes, chunk_tokens * steps per token], zero past each
          length; the tables' bits float32 [lanes]).
        """
        lanes, chunk = tokens.shape
        k = self.steps_per_token
        starts = np.zeros((lanes, chunk * k), np.uint32)
        freqs = np.zeros((lanes, chunk * k), np.uint32)
        bits = np.zeros(lanes, np.float32)
        longest = int(lengths.max(initial=0))
        if not longest:
            return starts, freqs, bits
        block = self.blocks()[0][1]
        length = min(chunk, -(-longest // block) * block)
        rows = self.parallel_rows(length)
        for first in range(0, lanes, rows):
            part_tokens = np.zeros((rows, length), np.int32)
            part_lengths = np.zeros(rows, np.int32)
            count = min(rows, lanes - first)
            part_tokens[:count] = tokens[first : first + count, :length]
            part_lengths[:count] = lengths[first : first + count]
            s, f, b = _parallel_intervals_jit(
                self.params, part_tokens, part_lengths, net=self.net, spec=self.spec
            )
            starts[first : first + count, : length * k] = np.asarray(s)[:count]
            freqs[first : first + count, : length * k] = np.asarray(f)[:count]
            bits[first : first + count] = np.asarray(b)[:count]
        return starts, freqs, bits

    def encode_group(self, tokens: np.ndarray, lengths: np.ndarray, parallel: bool | None = None):
        """Encodes one group of `lanes` chunks.

        Args:
          tokens: int [lanes, chunk_tokens] ids; entries past each chunk's length are ignored.
          lengths: int [lanes] tokens per chunk (0 for padding rows).
          parallel: compute the tables in one parallel pass (`_parallel_intervals`) rather than
            step by step as the decoder does; None: when the model's tables are exact, whose
            stream is the same either way (a float model's parallel and step floats differ).
            Exact tables only.

        Returns:
          `GroupCode`: a payload per lane and its code lengths.
        """
        lengths = self._check_group(lengths)
        tokens = np.asarray(tokens, np.int32)
        if tokens.shape != (self.shape.lanes, self.shape.chunk_tokens):
            raise ValueError(f"tokens must be [{self.shape.lanes}, {self.shape.chunk_tokens}].")
        valid = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
        if np.any(valid & ((tokens < 0) | (tokens >= self.net.vocab_size))):
            raise ValueError(f"token ids must lie in [0, {self.net.vocab_size}).")
        tokens = np.where(valid, tokens, 0)
        parallel = self.net.exact if parallel is None else parallel
        if parallel and not self.net.exact:
            raise ValueError("only the portable path (exact tables) encodes in parallel.")
        if parallel:
            starts, freqs, bits = self._parallel_intervals(tokens, lengths)
            escapes = np.zeros(self.shape.lanes, np.int32)
        else:
            no_data = np.zeros((self.shape.lanes, self.capacity_bytes), np.uint8)
            zeros = np.zeros(self.shape.lanes, np.int32)
            known = np.ones(self.shape.lanes, bool)
            _, starts, freqs, bits, _, escapes = self._run(tokens, lengths, no_data, zeros, known)
        data_lb, num_bytes, invalid = range_coder.encode_jax_core(
            starts, freqs, lengths * self.steps_per_token, self.shape.precision_bits
        )
        if np.any(invalid):  # cannot happen for valid tokens: quantize gives every symbol >= 1
            raise RuntimeError("the coder produced an invalid interval; please report this bug.")
        data_lb, num_bytes = np.asarray(data_lb), np.asarray(num_bytes)
        payloads = [data_lb[i, : num_bytes[i]].tobytes() for i in range(len(lengths))]
        freqs_ls = np.asarray(freqs, np.float64)
        active = np.arange(freqs_ls.shape[1])[None, :] < (lengths * self.steps_per_token)[:, None]
        table_bits = np.where(
            active, self.shape.precision_bits - np.log2(np.maximum(freqs_ls, 1)), 0.0
        ).sum(axis=1)
        return GroupCode(payloads, np.asarray(bits, np.float64), table_bits, np.asarray(escapes))

    def decode_group(
        self,
        payloads: list[bytes],
        lengths: np.ndarray,
        known: dict[int, np.ndarray] | None = None,
    ):
        """Decodes one group of `lanes` chunks (fewer payloads: the rest are padding).

        Args:
          payloads: the coded chunks, at most `lanes` (a known lane's is ignored).
          lengths: int [lanes] tokens per chunk.
          known: lane -> its tokens, for chunks stored raw: the model reads them as the encoder
            did, so the other lanes see exactly the encoder's inputs.

        Returns:
          (tokens int32 [lanes, chunk_tokens], zero past each length; error codes int32 [lanes],
          0 where the stream decoded cleanly; see `coding.range_coder.describe_errors`).

        Raises:
          range_coder.CorruptStreamError: a payload longer than any chunk's can be.
        """
        lengths = self._check_group(lengths)
        if len(payloads) > self.shape.lanes:
            raise ValueError(f"at most {self.shape.lanes} payloads per group, got {len(payloads)}.")
        known = known or {}
        data_lb = np.zeros((self.shape.lanes, self.capacity_bytes), np.uint8)
        num_bytes = np.zeros(self.shape.lanes, np.int32)
        tokens = np.zeros((self.shape.lanes, self.shape.chunk_tokens), np.int32)
        encoding = np.zeros(self.shape.lanes, bool)
        for lane, ids in known.items():
            tokens[lane, : len(ids)], encoding[lane] = ids, True
        for i, payload in enumerate(payloads):
            if i in known:
                continue
            if len(payload) > self.capacity_bytes:
                raise range_coder.CorruptStreamError(
                    f"lane {i}: a payload of {len(payload)} bytes, more than a chunk can take"
                )
            data_lb[i, : len(payload)] = np.frombuffer(payload, np.uint8)
            num_bytes[i] = len(payload)
        # An empty stream is the value 0, which every table maps to its first symbol (start 0,
        # frequency >= 1) with nothing left to read: such a lane decodes to token 0 at every
        # step whatever the model says (under top-k, rank 0 is the model's choice), so it is
        # fed as known zeros, as the encoder fed it. Padding lanes have no tokens.
        if not self.shape.top_k:
            encoding |= num_bytes == 0
        if encoding.all() or not lengths[~encoding].any():
            return tokens, np.zeros(self.shape.lanes, np.int32)  # nothing for the model to do
        symbols, _, _, _, errors, _ = self._run(tokens, lengths, data_lb, num_bytes, encoding)
        # Known lanes keep their tokens (blocks past the lanes still decoding were skipped).
        return np.where(encoding[:, None], tokens, np.asarray(symbols)), np.asarray(errors)

    def encode_chunks(
        self, chunks: Iterable[np.ndarray | bytes], verify: bool = False, first_index: int = 0
    ) -> Iterator["Coded"]:
        """Encodes any number of token chunks, `lanes` at a time.

        Args:
          chunks: 1-D token arrays (or bytes, for byte-level models), each at most
            `chunk_tokens` long.
          verify: decode every group back and compare it with its input.
          first_index: the index of the first chunk, for error messages.

        Yields:
          `Coded` per chunk, in order.

        Raises:
          VerificationError: with `verify`, a chunk did not decode to its input (names it).
        """
        first = first_index
        for group in group_chunks(chunks, self.shape.lanes, self.shape.chunk_tokens):
            code = self.encode_group(group.tokens, group.lengths)
            payloads = code.payloads[: group.count]
            if verify:
                self._verify(group, payloads, first)
            for i, payload in enumerate(payloads):
                yield Coded(
                    payload,
                    int(group.lengths[i]),
                    float(code.bits[i]),
                    float(code.table_bits[i]),
                    int(code.escapes[i]),
                )
            first += group.count

    def _verify(self, group: "Group", payloads: list[bytes], first: int) -> None:
        decoded, errors = self.decode_group(payloads, group.lengths)
        bad = [
            first + i
            for i, n in enumerate(group.lengths[: group.count])
            if errors[i] or not np.array_equal(decoded[i, :n], group.tokens[i, :n])
        ]
        if bad:
            raise VerificationError(f"chunks {', '.join(map(str, bad))} did not decode back.")

    def decode_chunks(
        self, streams: Iterable[tuple[bytes, int, np.ndarray | None]]
    ) -> Iterator[np.ndarray]:
        """Decodes chunks made by `encode_chunks` with this shape, `lanes` at a time.

        Args:
          streams: (payload, number of tokens, known tokens or None) per chunk, in order; a
            chunk with known tokens (stored raw) is not decoded but fed to the model as the
            encoder fed it.

        Yields:
          int32 [num_tokens] tokens per chunk, in order.

        Raises:
          range_coder.CorruptStreamError: a chunk failed its decoding checks (names it).
        """
        first = 0
        for batch in itertools.batched(streams, self.shape.lanes):
            lengths = np.zeros(self.shape.lanes, np.int32)
            lengths[: len(batch)] = [n for _, n, _ in batch]
            known = {i: ids for i, (_, _, ids) in enumerate(batch) if ids is not None}
            try:
                tokens, errors = self.decode_group([p for p, _, _ in batch], lengths, known)
            except range_coder.CorruptStreamError as e:
                raise range_coder.CorruptStreamError(f"group at chunk {first}: {e}") from e
            for i in np.flatnonzero(errors[: len(batch)]):  # padding lanes have no stream
                why = range_coder.describe_errors(int(errors[i]))
                raise range_coder.CorruptStreamError(f"chunk {first + i} failed to decode: {why}")
            for i in range(len(batch)):
                yield tokens[i, : lengths[i]]
            first += len(batch)


class GroupCode(NamedTuple):
    """One coded group (`LMCoder.encode_group`).

    Attributes:
      payloads: one `bytes` per lane, the coded chunk.
      bits: float64 [lanes], the model's -log2 p of each chunk.
      table_bits: float64 [lanes], the -log2 of the quantised tables coded with.
      escapes: int32 [lanes], tokens coded through the top-k escape (0 without top-k).
    """

    payloads: list[bytes]
    bits: np.ndarray
    table_bits: np.ndarray
    escapes: np.ndarray


class Coded(NamedTuple):
    """One coded chunk.

    Attributes:
      payload: the coder's bytes.
      num_tokens: tokens coded.
      bits: the model's ideal code length, sum of -log2 p (the float model's log-loss; on the
        portable path, that of its integer tables).
      table_bits: the ideal code length of the frequency tables actually coded with, sum of
        -log2(freq / 2**precision): bits - table_bits is what quantising costs, 8 * len(payload)
        - table_bits what the coder costs.
      escapes: tokens coded through the top-k escape (outside the model's k most likely).
    """

    payload: bytes
    num_tokens: int
    bits: float
    table_bits: float = 0.0
    escapes: int = 0


class VerificationError(RuntimeError):
    """A chunk did not decode back to its input."""


@dataclasses.dataclass(frozen=True)
class Group:
    """Chunks padded into one coder group.

    Attributes:
      tokens: int32 [lanes, chunk_tokens], zero past each length.
      lengths: int32 [lanes], 0 for padding rows.
      count: the number of real chunks (the first `count` rows).
    """

    tokens: np.ndarray
    lengths: np.ndarray
    count: int


def group_chunks(
    chunks: Iterable[np.ndarray | bytes], lanes: int, chunk_tokens: int, dtype=np.int32
) -> Iterator[Group]:
    """Groups chunks (token arrays, or bytes for byte-level models) into padded `Group`s.

    Args:
      chunks: 1-D token arrays or bytes.
      lanes: rows per group.
      chunk_tokens: columns per group.
      dtype: of the group's tokens (uint8 saves transfers for byte chunks).

    Raises:
      ValueError: a chunk longer than `chunk_tokens`.
    """
    for batch in itertools.batched(chunks, lanes):  # the one grouping of chunks
        tokens = np.zeros((lanes, chunk_tokens), dtype)
        lengths = np.zeros(lanes, np.int32)
        for i, chunk in enumerate(batch):
            ids = np.frombuffer(chunk, np.uint8) if isinstance(chunk, bytes) else chunk
            if len(ids) > chunk_tokens:
                raise ValueError(f"a chunk of {len(ids)} tokens exceeds chunk_size={chunk_tokens}.")
            tokens[i, : len(ids)], lengths[i] = ids, len(ids)
        yield Group(tokens, lengths, len(batch))


@functools.partial(jax.jit, static_argnames=("net", "shape"))
def _start_jit(params, data, num_bytes, num_steps, *, net, shape):
    """`LMCoder._start`, jitted and shared by every coder of the same net and shape."""
    return LMCoder(net, None, shape)._start(params, data, num_bytes, num_steps)


@functools.partial(
    jax.jit, static_argnames=("first", "last", "net", "shape"), donate_argnames=("carry",)
)
def _block_jit(params, carry, tokens, lengths, encoding, first, last, *, net, shape):
    """`LMCoder._block`: one executable per (net, coder shape, block) in a process, run by
    encoder and decoder alike. The carry is donated: the new one takes its buffers (the KV
    cache, the coder's stream, an online model's live counts) instead of copies."""
    return LMCoder(net, None, shape)._block(params, carry, tokens, lengths, encoding, first, last)


_finish_jit = jax.jit(range_coder.decode_finish_jax)


@functools.partial(jax.jit, static_argnames=("net", "spec"))
def _parallel_intervals_jit(params, tokens, lengths, *, net, spec):
    """Intervals of `tokens` [rows, length] under the model's tables, all positions in one pass
    (`LMCoder._parallel_intervals`): (starts, freqs [rows, length * steps per token], zero past
    each length; the tables' bits [rows])."""
    rows, length = tokens.shape
    tables = net.parallel(params, tokens, spec)
    starts, freqs = tables.intervals(tokens.reshape(-1))
    active = jnp.arange(length)[None, :] < lengths[:, None]
    bits = jnp.where(active, tables.bits(tokens.reshape(-1)).reshape(rows, length), 0.0)
    steps = jnp.repeat(active, starts.shape[-1], axis=1)
    zero = jnp.zeros((), jnp.uint32)
    starts, freqs = (x.reshape(rows, -1) for x in (starts, freqs))
    return jnp.where(steps, starts, zero), jnp.where(steps, freqs, zero), bits.sum(-1)


def params_sha256(description: bytes, params: Any) -> bytes:
    """sha256 over `description` (what else identifies the model) and every parameter's path,
    dtype, shape and bytes: a stream's model fingerprint."""
    digest = hashlib.sha256(description)
    for path, leaf in sorted(
        jax.tree_util.tree_flatten_with_path(params)[0], key=lambda kv: jax.tree_util.keystr(kv[0])
    ):
        array = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.digest()
