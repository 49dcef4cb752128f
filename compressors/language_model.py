"""A trained byte-level model as a compressor: rated by its coded bytes and by its log-loss.

Two ways to rate chunks, both independent per chunk (each chunk is coded without context from the
others, as in the paper):

* `log_loss`: the sum of -log2 p(byte) over each chunk from one parallel forward pass, the code
  length an ideal arithmetic coder reaches. Fast: the batch of chunks is split over a
  `jax.sharding` mesh of the local devices, `chunks_per_device` rows each.
* `code`: the bytes `models.lm_coder.LMCoder` actually writes per chunk (its coded payload, the
  coder's flush included; no container header). With `verify=True` every group is decoded back
  and compared with its input (`LMCoder.encode_chunks`).

`rate` runs either or both over a dataset and times them; `compressors.evaluation` turns that into
records.

Exactness across devices. The coder's integer tables must be bit-identical between encoder and
decoder, and XLA's floats depend on the computation's shape and program. So the coded path does
not partition one program over devices: each local device gets its own `LMCoder` (parameters
committed to it) and runs whole groups of `lanes` chunks, the very program and shape a single
device runs, groups dealt round-robin, one host thread per device (a jitted call releases the GIL
while it runs). The coded bytes therefore equal the single-device run's (tested with 4 CPU
devices), and each group is verified on the device that coded it.

Multi-host: this class uses the local devices only; the caller gives each host its share of the
chunks and sums the totals across hosts (`compressors.evaluation`).
"""

import collections
import concurrent.futures
import contextlib
import dataclasses
import itertools
import math
import os
import time
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import runs
from compressors import model_names
from data import sources
from models import coding_model, lm_coder, transformer

VerificationError = lm_coder.VerificationError


class RatedModel:
    """A model compressor's `rate`, and what the evaluator (`compressors.evaluation`) asks of a
    model entry: each kind's subclass gives the two passes (`_passes`) and its own answers.

    Attributes:
      NAME: its key in `compressors.COMPRESSORS`.
      COUNTS: what `rate` reports beyond bits and bytes, summed over hosts into a record.
    """

    NAME: str = ""
    COUNTS: tuple[str, ...] = ()

    @classmethod
    def options(cls, config) -> dict:
        """The constructor's keyword arguments from an eval config (configs/eval.py)."""
        raise NotImplementedError

    @classmethod
    def check(cls, config, name: str) -> None:
        """Fails before any work when model `name` cannot rate `config`'s chunks (reads no
        weights)."""
        raise NotImplementedError

    @classmethod
    def identity(cls, config, name: str, load: Callable[[], "RatedModel"]) -> dict:
        """The fields that say what a record of model `name` rates under `config` beyond its
        data: its fingerprint and every setting that changes its figures, as resolved (the
        lanes and dtype a default stands for). `load()` builds the compressor (once); it is
        called only where the parameters are needed."""
        raise NotImplementedError

    def record_fields(self, counts: dict, coded: bool) -> dict:
        """This model's own fields of its record, from `COUNTS` summed over hosts; `coded`:
        whether the coded pass ran."""
        raise NotImplementedError

    def _passes(self, chunks, chunk_size: int, verify: bool, prefetch: int):
        """(log-loss pass, coded pass): functions of a progress updater returning results."""
        raise NotImplementedError

    def rate(
        self,
        chunks: Callable[[], Iterable[bytes]],
        chunk_size: int,
        *,
        log_loss: bool = True,
        coded: bool = True,
        verify: bool = False,
        progress: Callable[[str], contextlib.AbstractContextManager] | None = None,
        prefetch: int = 4,
    ) -> dict:
        """Rates a dataset by the model's log-loss and/or the bytes the coder writes.

        Args:
          chunks: returns a fresh iterator over the chunks for each pass.
          chunk_size: bytes per chunk (our models: at most the context; pretrained ones: the
            chunks' usual size, which sizes the coder).
          log_loss: run the parallel log-loss pass.
          coded: run the coder over every chunk.
          verify: decode every coded chunk back and compare.
          progress: `progress(label)` returns a context manager with `update(num_bytes)` (e.g.
            a tqdm bar) for each pass.
          prefetch: chunk blocks loaded ahead.

        Returns:
          ideal_bits (sum of -log2 p, NaN without the log-loss pass), coded_bytes (None without
          the coded pass), each pass's wall-clock seconds (`log_loss_seconds`,
          `coded_seconds`), and what else a pass reports (pretrained models: token counts).

        Raises:
          ValueError: neither pass asked for, or chunks longer than the context.
          VerificationError: with `verify`, a chunk did not decode to its input.
        """
        log_loss_pass, coded_pass = self._passes(chunks, chunk_size, verify, prefetch)
        return run_passes(
            log_loss_pass if log_loss else None, coded_pass if coded else None, progress
        )


