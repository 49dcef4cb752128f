"""One interface for every model that codes: what the coder and its callers see of a model.

Two layers, so that the compiled coder never asks which kind of model it holds:

* `Net`, a protocol: the computation. Hashable (a static argument of the coder's compiled
  functions), parameters apart. It knows its vocabulary and context, whether its tables are
  exact (the same integers on every machine) and its dtype; it makes the KV cache, runs the
  incremental step and the parallel pass, each returning tables the coder codes with
  (`coding.tables`), and says what a coder lane costs in memory. Implemented by
  `FloatTransformer` (our Transformer), `IntegerTransformer` (its integer-only twin,
  `models.integer`) and `models.pretrained.PretrainedNet` (Hugging Face checkpoints). A new kind
  of model implements these methods and the coder (`models.lm_coder`) runs it unchanged.
* `CodingModel`: a net with its parameters and everything a stream or a record says of it:
  its name as the user gave it, the stream's `model` kind, a fingerprint of what decides its
  tables, how bytes become its tokens and back, its exact twin. Model names (`RUN_DIR`,
  `hf:PATH`) are resolved into one in a single place, `compressors.model_names.load`.
"""

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from coding import tables as coding_tables
from models import integer, transformer

Tables = coding_tables.FloatTables | coding_tables.ExactTables


class Net(Protocol):
    """The computation of a model that codes (see the module docstring).

    Attributes:
      vocab_size: tokens in the vocabulary.
      context_length: most tokens a sequence may have.
      exact: its tables are the same integers on every machine, device and program, so the
        encoder may compute them in one parallel pass and a stream decodes anywhere.
      dtype: the compute dtype's name ('float32', 'bfloat16'; 'int' for integer models).
    """

    vocab_size: int
    context_length: int
    exact: bool
    dtype: str

    def table_spec(self, precision_bits: int, low_bits: int, top_k: int, kv_dtype: str):
        """The `coding.tables.TableSpec` this net codes with, `low_bits` -1 resolved to its
        default; raises ValueError for what it cannot code (a KV dtype, top-k, ...)."""

    def attention_blocks(self, chunk_tokens: int) -> int:
        """The attention blocks a chunk of this many tokens runs in by default."""

    def init_cache(self, params: Any, lanes: int, length: int, kv_dtype: str) -> Any:
        """An empty KV cache for `lanes` rows of `length` positions."""

    def step(self, params, prev, t, cache, kv_length: int, spec) -> tuple[Tables, Any]:
        """The tables of position `t` for every lane, having read `prev` [lanes] (the token at
        t - 1, 0 at t = 0), and the updated cache; attention reads `kv_length` entries."""

    def parallel(self, params, tokens: jax.Array, spec) -> Tables:
        """The tables of every position of `tokens` [batch, length] in one pass, flattened to
        batch * length rows. Bit for bit the step's only where `exact`."""

    def cache_bytes(self, length: int, kv_dtype: str) -> int:
        """One lane's KV cache of `length` positions, in bytes."""

    def shared_cache_bytes(self) -> int:
        """What the cache holds for all lanes together (0 for a Transformer's), in bytes."""

    def work_bytes(self, length: int) -> int:
        """One lane's other live memory during a step at `length` positions: the keys and
        values widened as attention reads them, the step's vectors over vocabulary and widths."""

    def parallel_row_bytes(self, length: int) -> int:
        """About what one row of `length` tokens takes in the parallel pass."""


