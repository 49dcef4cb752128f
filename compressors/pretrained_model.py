"""A pretrained Hugging Face checkpoint on disk as a compressor (`hf:PATH`), rated as the paper
rates foundation models, and past its protocol where an API limited it.

Protocol, per chunk of bytes (each chunk on its own, as in the paper):

1. Bytes to tokens (`data.pretrained_tokenizers`): valid UTF-8 is tokenized as that text, other
   bytes as Latin-1 characters (one per byte), without added special tokens; a chunk whose text
   does not survive tokenize -> detokenize is coded as the tokenizer's byte tokens (one token per
   byte), or, for a tokenizer without byte tokens, charged 8 bits a byte ('raw'). The paper's
   7-bit mode (`--config.seven_bit=paper`) masks the bytes first, so text is plain ASCII.
2. The model reads its BOS token, then predicts every token (a checkpoint without BOS codes its
   first token under a uniform distribution over the vocabulary, `models.pretrained`).
3. A chunk with more tokens than the model's context (`max_tokens`) is split into consecutive
   pieces, each predicted from its own BOS (`pretrained_tokenizers.split_tokens`), never
   truncated; how many chunks were split is recorded.

Two rates, as for our own models (`compressors.language_model`):

* `log_loss`: the sum of -log2 p over every token under the full distribution, from one
  parallel pass; raw chunks at 8 bits a byte.
* `code`: the bytes `models.lm_coder.LMCoder` writes (raw chunks: their bytes). With `top_k > 0`
  (the paper's 100, the default of `--config.hf.top_k`) each token is coded under the k most
  likely tokens plus an escape (`coding.topk`): a token outside the top k is charged the
  escape's probability (the mass outside the top k) plus its id in 4-bit digits (log2(vocab)
  and under 1 bit more). Escapes are counted. `top_k = 0` codes under the whole vocabulary,
  exactly, which the paper's API did not allow. The ideal code length of the tables coded with
  (top-k included) is reported as `table_bits`.

Speed and memory: the log-loss pass pads pieces to a few bucket lengths (16 or 24 times a power
of two, capped at the context), each compiled once. The coder's KV cache holds `chunk_size` + 1
tokens (a context's worth only for groups with a longer piece), and it stops after the last
attention block any piece of a group reaches (`models.lm_coder`). Parameters are sharded over
the local devices when they do not fit one (`models.pretrained.load`); coding then runs one group
at a time over all of them.
"""

import collections
import functools
import itertools
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from compressors import language_model, model_names
from data import pretrained_tokenizers as tokenizers
from data import sources
from models import lm_coder, pretrained

DEFAULT_TOP_K = 100


class Tokenized(NamedTuple):
    """One chunk as the model sees it.

    Attributes:
      pieces: token arrays of at most `max_tokens` each (none for a raw chunk).
      mode: `data.pretrained_tokenizers` mode (MODE_RAW: not coded by the model).
      num_bytes: the chunk's bytes.
    """

    pieces: list[np.ndarray]
    mode: int
    num_bytes: int


def bucket(num_tokens: int, limit: int) -> int:
    """The padded length of a piece: the least 16 * 2**i or 24 * 2**i >= num_tokens, at most
    `limit` (each length is one compiled program)."""
    size = 16
    while size < num_tokens:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return min(size, limit)


def check_model_dir(model_dir: str | os.PathLike) -> None:
    """Fails with one line unless `model_dir` holds a supported config.json, its safetensors
    weights and a tokenizer (cheap: reads the config and the weights' headers only).

    Raises:
      FileNotFoundError: no such directory, or a file it needs is missing (names it).
      ValueError: an unsupported architecture (names the supported ones).
    """
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(
            f"no model directory {model_dir} (hf:PATH wants config.json, *.safetensors and "
            "tokenizer.json or tokenizer.model)"
        )
    pretrained.read_config(model_dir)
    pretrained.safetensors_files(model_dir)
    tokenizers.tokenizer_file(model_dir)


