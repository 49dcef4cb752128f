"""A trained byte-level model as a compressor: rated by its coded bytes and by its log-loss.

Two ways to rate chunks, both independent per chunk (each chunk is coded without context from the
others, as in the paper):

* `log_loss`: the sum of -log2 p(byte) over each chunk from one parallel forward pass, the code
  length an ideal arithmetic coder reaches. Fast: the batch of chunks is split over a
  `jax.sharding` mesh of the local devices, `chunks_per_device` rows each.
* `code`: the bytes `models.lm_coder.LMCoder` actually writes, 2 x num_words per chunk (its rANS
  stream, 32-bit final state included; no container header). With `verify=True` every group is
  decoded back through `LMCoder.decode` and compared with its input.

Exactness across devices. The coder's integer tables must be bit-identical between encoder and
decoder, and XLA's floats depend on the computation's shape and program. So the coded path does
not partition one program over devices: each local device gets its own `LMCoder` (parameters
committed to it) and runs whole groups of `lanes` chunks, the very program and shape a single
device runs, groups dealt round-robin, one host thread per device (a jitted call releases the GIL
while it runs). The coded bytes therefore equal the single-device run's (tested with 4 CPU
devices), and each group is verified on the device that coded it.

Multi-host: this class uses the local devices only; the caller gives each host its share of the
chunks and sums the totals across hosts (eval_compress.py).
"""

import collections
import concurrent.futures
import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import runs
from coding import rans
from data import sources
from models import lm_coder, transformer


class VerificationError(RuntimeError):
    """A chunk did not decode back to its input."""


def _blocks(chunks: Iterable[bytes], rows: int, chunk_size: int):
    """Groups chunks into zero-padded blocks.

    Yields:
      (tokens uint8 [rows, chunk_size], lengths int32 [rows], number of real rows); the last
      block is padded with empty rows.
    """
    tokens = np.zeros((rows, chunk_size), np.uint8)
    lengths = np.zeros(rows, np.int32)
    count = 0
    for chunk in chunks:
        if len(chunk) > chunk_size:
            raise ValueError(f"a chunk of {len(chunk)} bytes exceeds chunk_size={chunk_size}.")
        tokens[count, : len(chunk)] = np.frombuffer(chunk, np.uint8)
        lengths[count] = len(chunk)
        count += 1
        if count == rows:
            yield tokens, lengths, count
            tokens = np.zeros((rows, chunk_size), np.uint8)
            lengths = np.zeros(rows, np.int32)
            count = 0
    if count:
        yield tokens, lengths, count


def _code_group(coder: lm_coder.LMCoder, tokens, lengths, count: int, verify: bool):
    """Encodes (and optionally decodes) one group on the coder's device.

    Returns:
      (coded bytes int64 [count], coder's ideal bits float64 [count], rows that failed to verify).
    """
    words, num_words, bits = coder.encode(tokens, lengths)
    bad = []
    if verify:
        # Through bytes and back, as a stream on disk would go.
        streams = [
            rans.bytes_to_words(rans.words_to_bytes(words[i, : num_words[i]])) for i in range(count)
        ]
        streams += [np.zeros(0, np.uint16)] * (len(lengths) - count)
        packed, packed_num_words = rans.pad_streams(streams)
        decoded, errors = coder.decode(packed, packed_num_words, lengths)
        for i in range(count):
            if errors[i] or not np.array_equal(decoded[i, : lengths[i]], tokens[i, : lengths[i]]):
                bad.append(i)
    return 2 * num_words[:count].astype(np.int64), bits[:count], bad


