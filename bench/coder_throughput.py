"""Throughput of the rANS coders (symbols/s), NumPy reference and JAX, encode and decode.

Tables are realistic peaked distributions (softmax of Gaussian logits scaled by 4-16: median top
probability 0.8, about 1.1 bits of entropy, as for a byte-level model), quantised once into
`--num_tables` tables; each (chunk, step) uses one of them at random, and its symbol is drawn
from it. The JAX decoder is one jitted `lax.scan` whose step gathers its `[batch, vocab]` table
on device, as a model-driven decoder would. Compile time is excluded (one warm-up call), and
every run checks that the decoded symbols equal the input and NumPy and JAX words agree.

Command:
    python bench/coder_throughput.py --batch 1024 --length 2048 --vocab 256
"""

import argparse
import shlex
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])  # Run from anywhere in the checkout.

from coding import quantize, rans  # noqa: E402


def make_inputs(batch: int, length: int, vocab: int, num_tables: int, seed: int = 0):
    """Returns peaked tables `[num_tables, vocab]`, table ids and symbols `[batch, length]`."""
    rng = np.random.default_rng(seed)
    scales = rng.uniform(4.0, 16.0, size=(num_tables, 1))
    logits = rng.standard_normal((num_tables, vocab)) * scales
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    tables = quantize.quantize_np((probs / probs.sum(-1, keepdims=True)).astype(np.float32))
    table_ids = rng.integers(num_tables, size=(batch, length)).astype(np.int32)
    cdf = quantize.cdf_np(tables)
    slots = rng.integers(1 << 16, size=(batch, length))
    symbols = np.empty((batch, length), dtype=np.int32)
    for k in range(num_tables):  # Inverse-cdf sampling, one table at a time to bound memory.
        mask = table_ids == k
        symbols[mask] = np.searchsorted(cdf[k], slots[mask], side="right") - 1
    return tables, table_ids, symbols


def _time(fn, repeats: int) -> tuple[float, object]:
    """Returns the best wall time of `repeats` calls of `fn` and its last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def bench_numpy(tables, table_ids, symbols, repeats: int):
    """Times `rans.encode_np` and a `decode_step_np` loop; returns (encode_s, decode_s, words)."""
    cdf = quantize.cdf_np(tables)
    starts, freqs = cdf[table_ids, symbols], tables[table_ids, symbols]
    encode_s, (words, num_words) = _time(lambda: rans.encode_np(starts, freqs), repeats)

    def decode():
        state = rans.decode_init_np(words, num_words, np.full(len(words), symbols.shape[1]))
        out = np.empty_like(symbols)
        for t in range(symbols.shape[1]):
            out[:, t], state = rans.decode_step_np(state, tables[table_ids[:, t]])
        return out, rans.decode_finish_np(state)

    decode_s, (decoded, errors) = _time(decode, repeats)
    assert np.array_equal(decoded, symbols) and not errors.any(), "NumPy round trip failed"
    return encode_s, decode_s, words


@jax.jit
def _decode_jax(words, num_words, tables, table_ids):
    def step(state, ids):
        return rans.decode_step_jax(state, tables[ids])[::-1]

    num_steps = jnp.full(words.shape[0], table_ids.shape[1], jnp.int32)
    state = rans.decode_init_jax(words, num_words, num_steps)
    state, decoded = jax.lax.scan(step, state, table_ids.T)
    return decoded.T, rans.decode_finish_jax(state)


def bench_jax(tables, table_ids, symbols, repeats: int):
    """Times the JAX encoder and decode scan; returns (encode_s, decode_s, words, num_words)."""
    cdf = quantize.cdf_np(tables)
    starts = jnp.asarray(cdf[table_ids, symbols].astype(np.uint32))
    freqs = jnp.asarray(tables[table_ids, symbols].astype(np.uint32))
    lengths = jnp.full(symbols.shape[0], symbols.shape[1], jnp.int32)

    def encode():
        return jax.block_until_ready(rans.encode_jax_core(starts, freqs, lengths))

    encode()  # Compile.
    encode_s, (words, num_words, _) = _time(encode, repeats)
    tables_d, ids_d = jnp.asarray(tables), jnp.asarray(table_ids)

    def decode():
        return jax.block_until_ready(_decode_jax(words, num_words, tables_d, ids_d))

    decode()  # Compile.
    decode_s, (decoded, errors) = _time(decode, repeats)
    assert np.array_equal(np.asarray(decoded), symbols) and not np.asarray(errors).any()
    return encode_s, decode_s, np.asarray(words), np.asarray(num_words)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=1024, help="chunks coded in parallel")
    parser.add_argument("--length", type=int, default=2048, help="symbols per chunk")
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--num_tables", type=int, default=64, help="distinct peaked tables")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--skip_numpy", action="store_true", help="time only the JAX coder")
    args = parser.parse_args(argv)
    tables, table_ids, symbols = make_inputs(args.batch, args.length, args.vocab, args.num_tables)
    total = symbols.size
    print("command: python " + shlex.join(sys.argv))
    print(
        f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"batch={args.batch} length={args.length} vocab={args.vocab}"
    )
    rows = []
    jax_encode_s, jax_decode_s, jax_words, num_words = bench_jax(
        tables, table_ids, symbols, args.repeats
    )
    print(f"rate: {16 * num_words.sum() / total:.3f} bits/symbol")
    if not args.skip_numpy:
        np_encode_s, np_decode_s, np_words = bench_numpy(tables, table_ids, symbols, args.repeats)
        assert np.array_equal(np_words, jax_words), "NumPy and JAX words differ"
        rows += [("numpy", "encode", np_encode_s), ("numpy", "decode", np_decode_s)]
    rows += [("jax", "encode", jax_encode_s), ("jax", "decode", jax_decode_s)]
    print(f"{'coder':<6} {'op':<7} {'seconds':>8} {'Msymbols/s':>11}")
    for coder, op, seconds in rows:
        print(f"{coder:<6} {op:<7} {seconds:8.3f} {total / seconds / 1e6:11.2f}")


if __name__ == "__main__":
    main()