class PretrainedCompressor(language_model.RatedModel):
    """Rates chunks with a Hugging Face model directory (see the module docstring).

    Args:
      model_dir: config.json, *.safetensors and tokenizer.json or tokenizer.model.
      top_k: k of the paper's top-k coding; 0 codes under the whole vocabulary.
      dtype: 'float32' or 'bfloat16' (parameters and compute); '' is float32.
      rows: pieces per forward pass of `log_loss`.
      lanes: pieces per coder group of `code`; 0: as many as the device's memory holds
        (`lm_coder.default_lanes` for pieces of `max_tokens`, 64 on a CPU).
      max_tokens: tokens per piece; 0: the model's context.
      attention_blocks: the coder's (`models.lm_coder.CoderShape`); 0: by its length
        (`PretrainedNet.attention_blocks`).
      shard: split the parameters over the local devices (None: only when they do not fit one).

    Raises:
      FileNotFoundError: a file of the checkpoint is missing (names it).
      ValueError: unsupported architecture, tokenizer and model that do not belong together,
        bad sizes.
    """

    NAME = "hf"
    COUNTS = (
        "tokens", "pieces", "split_chunks", "escapes", "table_bits",
        "utf8_chunks", "latin1_chunks", "byte_tokens_chunks", "raw_chunks",
    )  # fmt: skip

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        top_k: int = DEFAULT_TOP_K,
        dtype: str = "float32",
        rows: int = 8,
        lanes: int = 16,
        max_tokens: int = 0,
        attention_blocks: int = 0,
        shard: bool | None = None,
    ):
        if rows < 1 or lanes < 0 or top_k < 0 or max_tokens < 0:
            raise ValueError(
                f"rows={rows} must be >= 1; lanes={lanes}, top_k={top_k}, "
                f"max_tokens={max_tokens} >= 0."
            )
        check_model_dir(model_dir)
        self.model_dir = str(model_dir)
        self.tokenizer = tokenizers.load_tokenizer(model_dir)
        self.model, self.params = pretrained.load(
            model_dir,
            start_token=self.tokenizer.bos_token_id,
            dtype=dtype or "float32",
            shard=shard,
        )
        self.tokenizer.check_model_vocab(self.model.vocab_size)
        context = self.model.context_length
        if max_tokens > context:
            raise ValueError(f"max_tokens={max_tokens} exceeds the model's context of {context}.")
        self.max_tokens = max_tokens or context
        if top_k > self.model.vocab_size:
            raise ValueError(f"top_k={top_k} exceeds the vocabulary of {self.model.vocab_size}.")
        self.top_k, self.rows = top_k, rows
        self.lanes = lanes or lm_coder.default_lanes(self.model, self.max_tokens)
        self.attention_blocks = attention_blocks
        self.num_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(self.params))
        self.devices = list(jax.local_devices())
        self._coders: dict[int, lm_coder.LMCoder] = {}

    @classmethod
    def options(cls, config) -> dict:
        hf = config.hf
        return dict(
            top_k=hf.top_k,
            dtype=config.dtype,
            rows=config.lm.chunks_per_device,
            lanes=config.lm.lanes,
            max_tokens=hf.max_tokens,
            attention_blocks=hf.attention_blocks,
        )

    @classmethod
    def check(cls, config, name: str) -> None:
        """The directory holds a supported config, its weights and a tokenizer."""
        check_model_dir(model_names.parse(name)[1])

    @classmethod
    def identity(cls, config, name: str, load: Callable) -> dict:
        """The checkpoint's files' fingerprint, dtype, top_k, tokens per piece and on the coded
        path the coder's lanes and attention blocks, all without loading the model (`load` is
        not called)."""
        from compressors import fingerprints

        path = model_names.parse(name)[1]
        dtype = config.dtype or "float32"
        model_config = pretrained.read_config(path, dtype)
        max_tokens = config.hf.max_tokens or model_config.context_length
        coded = config.lm.coded
        lanes = config.lm.lanes or lm_coder.default_lanes(
            pretrained.PretrainedNet(model_config, None), max_tokens
        )  # as the constructor resolves them
        return dict(
            lanes=lanes if coded else None,
            attention_blocks=config.hf.attention_blocks if coded else None,
            model_sha256=fingerprints.hf_fingerprint(path),
            dtype=dtype,
            top_k=config.hf.top_k,
            max_tokens=max_tokens,
        )

    def record_fields(self, counts: dict, coded: bool) -> dict:
        """The counts, the checkpoint and its settings; prints a note when chunks were split."""
        fields = {k: int(v) for k, v in counts.items() if k != "table_bits"}
        fields.update(
            coded_path="float",
            hf_path=self.model_dir,
            model_type=self.model.config.model_type,
            top_k=self.top_k,
            max_tokens=self.max_tokens,
            table_bytes=counts["table_bits"] / 8 if coded else None,
        )
        if fields["split_chunks"]:
            print(
                f"Note: hf:{self.model_dir}: {fields['split_chunks']} chunks had more than "
                f"{self.max_tokens} tokens (the model's context) and were coded as consecutive "
                "pieces, each after its own start token (recorded as split_chunks).",
                file=sys.stderr,
            )
        return fields

    def tokenize(self, chunk: bytes) -> Tokenized:
        """A chunk's tokens, split into pieces of at most `max_tokens` (step 1 and 3)."""
        ids, mode = self.tokenizer.encode_chunk(chunk)
        if mode == tokenizers.MODE_RAW:
            return Tokenized([], mode, len(chunk))
        return Tokenized(tokenizers.split_tokens(ids, self.max_tokens), mode, len(chunk))

    def _pieces(self, chunks: Iterable[bytes], stats: collections.Counter) -> Iterator[np.ndarray]:
        """Every chunk's pieces in order, counting chunks, tokens and modes into `stats`."""
        names = ["chunks", "bytes", "split_chunks", "tokens", "pieces", "raw_bytes"]
        stats.update(
            dict.fromkeys(names + [f"{m}_chunks" for m in tokenizers.MODE_NAMES.values()], 0)
        )
        for chunk in chunks:
            t = self.tokenize(chunk)
            stats["chunks"] += 1
            stats["bytes"] += len(chunk)
            stats[f"{tokenizers.MODE_NAMES[t.mode]}_chunks"] += 1
            stats["split_chunks"] += len(t.pieces) > 1
            stats["tokens"] += sum(map(len, t.pieces))
            stats["pieces"] += len(t.pieces)
            if t.mode == tokenizers.MODE_RAW:
                stats["raw_bytes"] += t.num_bytes
            yield from t.pieces

    def log_loss(
        self, chunks: Iterable[bytes], progress: Callable[[int], None] | None = None
    ) -> dict:
        """The log-loss pass: {'ideal_bits', and the counts of `_pieces`}."""
        stats, total = collections.Counter(), 0.0
        seen = 0
        for batch in itertools.batched(self._pieces(chunks, stats), self.rows):
            length = bucket(max(map(len, batch)), self.max_tokens)
            group = next(lm_coder.group_chunks([*batch], self.rows, length))
            total += float(_piece_bits(self.model, self.params, group.tokens, group.lengths).sum())
            if progress:
                progress(stats["bytes"] - seen)
                seen = stats["bytes"]
        return {"ideal_bits": total + 8.0 * stats["raw_bytes"], **stats}

    def coder(self, chunk_tokens: int) -> lm_coder.LMCoder:
        """The coder of pieces padded to `chunk_tokens` (built on first use)."""
        if chunk_tokens not in self._coders:
            shape = lm_coder.CoderShape(
                lanes=self.lanes,
                chunk_tokens=chunk_tokens,
                attention_blocks=min(
                    self.attention_blocks or self.model.attention_blocks(chunk_tokens),
                    chunk_tokens,
                ),
                top_k=self.top_k,
            )
            self._coders[chunk_tokens] = lm_coder.LMCoder(self.model, self.params, shape)
        return self._coders[chunk_tokens]

    def code(
        self,
        chunks: Iterable[bytes],
        verify: bool = False,
        chunk_size: int = 0,
        progress: Callable[[int], None] | None = None,
    ) -> dict:
        """The coded pass: {'coded_bytes', 'table_bits', 'escapes', and the counts of `_pieces`}.

        Groups whose pieces all have at most `chunk_size` + 1 tokens (a tokenizer makes at most
        one token per byte of text, plus SentencePiece's leading space) run a coder of that
        length, whose KV cache is that much smaller than the context's; other groups one of the
        context's length (0: always that one).

        Raises:
          lm_coder.VerificationError: with `verify`, a piece did not decode to its input.
        """
        stats, payload_bytes, table_bits, escapes = collections.Counter(), 0, 0.0, 0
        seen, first = 0, 0
        usual = min(self.max_tokens, chunk_size + 1) if chunk_size else self.max_tokens
        for batch in itertools.batched(self._pieces(chunks, stats), self.lanes):
            longest = max(map(len, batch))
            coder = self.coder(usual if longest <= usual else self.max_tokens)
            for c in coder.encode_chunks(batch, verify, first):
                payload_bytes += len(c.payload)
                table_bits += c.table_bits
                escapes += c.escapes
            first += len(batch)
            if progress:
                progress(stats["bytes"] - seen)
                seen = stats["bytes"]
        coded = payload_bytes + stats["raw_bytes"]
        return {"coded_bytes": coded, "table_bits": table_bits, "escapes": escapes, **stats}

    def _passes(self, chunks, chunk_size: int, verify: bool, prefetch: int):
        """The two rating passes (`RatedModel.rate`), each reporting its counts too: tokens,
        pieces, split_chunks, chunks per mode ('utf8_chunks', ...); escapes and table_bits."""

        def passes(run: Callable, *args):
            return lambda update: run(sources.prefetch(chunks(), prefetch), *args, update)

        return passes(self.log_loss), passes(self.code, verify, chunk_size)


@functools.partial(jax.jit, static_argnames=("model",))
def _piece_bits(model: pretrained.PretrainedNet, params, tokens, lengths):
    """Sum of -log2 p over each row's first `lengths` tokens: float32 [rows]."""
    log_probs = model.apply(params, tokens)
    nll = -jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
    valid = jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]
    return jnp.where(valid, nll, 0.0).sum(-1) / math.log(2)