class LanguageModelCompressor(RatedModel):
    """Rates chunks with the newest (or given) checkpoint of a training run.

    Args:
      workdir: a train.py run directory.
      step: checkpoint step; None for the newest.
      chunks_per_device: rows per device in each forward pass of `log_loss`.
      lanes: chunks per coder group (per device) in `code`; 0: as many as the device's memory
        holds (`lm_coder.default_lanes`, 64 on a CPU).
      devices: devices to use; default all local devices.
      dtype: compute dtype to use instead of the run's ('' keeps it), e.g. 'bfloat16'.
      attention: attention implementation instead of the run's ('' keeps it): 'xla', 'cudnn'.
      attention_blocks: the coder's `CoderShape.attention_blocks` (0 keeps its default).
      portable: code with the integer-only model (models/integer.py) as compress.py does by
        default; the log-loss pass stays the float model's.

    Raises:
      FileNotFoundError: not a run, or no checkpoint.
      ValueError: the run's tokenizer is not byte-level, or bad sizes.
    """

    NAME = "lm"

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
        portable: bool = False,
    ):
        if chunks_per_device < 1 or lanes < 0:
            raise ValueError(
                f"chunks_per_device={chunks_per_device} must be >= 1, lanes={lanes} >= 0."
            )
        config = runs.load_config(workdir)
        if config.tokenizer != "bytes":  # chunks are rated byte by byte, as in the paper
            raise ValueError(
                f"{workdir} uses the {config.tokenizer} tokenizer: eval_compress rates "
                "byte-level runs (tokenizer 'bytes') only."
            )
        model = model_names.load(os.fspath(workdir), step=step, dtype=dtype)
        if attention:
            net_config = dataclasses.replace(model.net.config, attention=attention)
            model.net = coding_model.FloatTransformer(net_config)
        self.model_cfg, params, self.step = model.net.config, model.params, model.step
        self.workdir = str(workdir)
        self.size = config.get("size", "")
        self.num_params = model.num_params
        self.chunks_per_device, self.lanes = chunks_per_device, lanes
        self.attention_blocks = attention_blocks
        # The coder's model: the float one, or its integer twin (compress.py's default).
        self.coding = model.exact() if portable else model
        self.devices = list(devices or jax.local_devices())
        self.params = params
        self._mesh = jax.sharding.Mesh(np.array(self.devices), ("data",))
        replicated = NamedSharding(self._mesh, P())
        split = NamedSharding(self._mesh, P("data"))
        self._replicated_params = jax.device_put(params, replicated)
        self._chunk_bits = jax.jit(
            self._chunk_bits_fn, in_shardings=(replicated, split, split), out_shardings=split
        )
        self._coders: dict[tuple[int, int], lm_coder.LMCoder] = {}

    @classmethod
    def options(cls, config) -> dict:
        lm = config.lm
        return dict(
            step=None if lm.step < 0 else lm.step,
            chunks_per_device=lm.chunks_per_device,
            lanes=lm.lanes,
            dtype=config.dtype,
            attention=lm.attention,
            attention_blocks=lm.attention_blocks,
            portable=lm.portable,
        )

    @classmethod
    def check(cls, config, name: str) -> None:
        """The run's config exists and its context holds `config.chunk_size` bytes."""
        context = runs.load_config(model_names.parse(name)[1]).model.context_length
        if config.chunk_size > context:
            raise ValueError(
                f"{name}: chunks of {config.chunk_size} bytes do not fit the model's context of "
                f"{context}: use --config.chunk_size={context} (or less) for it."
            )

    @classmethod
    def identity(cls, config, name: str, load: Callable[[], RatedModel]) -> dict:
        """The checkpoint's step and fingerprint (of its loaded parameters, as compress.py's
        streams name it), dtype and attention; on the float coded path the coder's lanes and
        attention blocks too (the integer path codes the same bytes whatever its shape)."""
        from compressors import fingerprints

        lm = load()
        float_coded = config.lm.coded and not lm.coding.net.exact  # exact: any shape, same bytes
        return dict(
            lanes=lm.coder_lanes(config.chunk_size) if float_coded else None,
            attention_blocks=config.lm.attention_blocks if float_coded else None,
            model_sha256=fingerprints.run_fingerprint(lm.workdir, lm.step, lm.params)[1],
            lm_step=lm.step,
            dtype=lm.model_cfg.dtype,
            attention=lm.model_cfg.attention,
            coded_path=lm.coding.path,
        )

    def record_fields(self, counts: dict, coded: bool) -> dict:
        return dict(
            coded_path=self.coding.path,
            lm_workdir=self.workdir,
            lm_size=self.size,
            lm_step=self.step,
        )

    def coder_lanes(self, chunk_size: int) -> int:
        """Chunks per coder group for chunks of `chunk_size` bytes: `lanes`, or for 0 as many as
        the device's memory holds (`lm_coder.default_lanes`, as compress.py's `--lanes=0`)."""
        return self.lanes or lm_coder.default_lanes(self.coding.net, chunk_size)

    def _check_chunk_size(self, chunk_size: int) -> None:
        context = self.model_cfg.context_length
        if not 1 <= chunk_size <= context:
            raise ValueError(
                f"chunks of {chunk_size} bytes do not fit {self.workdir}'s context of "
                f"{context}: use --config.chunk_size <= {context}."
            )

    def _chunk_bits_fn(self, params, tokens, lengths):
        """Sum of -log2 p over each row's first `lengths` bytes: [rows]."""
        tokens = tokens.astype(jnp.int32)
        log_probs = transformer.Transformer(self.model_cfg).apply({"params": params}, tokens)
        nll = transformer.token_nll(log_probs, tokens)
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

        groups = lm_coder.group_chunks(chunks, rows, chunk_size, np.uint8)
        for group in sources.prefetch(groups, prefetch):
            bits = self._chunk_bits(self._replicated_params, group.tokens, group.lengths)
            pending.append((bits, group.count, int(group.lengths.sum())))
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
            blocks = {"attention_blocks": self.attention_blocks} if self.attention_blocks else {}
            shape = lm_coder.CoderShape(self.coder_lanes(chunk_size), chunk_size, **blocks)
            params = jax.device_put(self.coding.params, self.devices[device_index])
            self._coders[key] = lm_coder.LMCoder(self.coding.net, params, shape)
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
        pending, coded = collections.deque(), []

        def collect():
            future, num_bytes = pending.popleft()
            coded.extend(future.result())
            if progress:
                progress(num_bytes)

        lanes = self.coder(chunk_size, 0).shape.lanes
        batches = sources.prefetch(itertools.batched(chunks, lanes), prefetch)
        try:
            first = 0
            for g, batch in enumerate(batches):
                coder = self.coder(chunk_size, g % num_devices)
                future = executors[g % num_devices].submit(_code, coder, batch, verify, first)
                pending.append((future, sum(map(len, batch))))
                first += len(batch)
                if len(pending) > 2 * num_devices:
                    collect()
            while pending:
                collect()
        finally:
            for executor in executors:
                executor.shutdown(wait=True, cancel_futures=True)
        sizes = np.array([len(c.payload) for c in coded], np.int64)
        return sizes, np.array([c.bits for c in coded], np.float64)

    def _passes(self, chunks, chunk_size: int, verify: bool, prefetch: int):
        """The two rating passes, as `RatedModel.rate` runs them."""

        def log_loss_pass(update):
            bits = self.log_loss(chunks(), chunk_size, update, prefetch)
            return {"ideal_bits": float(bits.sum())}

        def coded_pass(update):
            sizes, _ = self.code(chunks(), chunk_size, verify, update, prefetch)
            return {"coded_bytes": int(sizes.sum())}

        return log_loss_pass, coded_pass


