"""Entropy coding for language-model compression: quantisation, range coder, container format.

The package knows nothing about models: it takes probabilities or integer frequency tables.

Modules:
    quantize: probabilities `[..., vocab]` -> integer frequency tables (`quantize_np`,
        `quantize_jax`) and cumulative tables.
    range_coder: batched byte-oriented range coder, NumPy reference (`*_np`) and JAX (`*_jax`)
        versions that agree byte for byte; about 0.3 bytes per chunk above the ideal.
    topk: the paper's top-k next-token probabilities with an exact escape.
    factorized: large alphabets (up to 65,536 symbols) coded exactly as two smaller ones.
    container: the on-disk format, streaming writer and validating reader, `atomic_output`.

Exactness contract:

1. The coder round-trips for ANY valid tables: every frequency >= 1 and each table summing to
   exactly `2**precision_bits` (precision at most 16). Invalid tables raise `ValueError` on the
   host (or set a flag on device, where raising is impossible).
2. Decoding is correct only if the decoder sees, at every step, the encoder's integer tables
   bit for bit. A single wrong frequency anywhere desynchronises the rest of the chunk.
3. Getting identical tables is the caller's job, because they come from the model. There are
   two ways (models/lm_coder.py), and a stream records which it took:
   * The integer path (`models/integer.py`, compress.py's default, `--portable`): the model's
     forward runs in exact arithmetic only (integers, and a few float operations that either
     meet only integers the float holds exactly or are corrected to the exact integer by integer
     checks: models/integer.py's docstring lists them) and yields the tables
     directly, so they are the same on every machine, device, instruction set, jax version,
     batch shape and program.
     Exactness is guaranteed everywhere this release (its `TABLES_VERSION`) runs.
   * The float path (`--noportable`): the decoder must compute each step's probabilities with
     bit-identical float32 results to the encoder's, so both run the same compiled step on the
     same shapes and values, on a machine whose floats are the same: the same jax version,
     backend, device kind, CPU instruction set and numerics flags, which the stream records and
     the decoder compares before decoding (`models/numerics.py`). XLA may fuse or reorder
     floating-point reductions differently for other shapes or targets (a whole-sequence pass
     is NOT guaranteed to match a cached token-by-token one; a stream made under
     `--xla_cpu_max_isa=SSE4_2` does not decode under AVX2).
4. This package supports the contract by making everything after the probabilities exact and
   portable: the ONE quantisation function (`quantize.quantize_np`/`quantize_jax`, also used by
   `factorized` through integer sums) uses one exactly rounded float operation (a product with a
   power of two) followed by integer arithmetic with deterministic tie-breaking, so NumPy and
   JAX (CPU or GPU) produce identical tables from identical float32 input; the NumPy and JAX
   coders produce identical bytes.
5. Integrity: the range decoder accepts a chunk only if its bytes are exactly the encoder's
   output for the decoded symbols (`range_coder.decode_finish_*`, `range_coder.check_errors`),
   but a code this close to optimal leaves most corruptions decodable, so the container adds
   crc32 checksums of the header, of each group's payloads (checked before decoding) and of each
   group's original bytes (checked after), plus the sha256 of the original data.
"""