class LanguageModelCompressor:
    """Rates chunks with the newest (or given) checkpoint of a training run.

    Args:
      workdir: a train.py run directory.
      step: checkpoint step; None for the newest.
      chunks_per_device: rows per device in each forward pass of `log_loss`.
      lanes: chunks per coder group (per device) in `code`.
      devices: devices to use; default all local devices.
      dtype: compute dtype to use instead of the run's ('' keeps it), e.g. 'bfloat16'.
      attention: attention implementation instead of the run's ('' keeps it): 'xla', 'cudnn'.
      attention_blocks: the coder's `CoderShape.attention_blocks` (0 keeps its default).

    Raises:
      FileNotFoundError: not a run, or no checkpoint.
      ValueError: the run's tokenizer is not byte-level, or bad sizes.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        step: int | None = None,
        chunks_per_device: int = 8,
        lanes: int = 16,
        devices: list | None = None,
        dtype: str = "",
        attention: str = "",
        attention_blocks: int = 0,
    ):
        if chunks_per_device < 1 or lanes < 1:
            raise ValueError(f"chunks_per_device={chunks_per_device}, lanes={lanes}: need >= 1.")
        config = runs.load_config(workdir)
        if config.tokenizer != "bytes":  # chunks are rated byte by byte, as in the paper
            raise ValueError(
                f"{workdir} uses the {config.tokenizer} tokenizer: eval_compress rates "
                "byte-level runs (tokenizer 'bytes') only."
            )
        cfg, params, self.step = runs.restore_params(workdir, step)
        self.cfg = dataclasses.replace(
            cfg, dtype=dtype or cfg.dtype, attention=attention or cfg.attention
        )
        self.workdir = str(workdir)
        self.size = config.get("size", "")
        self.num_params = transformer.num_params(params)
        self.chunks_per_device, self.lanes = chunks_per_device, lanes
        # Only passed when set, so the coder's own default (and older coders) keep working.
        self._shape_options = {"attention_blocks": attention_blocks} if attention_blocks else {}
        self.devices = list(devices or jax.local_devices())
        self._params = params
        self._mesh = jax.sharding.Mesh(np.array(self.devices), ("data",))
        replicated = NamedSharding(self._mesh, P())
        split = NamedSharding(self._mesh, P("data"))
        self._replicated_params = jax.device_put(params, replicated)
        self._chunk_bits = jax.jit(
            self._chunk_bits_fn, in_shardings=(replicated, split, split), out_shardings=split
        )
        self._coders: dict[tuple[int, int], lm_coder.LMCoder] = {}

    def _check_chunk_size(self, chunk_size: int) -> None:
        if not 1 <= chunk_size <= self.cfg.context_length:
            raise ValueError(
                f"chunks of {chunk_size} bytes do not fit {self.workdir}'s context of "
                f"{self.cfg.context_length}: use --config.chunk_size <= {self.cfg.context_length}."
            )

    def _chunk_bits_fn(self, params, tokens, lengths):
        """Sum of -log2 p over each row's first `lengths` bytes: [rows]."""
        tokens = tokens.astype(jnp.int32)
        log_probs = transformer.Transformer(self.cfg).apply({"params": params}, tokens)
        nll = -jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
        valid = jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]
        return jnp.where(valid, nll, 0.0).sum(-1) / math.log(2)

    def log_loss(
        self,
        chunks: Iterable[bytes],
        chunk_size: int,
        progress: Callable[[int], None] | None = None,
        prefetch: int = 4,
    ) -> np.ndarray:
        """Returns each chunk's code length under the model in bits, float64 [num_chunks].

        Blocks of `chunks_per_device x devices` chunks are loaded by a background thread and
        read back two blocks behind the dispatch, so loading, transfer and compute overlap.
        """
        self._check_chunk_size(chunk_size)
        rows = self.chunks_per_device * len(self.devices)
        pending, out = collections.deque(), []

        def drain():
            bits, count, num_bytes = pending.popleft()
            out.append(np.asarray(bits, np.float64)[:count])
            if progress:
                progress(num_bytes)

        for tokens, lengths, count in sources.prefetch(_blocks(chunks, rows, chunk_size), prefetch):
            bits = self._chunk_bits(self._replicated_params, tokens, lengths)
            pending.append((bits, count, int(lengths.sum())))
            if len(pending) > 2:
                drain()
        while pending:
            drain()
        return np.concatenate(out) if out else np.zeros(0)

    def coder(self, chunk_size: int, device_index: int) -> lm_coder.LMCoder:
        """The coder of one device, parameters committed to it (built on first use)."""
        self._check_chunk_size(chunk_size)
        key = (chunk_size, device_index)
        if key not in self._coders:
            shape = lm_coder.CoderShape(
                lanes=self.lanes, chunk_tokens=chunk_size, **self._shape_options
            )
            params = jax.device_put(self._params, self.devices[device_index])
            self._coders[key] = lm_coder.LMCoder(self.cfg, params, shape)
        return self._coders[key]

    def code(
        self,
        chunks: Iterable[bytes],
        chunk_size: int,
        verify: bool = False,
        progress: Callable[[int], None] | None = None,
        prefetch: int = 4,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Codes every chunk; returns (coded bytes int64, coder's ideal bits float64) per chunk.

        Raises:
          VerificationError: with `verify`, a chunk did not decode to its input (names it).
        """
        self._check_chunk_size(chunk_size)
        num_devices = len(self.devices)
        executors = [concurrent.futures.ThreadPoolExecutor(1) for _ in range(num_devices)]
        pending, sizes, bits = collections.deque(), [], []

        def collect():
            future, first, num_bytes = pending.popleft()
            coded, ideal, bad = future.result()
            if bad:
                rows = ", ".join(str(first + i) for i in bad)
                raise VerificationError(f"chunks {rows} did not decode back to their input.")
            sizes.append(coded)
            bits.append(ideal)
            if progress:
                progress(num_bytes)

        groups: Iterator = sources.prefetch(_blocks(chunks, self.lanes, chunk_size), prefetch)
        try:
            first = 0
            for g, (tokens, lengths, count) in enumerate(groups):
                device = g % num_devices
                coder = self.coder(chunk_size, device)
                future = executors[device].submit(
                    _code_group, coder, tokens, lengths, count, verify
                )
                pending.append((future, first, int(lengths.sum())))
                first += count
                if len(pending) > 2 * num_devices:
                    collect()
            while pending:
                collect()
        finally:
            for executor in executors:
                executor.shutdown(wait=True, cancel_futures=True)
        if not sizes:
            return np.zeros(0, np.int64), np.zeros(0)
        return np.concatenate(sizes), np.concatenate(bits)
