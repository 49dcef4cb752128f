"""Entropy coding for language-model compression: quantisation, rANS, container format.

The package knows nothing about models: it takes probabilities or integer frequency tables.

Modules:
    quantize: probabilities `[..., vocab]` -> integer frequency tables (`quantize_np`,
        `quantize_jax`) and cumulative tables.
    rans: batched rANS coder, NumPy reference (`*_np`) and JAX (`*_jax`) versions.
    factorized: large alphabets (up to 65,536 symbols) coded exactly as two smaller ones.
    container: the on-disk format, streaming writer and validating reader, `atomic_output`.

Exactness contract:

1. The coder round-trips for ANY valid tables: every frequency >= 1 and each table summing to
   exactly `2**precision_bits` (precision at most 16). Invalid tables raise `ValueError` on the
   host (or set a flag on device, where raising is impossible).
2. Decoding is correct only if the decoder sees, at every step, the encoder's integer tables
   bit for bit. A single wrong frequency anywhere desynchronises the rest of the chunk.
3. Getting identical tables is the caller's job, because they come from the model: the decoder
   must compute each step's probabilities with bit-identical float32 results to the encoder's,
   in practice the same compiled step function with the same batch shape and the same
   backend/device, since XLA may fuse or reorder floating-point reductions differently for
   other shapes (e.g. a whole-sequence forward pass in the encoder is NOT guaranteed to match
   a cached token-by-token decoder).
4. This package supports the contract by making everything after the probabilities exact and
   portable: the ONE quantisation function (`quantize.quantize_np`/`quantize_jax`, also used by
   `factorized` through integer sums) uses one exactly rounded float operation (a product with a
   power of two) followed by integer arithmetic with deterministic tie-breaking, so NumPy and
   JAX (CPU or GPU) produce identical tables from identical float32 input; the NumPy and JAX
   coders produce identical words.
5. Integrity: the rANS decoder must end every chunk in the initial state `rans.STATE_LOWER_BOUND`
   having read exactly all words (`rans.decode_finish_*`, `rans.check_errors`); the container
   adds crc32 checksums of header, chunk table and payloads, plus the sha256 of the original
   data (`container.ContainerReader.verify_original`).
"""