def run_passes(
    log_loss_pass: Callable[[Callable[[int], None] | None], dict] | None,
    coded_pass: Callable[[Callable[[int], None] | None], dict] | None,
    progress: Callable[[str], contextlib.AbstractContextManager] | None = None,
) -> dict:
    """Runs a model's rating passes, each timed and under its own progress bar.

    Args:
      log_loss_pass, coded_pass: None to skip the pass, else a function of a progress updater
        (`update(num_bytes)`, or None) returning the pass's results.
      progress: `progress(label)` returns a context manager with `update`, or None.

    Returns:
      {'ideal_bits': NaN, 'coded_bytes': None} updated with each pass's results and its
      seconds ('log_loss_seconds', 'coded_seconds').

    Raises:
      ValueError: neither pass asked for.
    """
    if log_loss_pass is None and coded_pass is None:
        raise ValueError("Set --config.lm.log_loss or --config.lm.coded (or both).")
    progress = progress or (lambda label: contextlib.nullcontext(None))
    out = {"ideal_bits": float("nan"), "coded_bytes": None}
    for name, run in (("log_loss", log_loss_pass), ("coded", coded_pass)):
        if run is not None:
            start = time.perf_counter()
            with progress(name) as bar:
                out.update(run(None if bar is None else bar.update))
            out[f"{name}_seconds"] = time.perf_counter() - start
    return out


def _code(coder: lm_coder.LMCoder, batch: tuple[bytes, ...], verify: bool, first: int):
    """Codes one group of chunks on its coder's device (a worker thread's task)."""
    return list(coder.encode_chunks(batch, verify, first))
