"""Compressors as generative models: sample bytes from the distribution a compressor implies.

Any compressor `compress: bytes -> bytes` defines a conditional distribution over the next byte
b after a context x (Deletang et al., 2024, section 3):

    p(b | x) = 2^-bits(x + b) / sum_c 2^-bits(x + c),   bits(s) = 8 * len(compress(s)).

`next_byte_log2_probs` computes it over the 256 candidates; `sample_bytes` draws from it step by
step, with the context cut to its last `context_bytes` so each step costs the same.

Lookahead (K = `lookahead` >= 1). A classical compressor's length moves in whole bytes, so most
candidates tie (gzip on 800 bytes of 'abcd': 255 of 256 candidates give the same length) and the
K = 1 rule samples the tied bytes uniformly. With K > 1, each candidate b is also scored on how
well it lets the compressor code what might follow it:

    score(b) = log2( (1/M) * sum_j 2^-bits(x + b + c_j) ),   p(b | x) proportional to 2^score(b),

for M continuations c_1..c_M of K - 1 bytes each, drawn afresh at every step (from the seeded
generator) as substrings of the current context x at uniformly random offsets. The same c_j
serve all 256 candidates, and K = 1 (no continuations) is exactly the paper's rule. The score
is a Monte Carlo estimate of the marginal sum_c 2^-bits(x + b + c) over continuations that look
like the context (up to a factor shared by all candidates), so a candidate gains when the text
that usually follows it in x compresses well after it. Substrings of x were chosen over draws
from x's byte histogram: random bytes rarely fit any candidate, and one lucky fit then decides
the step. A step costs 256 * M compressions (256 for K = 1). On b"abcd" * 200, gzip gives 'a'
probability 0.50 at K = 1 (next best 0.002) and 0.9999 at K = 8, M = 8. lzma's .xz container
pads to 4 bytes, so at K = 1 all 256 candidates tie there; lookahead separates them only
partly.

Temperature T > 0 raises the probabilities to 1/T and renormalises (T -> 0: argmax, ties shared
equally; T = 1: the compressor's own distribution).

Classical compressors evaluate the 256 candidates in a process pool (`workers` > 1): each worker
gets the context once per step and a slice of the candidates. The compress function must be
picklable for that (a module-level function or `ClassicalCompress(name)`); `workers=0` runs in
this process. Results do not depend on `workers`.
"""

import concurrent.futures
import math
import multiprocessing
from collections.abc import Callable, Iterator

import numpy as np

from compressors import classical

NUM_SYMBOLS = 256
GENERATIVE_COMPRESSORS = ("gzip", "lzma", "zstd", "bzip2", "brotli")

Compress = Callable[[bytes], bytes]


class ClassicalCompress:
    """A picklable `bytes -> bytes` for a classical compressor name (rebuilt in each worker)."""

    def __init__(self, name: str):
        if name not in GENERATIVE_COMPRESSORS:
            raise ValueError(
                f"Unknown compressor {name!r}: choose from {list(GENERATIVE_COMPRESSORS)} or lm "
                "(with --workdir)."
            )
        self.name = name

    def __call__(self, data: bytes) -> bytes:
        return classical.get(self.name).compress(data)


def _bits_task(compress: Compress, context: bytes, suffixes: list[bytes]) -> list[int]:
    """Worker task: bits of compress(context + suffix) for each suffix."""
    return [8 * len(compress(context + suffix)) for suffix in suffixes]


class CandidateScorer:
    """Computes bits(context + suffix) for many suffixes, in a process pool or in-process.

    Use as a context manager (it owns the pool).
    """

    def __init__(self, compress: Compress, workers: int = 0):
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}.")
        self.compress = compress
        self.workers = workers
        self._pool = None
        if workers > 1:
            # forkserver/spawn re-import the main module: scripts guard their main with __main__.
            self._pool = concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("forkserver")
            )

    def __enter__(self) -> "CandidateScorer":
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def bits(self, context: bytes, suffixes: list[bytes]) -> np.ndarray:
        """Returns bits [len(suffixes)] int64 of compress(context + suffix)."""
        if self._pool is None:
            return np.asarray(_bits_task(self.compress, context, suffixes), np.int64)
        size = math.ceil(len(suffixes) / self.workers)
        parts = [suffixes[i : i + size] for i in range(0, len(suffixes), size)]
        futures = [self._pool.submit(_bits_task, self.compress, context, p) for p in parts]
        return np.asarray([b for f in futures for b in f.result()], np.int64)


def _log2_normalise(scores: np.ndarray) -> np.ndarray:
    """log2 of the softmax (base 2) of `scores` [..., n]."""
    top = np.max(scores, axis=-1, keepdims=True)
    total = np.log2(np.sum(np.exp2(scores - top), axis=-1, keepdims=True))
    return scores - top - total


