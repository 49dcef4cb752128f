"""A model's output as the coder sees it: frequency tables to decode from, intervals to encode.

Every model that codes (`models.coding_model.Net`) returns, for a batch of positions, one of two
kinds of tables, and the coder (`models.lm_coder`) uses both the same way:

* `FloatTables`: a float model's log-probabilities, quantised inside the coder's compiled
  functions (`coding.quantize`, exact integer arithmetic from there on) into one table over the
  vocabulary, two factorised steps (`coding.factorized`) or the paper's top-k tables with an
  escape (`coding.topk`), as the coder's `precision_bits`, `low_bits` and `top_k` say. Exact only
  where the floats are the same (the same program, device and instruction set).
* `ExactTables`: integer tables made by the model itself (`models.integer`), the same on every
  machine; coded as they are, one table of 2**`precision_bits` per token.

Each holds `n` rows ([n, vocab] underneath) and gives, for symbols [n]: their coder intervals
(starts, freqs [n, k] for the k coder steps a token takes), the decoder's step, the model's ideal
code length and whether each was a top-k escape. Not a library: these are the coder's exactness
contract (what encoder and decoder both compute, bit for bit), written once for both.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from coding import factorized, quantize, range_coder, topk


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """How a float model's probabilities become tables: part of the stream format.

    Attributes:
      precision_bits: log2 of each table's total.
      low_bits: 0: one table over the vocabulary; k > 0: two steps, the high bits then the low
        `k` bits of each id (`coding.factorized`).
      top_k: 0: every token under the whole vocabulary; k > 0: the paper's top-k tables with
        an escape (`coding.topk`).
    """

    precision_bits: int = 16
    low_bits: int = 0
    top_k: int = 0

    def steps_per_token(self, vocab_size: int) -> int:
        """Coder steps per token."""
        if self.top_k:
            return topk.steps_per_token(vocab_size)
        return factorized.STEPS_PER_TOKEN if self.low_bits else 1


@dataclasses.dataclass(frozen=True)
class FloatTables:
    """A float model's log-probabilities [n, vocab], quantised as `spec` says (`of`)."""

    log_probs: jax.Array
    probs: jax.Array
    spec: TableSpec

    @classmethod
    def of(cls, log_probs: jax.Array, spec: TableSpec) -> "FloatTables":
        """The probabilities are taken once, so decoding and encoding read the same ones."""
        return cls(log_probs, jnp.exp(log_probs), spec)

    def intervals(self, symbols: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(starts, freqs) uint32 [n, k] of `symbols` [n]."""
        probs, bits = self.probs, self.spec.precision_bits
        if self.spec.top_k:
            return topk.intervals_jax(probs, symbols, topk.TopK(self.spec.top_k, bits))
        if self.spec.low_bits:
            return factorized.intervals_jax(
                probs[:, None], symbols[:, None], bits, self.spec.low_bits
            )
        table = quantize.quantize_jax(probs, bits)
        starts, freqs = range_coder.symbol_intervals_jax(table, symbols, bits)
        return starts[:, None], freqs[:, None]

    def decode(self, state: range_coder.DecoderState):
        """(symbols [n], state): one token read from the decoder's state."""
        probs, bits = self.probs, self.spec.precision_bits
        if self.spec.top_k:
            return topk.decode_step_jax(state, probs, topk.TopK(self.spec.top_k, bits))
        if self.spec.low_bits:
            return factorized.decode_step_jax(state, probs, bits, self.spec.low_bits)
        return range_coder.decode_step_jax(state, quantize.quantize_jax(probs, bits), bits)

    def bits(self, symbols: jax.Array) -> jax.Array:
        """The model's -log2 p of `symbols` [n]."""
        return -jnp.take_along_axis(self.log_probs, symbols[:, None], axis=1)[:, 0] / math.log(2)

    def escaped(self, symbols: jax.Array) -> jax.Array:
        """bool [n]: coded through the top-k escape."""
        if not self.spec.top_k:
            return jnp.zeros(symbols.shape, bool)
        return topk.is_escape_jax(self.probs, symbols, self.spec.top_k)


@dataclasses.dataclass(frozen=True)
class ExactTables:
    """Integer frequency tables [n, vocab], each summing to 2**precision_bits."""

    tables: jax.Array
    precision_bits: int

    def intervals(self, symbols: jax.Array) -> tuple[jax.Array, jax.Array]:
        starts, freqs = range_coder.symbol_intervals_jax(self.tables, symbols, self.precision_bits)
        return starts[:, None], freqs[:, None]

    def decode(self, state: range_coder.DecoderState):
        return range_coder.decode_step_jax(state, self.tables, self.precision_bits)

    def bits(self, symbols: jax.Array) -> jax.Array:
        freq = jnp.take_along_axis(self.tables, symbols[:, None], axis=1)[:, 0]
        return -jnp.log2(freq.astype(jnp.float32) / jnp.float32(1 << self.precision_bits))

    def escaped(self, symbols: jax.Array) -> jax.Array:
        return jnp.zeros(symbols.shape, bool)


def floor_cost_bits(vocab_size: int, precision_bits: int = 16, low_bits: int = 0) -> float:
    """Bits per token that the quantiser's `+1` floor costs at most: each table of n symbols
    keeps n of its 2**precision_bits for the floor, -log2(1 - n / 2**precision_bits)."""
    total = 1 << precision_bits
    sizes = [vocab_size] if not low_bits else [factorized.num_groups(vocab_size, low_bits)]
    sizes += [1 << low_bits] if low_bits else []
    return float(sum(-math.log2(1 - n / total) for n in sizes))


def default_low_bits(vocab_size: int, precision_bits: int = 16) -> int:
    """The cheapest coding of a vocabulary by `floor_cost_bits`: one table (0), or two steps of
    high and low bits (the low bits' count returned). Bytes: two nibbles (4), 0.0007 bits per
    token against 0.0057 for one table; 32,000 ids: 8 low bits, 0.008 against 0.97."""
    options = [0] if vocab_size <= quantize.max_vocab(precision_bits) else []
    for low_bits in range(1, precision_bits):
        try:
            factorized.check_factorization(vocab_size, precision_bits, low_bits)
        except ValueError:
            continue
        options.append(low_bits)
    if not options:
        raise ValueError(f"a vocabulary of {vocab_size} does not fit {precision_bits}-bit tables")
    return min(options, key=lambda k: (floor_cost_bits(vocab_size, precision_bits, k), k))


def check_spec(spec: TableSpec, vocab_size: int) -> None:
    """Raises ValueError unless `spec` can code a vocabulary of `vocab_size`."""
    if spec.top_k:
        if spec.low_bits:
            raise ValueError("top_k codes on the float path, with low_bits 0.")
        topk.check_topk(vocab_size, spec.top_k, spec.precision_bits, topk.DEFAULT_DIGIT_BITS)
    elif spec.low_bits:
        factorized.check_factorization(vocab_size, spec.precision_bits, spec.low_bits)
    else:
        quantize.check_table_shape(vocab_size, spec.precision_bits)