def default_attention_blocks(chunk_tokens: int, per: int = 256, most: int = 8) -> int:
    """One block per `per` tokens, at least 1, at most `most`: each block is one more program
    to compile, and saves attention work and, for short chunks, whole steps."""
    return max(1, min(most, chunk_tokens // per))


class FloatNet:
    """What float nets share: tables quantised from log-probabilities (`coding.tables`), and
    the vocabulary, context and dtype of their `config`."""

    exact = False

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def context_length(self) -> int:
        """Most tokens one sequence may have."""
        return self.config.context_length

    @property
    def dtype(self) -> str:
        return str(self.config.dtype)

    def table_spec(self, precision_bits, low_bits, top_k, kv_dtype):
        if low_bits < 0 and top_k:
            low_bits = 0
        elif low_bits < 0:
            low_bits = coding_tables.default_low_bits(self.vocab_size, precision_bits)
        return coding_tables.TableSpec(precision_bits, low_bits, top_k)

    def shared_cache_bytes(self) -> int:
        return 0

    def step(self, params, prev, t, cache, kv_length, spec):
        log_probs, cache = self.decode(params, prev, t, cache, kv_length)
        return coding_tables.FloatTables.of(log_probs, spec), cache

    def parallel(self, params, tokens, spec):
        log_probs = self.apply(params, tokens)
        return coding_tables.FloatTables.of(log_probs.reshape(-1, log_probs.shape[-1]), spec)


@dataclasses.dataclass(frozen=True)
class FloatTransformer(FloatNet):
    """Our Transformer (`models.transformer`) in its own float dtype; its KV cache in the
    compute dtype, bfloat16 or int8 (`kv_dtype`)."""

    config: transformer.TransformerConfig

    def attention_blocks(self, chunk_tokens: int) -> int:
        return default_attention_blocks(chunk_tokens)

    def apply(self, params, tokens):
        return transformer.Transformer(self.config).apply({"params": params}, tokens)

    def decode(self, params, prev, t, cache, kv_length):
        module = transformer.Transformer(self.config)
        return module.apply(
            {"params": params}, prev, t, cache, kv_length, method=transformer.Transformer.decode
        )

    def init_cache(self, params, lanes, length, kv_dtype):
        return transformer.init_cache(self.config, lanes, length, kv_dtype)

    def cache_bytes(self, length: int, kv_dtype: str) -> int:
        c = self.config
        kv = kv_dtype or str(transformer.compute_dtype(c.dtype))
        position = c.width * (1 if kv == "int8" else jnp.dtype(kv).itemsize)
        if kv == "int8":
            position += c.num_heads * 4  # a float32 scale per head
        return 2 * c.num_layers * length * position

    def work_bytes(self, length: int) -> int:
        c = self.config
        widened = 2 * c.num_layers * length * c.width * 4
        return widened + 8 * length * c.num_heads + 20 * c.vocab_size + 4 * c.width * c.mlp_ratio

    def parallel_row_bytes(self, length: int) -> int:
        c = self.config
        attention = 24 * c.num_heads * length * length
        return attention + 8 * c.vocab_size * length + 16 * c.width * c.mlp_ratio * length


@dataclasses.dataclass(frozen=True)
class IntegerTransformer(FloatTransformer):
    """Our Transformer's integer-only twin (`models.integer`): exact tables of 2**16, the same
    on every machine; its parameters are `integer.quantize_params` of the float ones."""

    exact = True

    @property
    def dtype(self) -> str:
        return "int"

    def table_spec(self, precision_bits, low_bits, top_k, kv_dtype):
        if low_bits > 0 or precision_bits != integer.PRECISION_BITS or top_k:
            raise ValueError(
                f"the portable path codes one table of 2**{integer.PRECISION_BITS} per token "
                f"(precision_bits={integer.PRECISION_BITS}, low_bits=0, no top_k), got "
                f"precision_bits={precision_bits}, low_bits={low_bits}, top_k={top_k}."
            )
        if kv_dtype:
            raise ValueError("kv_dtype applies to the float path only.")
        return coding_tables.TableSpec(integer.PRECISION_BITS, 0, 0)

    def step(self, params, prev, t, cache, kv_length, spec):
        tables, cache = integer.decode_step(params, prev, t, cache, kv_length)
        return coding_tables.ExactTables(tables, integer.PRECISION_BITS), cache

    def parallel(self, params, tokens, spec):
        tables = integer.tables(params, tokens)
        flat = tables.reshape(-1, tables.shape[-1])
        return coding_tables.ExactTables(flat, integer.PRECISION_BITS)

    def init_cache(self, params, lanes, length, kv_dtype):
        return integer.init_cache(self.config, lanes, length)

    def cache_bytes(self, length: int, kv_dtype: str) -> int:
        c = self.config  # int16 keys and values, an int32 exponent per head
        return 2 * c.num_layers * length * (2 * c.width + 4 * c.num_heads)

    def work_bytes(self, length: int) -> int:
        return super().work_bytes(length) + 8 * self.config.vocab_size  # int32 tables


@dataclasses.dataclass
class CodingModel:
    """A net with its parameters and identity: what a model name resolves to.

    Attributes:
      name: as the user gave it (`RUN_DIR`, `hf:PATH`, `online:SIZE`).
      kind: the stream's `model` field ('run', 'hf', 'online'): a stream is decoded by the same
        kind.
      net: the computation (`Net`).
      params: its parameters.
      fingerprint_fn: computes the sha256 hex of everything that decides its tables (read as
        `fingerprint`, computed once).
      tokenize: (chunk bytes, most tokens) -> (token ids, mode); the mode
        `data.pretrained_tokenizers.MODE_RAW` stores the chunk as it is.
      detokenize: (token ids, mode) -> chunk bytes.
      columns: the container's per-chunk columns ((): byte tokens, one per byte;
        ('symbols',): token counts; ('symbols', 'mode'): and each chunk's tokenizer mode).
      chunk_bytes: bytes per chunk by default.
      chunk_tokens_fn: the coder's tokens for a chunk of so many bytes (read as `chunk_tokens`;
        raises ValueError for a chunk the model cannot take).
      settings: what else the stream records of it (e.g. the dtype a checkpoint ran in).
      num_params: parameters in the model.
      step: a training run's checkpoint step (None for other models).
      exact_twin: returns the model with exact tables, or raises ValueError naming why not.
      lanes: the chunks a group must hold (0: any; a model that learns after every group fixes
        them).
      learner: a model that learns while it codes: `learner.learn(chunks)` trains on a group's
        token arrays and returns the new parameters (`compressors.online`); None: a model whose
        parameters never change.
    """

    name: str
    kind: str
    net: Net
    params: Any
    fingerprint_fn: Callable[[], str]
    tokenize: Callable[[bytes, int], tuple[np.ndarray, int]]
    detokenize: Callable[[np.ndarray, int], bytes]
    columns: tuple[str, ...]
    chunk_bytes: int
    chunk_tokens_fn: Callable[[int], int]
    settings: dict = dataclasses.field(default_factory=dict)
    num_params: int = 0
    step: int | None = None
    exact_twin: Callable[[], "CodingModel"] | None = None
    lanes: int = 0
    learner: Any = None
    _fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = self.fingerprint_fn()
        return self._fingerprint

    def chunk_tokens(self, chunk_bytes: int) -> int:
        """The coder's tokens per chunk of `chunk_bytes` (a tokenizer may add one)."""
        return self.chunk_tokens_fn(chunk_bytes)

    def exact(self) -> "CodingModel":
        """This model with exact tables (itself if it has them).

        Raises:
          ValueError: it has no exact twin (names the way out).
        """
        if self.net.exact:
            return self
        if self.exact_twin is None:
            raise ValueError(f"{self.name} codes on the float path only: drop --portable.")
        return self.exact_twin()

    def learn(self, chunks: list[np.ndarray]) -> None:
        """Called after every group coded or decoded, with its chunks' tokens in order: a model
        that learns while it codes takes its training steps here (the same on both sides)."""
        if self.learner is not None:
            self.params = self.learner.learn(chunks)

    @property
    def path(self) -> str:
        """The coding path a stream records: 'integer' (exact tables) or 'float'."""
        return "integer" if self.net.exact else "float"


def integer_twin(model: CodingModel) -> CodingModel:
    """`model` (our float Transformer) with its integer-only twin's net and parameters."""
    net = IntegerTransformer(model.net.config)
    params = integer.quantize_params(model.net.config, model.params)
    return dataclasses.replace(model, net=net, params=params, exact_twin=None)