def continuations(
    context: bytes, length: int, num_continuations: int, rng: np.random.Generator
) -> list[bytes]:
    """M continuations of `length` bytes: substrings of the context at seeded random offsets.

    A context shorter than `length` is repeated to fit (an empty one gives zero bytes).
    """
    if length == 0:
        return [b""]
    if not context:
        return [bytes(length)] * num_continuations
    source = context * (-(-length // len(context)))
    starts = rng.integers(0, len(source) - length + 1, size=num_continuations)
    return [source[s : s + length] for s in starts]


def next_byte_log2_probs(
    scorer: CandidateScorer | Compress,
    context: bytes,
    lookahead: int = 1,
    num_continuations: int = 4,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Returns log2 p(b | context) [256] float64 (see the module docstring for lookahead).

    Args:
      scorer: a `CandidateScorer`, or any `bytes -> bytes` compress function.
      context: the bytes x before the candidate.
      lookahead: K >= 1; K = 1 is the paper's rule.
      num_continuations: M, continuations per step when K > 1.
      rng: draws the continuations (required when K > 1).

    Raises:
      ValueError: lookahead < 1, num_continuations < 1, or K > 1 without an rng.
    """
    if lookahead < 1:
        raise ValueError(f"lookahead must be >= 1, got {lookahead}.")
    if num_continuations < 1:
        raise ValueError(f"num_continuations must be >= 1, got {num_continuations}.")
    if not isinstance(scorer, CandidateScorer):
        scorer = CandidateScorer(scorer)
    if lookahead > 1 and rng is None:
        raise ValueError("lookahead > 1 draws continuations: pass an rng.")
    tails = continuations(context, lookahead - 1, num_continuations, rng)
    suffixes = [bytes([b]) + tail for b in range(NUM_SYMBOLS) for tail in tails]
    bits = scorer.bits(context, suffixes).reshape(NUM_SYMBOLS, len(tails))
    # score = log2 mean_j 2^-bits_j, computed stably around each candidate's best continuation.
    neg = -bits.astype(np.float64)
    top = neg.max(axis=1)
    scores = top + np.log2(np.mean(np.exp2(neg - top[:, None]), axis=1))
    return _log2_normalise(scores)


def apply_temperature(log2_probs: np.ndarray, temperature: float) -> np.ndarray:
    """Returns p^(1/T), renormalised, as probabilities [256] (T -> 0: uniform over the argmax).

    Raises:
      ValueError: temperature <= 0.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    probs = np.exp2(_log2_normalise(log2_probs / temperature))
    return probs / probs.sum()


def check_sampling_args(num_bytes: int, temperature: float, lookahead: int, context_bytes: int):
    """Raises ValueError on a negative count, T <= 0, lookahead < 1 or context_bytes < 1."""
    if num_bytes < 0:
        raise ValueError(f"num_bytes must be >= 0, got {num_bytes}.")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    if lookahead < 1:
        raise ValueError(f"lookahead must be >= 1, got {lookahead}.")
    if context_bytes < 1:
        raise ValueError(f"context_bytes must be >= 1, got {context_bytes}.")


def iter_bytes(
    scorer: CandidateScorer,
    prompt: bytes,
    num_bytes: int,
    rng: np.random.Generator,
    temperature: float = 1.0,
    lookahead: int = 1,
    num_continuations: int = 4,
    context_bytes: int = 2048,
) -> Iterator[int]:
    """Yields `num_bytes` sampled bytes continuing `prompt` (see `sample_bytes`)."""
    check_sampling_args(num_bytes, temperature, lookahead, context_bytes)
    text = bytearray(prompt[-context_bytes:])
    for _ in range(num_bytes):
        context = bytes(text[-context_bytes:])
        log2_probs = next_byte_log2_probs(scorer, context, lookahead, num_continuations, rng)
        byte = int(rng.choice(NUM_SYMBOLS, p=apply_temperature(log2_probs, temperature)))
        text.append(byte)
        yield byte


def sample_bytes(
    compress: Compress | CandidateScorer,
    prompt: bytes,
    num_bytes: int,
    seed: int = 0,
    temperature: float = 1.0,
    lookahead: int = 1,
    num_continuations: int = 4,
    context_bytes: int = 2048,
    workers: int = 0,
) -> bytes:
    """Samples `num_bytes` bytes continuing `prompt` from a compressor's distribution.

    Args:
      compress: any `bytes -> bytes` function (picklable if workers > 1), or a scorer to reuse.
      prompt: the bytes to continue; only its last `context_bytes` are read.
      num_bytes: how many bytes to sample (>= 0).
      seed: seeds one numpy Generator for continuations and draws; equal seeds, equal output.
      temperature: T > 0.
      lookahead: K >= 1 (module docstring).
      num_continuations: M when K > 1.
      context_bytes: the context is the last this many bytes of prompt + sampled bytes.
      workers: processes for the candidates (0 or 1: this process).

    Returns:
      The sampled bytes (without the prompt).

    Raises:
      ValueError: num_bytes < 0, temperature <= 0, lookahead < 1 or context_bytes < 1.
    """
    check_sampling_args(num_bytes, temperature, lookahead, context_bytes)
    rng = np.random.default_rng(seed)
    args = (prompt, num_bytes, rng, temperature, lookahead, num_continuations, context_bytes)
    if isinstance(compress, CandidateScorer):
        return bytes(iter_bytes(compress, *args))
    with CandidateScorer(compress, workers) as scorer:
        return bytes(iter_bytes(scorer, *args))


_ESCAPES = {ord("\\"): "\\\\", ord("\t"): "\\t", ord("\r"): "\\r"}


def printable(data: bytes) -> str:
    r"""Sampled bytes as plain text for a terminal or a Markdown code block.

    Printable ASCII and newlines stay as they are; a backslash becomes `\\`, tab and carriage
    return `\t` and `\r`, and every other byte `\xNN`, so control bytes (NUL, escape sequences)
    never reach the output and `codecs.escape_decode` gives the bytes back exactly.
    """
    return "".join(
        _ESCAPES.get(b) or (chr(b) if 32 <= b < 127 or b == 10 else f"\\x{b:02x}") for b in data
    )


def complete_rows(
    sample_fn: Callable[[bytes, int], bytes], image: np.ndarray, known_columns: int
) -> np.ndarray:
    """Keeps each row's first `known_columns` pixels and samples the rest, row after row.

    The context of a row is every earlier row (with its sampled part) and the row's known part.

    Args:
      sample_fn: (context, num_bytes) -> sampled bytes.
      image: [height, width] uint8.
      known_columns: pixels kept per row.

    Returns:
      [height, width] uint8, the known parts equal to `image`'s.
    """
    height, width = image.shape
    if not 0 <= known_columns <= width:
        raise ValueError(f"known_columns must be in [0, {width}], got {known_columns}.")
    out = image.copy()
    sequence = bytearray()
    for row in range(height):
        sequence += image[row, :known_columns].tobytes()
        sampled = sample_fn(bytes(sequence), width - known_columns)
        out[row, known_columns:] = np.frombuffer(sampled, np.uint8)
        sequence += sampled
    return out


class LanguageModelSampler:
    """Samples from a byte-level training run's own distribution, one jitted KV-cache step a byte.

    The context is a window of at most `min(context_bytes, model context)` bytes fed through the
    cache from position 0 (previous token 0 there, as in training). When the cache fills, the
    window restarts from the last half of it and is fed again, so cost per byte stays bounded.
    The draw for the i-th sampled byte uses the key `fold_in(key(seed), i)`, so the output
    depends only on the seed and arguments.
    """

    def __init__(self, workdir: str, context_bytes: int = 2048):
        import jax  # imported here: classical sampling needs no JAX

        import runs
        from models import transformer
        from training import checkpoints

        config = runs.load_config(workdir)
        if config.tokenizer != "bytes":
            raise ValueError(
                f"{workdir} uses the {config.tokenizer} tokenizer: sampling supports byte-level "
                "runs (tokenizer 'bytes') only."
            )
        self.model_cfg, self.params, self.step = checkpoints.restore_params(workdir)
        self.window_bytes = min(context_bytes, self.model_cfg.context_length)
        model = transformer.Transformer(self.model_cfg)
        self._init_cache = lambda: transformer.init_cache(self.model_cfg, 1, self.window_bytes)

        def step(params, cache, prev_token, index, key, inv_temperature):
            log_probs, cache = model.apply(
                {"params": params}, prev_token[None], index, cache, method=model.decode
            )
            token = jax.random.categorical(key, log_probs[0] * inv_temperature)
            return token.astype(prev_token.dtype), cache

        self._step = jax.jit(step, donate_argnums=1)
        self._jax = jax

    def sample(
        self, prompt: bytes, num_bytes: int, seed: int = 0, temperature: float = 1.0
    ) -> bytes:
        """Returns `num_bytes` bytes sampled after `prompt` (T -> 0 approaches greedy decoding).

        Raises:
          ValueError: num_bytes < 0 or temperature <= 0.
        """
        check_sampling_args(num_bytes, temperature, 1, self.window_bytes)
        jax, jnp = self._jax, self._jax.numpy
        base_key = jax.random.key(seed)
        inv_temperature = jnp.float32(1.0 / temperature)
        window = bytearray(prompt[-(self.window_bytes - 1) :] if self.window_bytes > 1 else b"")
        out = bytearray()
        cache, fed = self._init_cache(), 0  # fed: window bytes already in the cache
        while len(out) < num_bytes:
            if len(window) >= self.window_bytes:  # full: restart from the newest half
                window = window[-(self.window_bytes // 2) :]
                cache, fed = self._init_cache(), 0
            key = jax.random.fold_in(base_key, len(out))
            # Feed window[:fed+1..] up to its end; the last step's draw is the next byte.
            while True:
                prev = jnp.int32(window[fed - 1] if fed else 0)
                token, cache = self._step(
                    self.params, cache, prev, jnp.int32(fed), key, inv_temperature
                )
                fed += 1
                if fed > len(window):
                    break
            byte = int(token)
            out.append(byte)
            window.append(byte)
        return bytes(out)
