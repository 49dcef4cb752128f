"""Throughput (symbols/s) and overhead (bytes per chunk) of the range coder, NumPy and JAX.

Throughput: tables are realistic peaked distributions (softmax of Gaussian logits scaled by 4-16:
median top probability 0.8, about 1.1 bits of entropy, as for a byte-level model), quantised
once into `--num_tables` tables; each (chunk, step) uses one of them at random, and its symbol
is drawn from it. The JAX decoder is one jitted `lax.scan` whose step gathers its
`[batch, vocab]` table on device, as a model-driven decoder would. Compile time is excluded (one
warm-up call), and every run checks that the decoded symbols equal the input and that NumPy and
JAX bytes agree.

Overhead: for four kinds of tables (text-like peaked, image-like discretised logistic, audio-like
Laplace, uniform with random symbols), the bytes each chunk takes above its ideal code length
`sum(-log2(freq / 2**16))`, mean and max over the batch.

Command:
    python bench/coder_throughput.py --batch 1024 --length 2048 --vocab 256
"""

import argparse
import shlex
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])  # Run from anywhere in the checkout.

from bench.timing import best_time  # noqa: E402
from coding import quantize  # noqa: E402
from coding import range_coder as rc  # noqa: E402

KINDS = ("text", "image", "audio", "uniform")


def make_tables(kind: str, num_tables: int, vocab: int, rng) -> np.ndarray:
    """Returns int32 `[num_tables, vocab]` quantised tables of one kind (see the docstring)."""
    x = np.arange(vocab)
    if kind == "text":  # The same draws as this benchmark's earlier (rANS) versions.
        scales = rng.uniform(4.0, 16.0, size=(num_tables, 1))
        logits = rng.standard_normal((num_tables, vocab)) * scales
    elif kind == "image":  # Discretised logistic around a random value, scale 1..8.
        mean = rng.uniform(0, vocab - 1, (num_tables, 1))
        scale = np.exp(rng.uniform(0, np.log(8), (num_tables, 1)))
        edges = 1 / (1 + np.exp(-(np.concatenate([x - 0.5, [vocab - 0.5]]) - mean) / scale))
        edges[:, 0], edges[:, -1] = 0, 1
        logits = np.log(np.maximum(np.diff(edges, axis=1), 1e-30))
    elif kind == "audio":  # Laplace around the midpoint, scale 2..40.
        mean = vocab / 2 + rng.normal(0, 8, (num_tables, 1))
        logits = -np.abs(x - mean) / np.exp(rng.uniform(np.log(2), np.log(40), (num_tables, 1)))
    else:
        logits = np.zeros((num_tables, vocab))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return quantize.quantize_np((probs / probs.sum(-1, keepdims=True)).astype(np.float32))


def make_inputs(batch: int, length: int, vocab: int, num_tables: int, kind="text", seed=0):
    """Returns tables `[num_tables, vocab]`, table ids and symbols `[batch, length]`."""
    rng = np.random.default_rng(seed)
    tables = make_tables(kind, num_tables, vocab, rng)
    table_ids = rng.integers(num_tables, size=(batch, length)).astype(np.int32)
    cdf = quantize.cdf_np(tables)
    slots = rng.integers(1 << 16, size=(batch, length))
    symbols = np.empty((batch, length), dtype=np.int32)
    for k in range(num_tables):  # Inverse-cdf sampling, one table at a time to bound memory.
        mask = table_ids == k
        symbols[mask] = np.searchsorted(cdf[k], slots[mask], side="right") - 1
    return tables, table_ids, symbols


def bench_numpy(tables, table_ids, symbols, repeats: int):
    """Times `encode_np` and a `decode_step_np` loop; returns (encode_s, decode_s, data)."""
    cdf = quantize.cdf_np(tables)
    starts, freqs = cdf[table_ids, symbols], tables[table_ids, symbols]
    encode_s, (data, num_bytes) = best_time(lambda: rc.encode_np(starts, freqs), repeats)

    def decode():
        state = rc.decode_init_np(data, num_bytes, np.full(len(data), symbols.shape[1]))
        out = np.empty_like(symbols)
        for t in range(symbols.shape[1]):
            out[:, t], state = rc.decode_step_np(state, tables[table_ids[:, t]])
        return out, rc.decode_finish_np(state)

    decode_s, (decoded, errors) = best_time(decode, repeats)
    assert np.array_equal(decoded, symbols) and not errors.any(), "NumPy round trip failed"
    return encode_s, decode_s, data


@jax.jit
def _decode_jax(data, num_bytes, tables, table_ids):
    def step(state, ids):
        return rc.decode_step_jax(state, tables[ids])[::-1]

    num_steps = jnp.full(data.shape[0], table_ids.shape[1], jnp.int32)
    state = rc.decode_init_jax(data, num_bytes, num_steps)
    state, decoded = jax.lax.scan(step, state, table_ids.T)
    return decoded.T, rc.decode_finish_jax(state)


def _intervals(tables, table_ids, symbols):
    cdf = quantize.cdf_np(tables)
    starts = jnp.asarray(cdf[table_ids, symbols].astype(np.uint32))
    freqs = jnp.asarray(tables[table_ids, symbols].astype(np.uint32))
    return starts, freqs, jnp.full(symbols.shape[0], symbols.shape[1], jnp.int32)


def bench_jax(tables, table_ids, symbols, repeats: int):
    """Times the JAX encoder and decode scan; returns (encode_s, decode_s, data, num_bytes)."""
    starts, freqs, lengths = _intervals(tables, table_ids, symbols)

    def encode():
        return jax.block_until_ready(rc.encode_jax_core(starts, freqs, lengths))

    encode()  # Compile.
    encode_s, (data, num_bytes, _) = best_time(encode, repeats)
    tables_d, ids_d = jnp.asarray(tables), jnp.asarray(table_ids)

    def decode():
        return jax.block_until_ready(_decode_jax(data, num_bytes, tables_d, ids_d))

    decode()  # Compile.
    decode_s, (decoded, errors) = best_time(decode, repeats)
    assert np.array_equal(np.asarray(decoded), symbols) and not np.asarray(errors).any()
    return encode_s, decode_s, np.asarray(data), np.asarray(num_bytes)


def report_overhead(batch: int, length: int, vocab: int, num_tables: int) -> None:
    """Prints, per kind of table, the rate and the bytes per chunk above the ideal length."""
    print(f"{'tables':<8} {'bits/symbol':>11} {'mean bytes over':>16} {'max':>6}")
    for seed, kind in enumerate(KINDS):
        tables, table_ids, symbols = make_inputs(batch, length, vocab, num_tables, kind, seed)
        starts, freqs, lengths = _intervals(tables, table_ids, symbols)
        _, num_bytes, _ = rc.encode_jax_core(starts, freqs, lengths)
        ideal_bits = (16 - np.log2(np.asarray(freqs, np.float64))).sum(axis=1)
        over = (8 * np.asarray(num_bytes) - ideal_bits) / 8
        rate = 8 * np.asarray(num_bytes).sum() / symbols.size
        print(f"{kind:<8} {rate:11.3f} {over.mean():16.3f} {over.max():6.3f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=1024, help="chunks coded in parallel")
    parser.add_argument("--length", type=int, default=2048, help="symbols per chunk")
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--num_tables", type=int, default=64, help="distinct tables of a kind")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--skip_numpy", action="store_true", help="time only the JAX coder")
    args = parser.parse_args(argv)
    print("command: python " + shlex.join(sys.argv))
    print(
        f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"batch={args.batch} length={args.length} vocab={args.vocab}"
    )
    report_overhead(args.batch, args.length, args.vocab, args.num_tables)
    tables, table_ids, symbols = make_inputs(args.batch, args.length, args.vocab, args.num_tables)
    total = symbols.size
    rows = []
    jax_encode_s, jax_decode_s, jax_data, _ = bench_jax(tables, table_ids, symbols, args.repeats)
    if not args.skip_numpy:
        np_encode_s, np_decode_s, np_data = bench_numpy(tables, table_ids, symbols, args.repeats)
        assert np.array_equal(np_data, jax_data), "NumPy and JAX bytes differ"
        rows += [("numpy", "encode", np_encode_s), ("numpy", "decode", np_decode_s)]
    rows += [("jax", "encode", jax_encode_s), ("jax", "decode", jax_decode_s)]
    print(f"{'coder':<6} {'op':<7} {'seconds':>8} {'Msymbols/s':>11}")
    for coder, op, seconds in rows:
        print(f"{coder:<6} {op:<7} {seconds:8.3f} {total / seconds / 1e6:11.2f}")


if __name__ == "__main__":
    main()
