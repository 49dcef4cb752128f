r"""Cost of the integer coding path (models/integer.py): rate and speed against the float path.

  python bench/integer_cost.py --runs=/tmp/int/200K,/tmp/int/800K,/tmp/int/3.2M \
      --speed_run=/tmp/int/200K --lanes=16,64

Rate: for each trained run, the held-out chunks (`--source`, default `pydocs:heldout`, chunks of
the run's context or `--chunk_size`) in bits per byte three ways: the float model's log-loss,
the code length of the float model's quantised tables (`coding.quantize.quantize_np`, what
`models.lm_coder` codes with today), and the code length of the integer tables
(sum of -log2(freq / 2**16) of the true bytes).

Speed: tables per second of the KV-cache step over one chunk of `--speed_tokens` positions at
each `--lanes`, as `models.lm_coder` runs it (a jitted scan per attention block reading only the
filled cache prefix), float step + quantisation against `integer.decode_step`; compilation
excluded, best of `--repeats`. Prints one JSON line per measurement and two tables.
"""

import functools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from coding import quantize  # noqa: E402
from data import sources  # noqa: E402
from models import integer, transformer  # noqa: E402
from training import checkpoints  # noqa: E402

_RUNS = flags.DEFINE_list("runs", [], "Trained run directories to rate.")
_SOURCE = flags.DEFINE_string("source", "pydocs:heldout", "Held-out data (data/sources.py).")
_CHUNK = flags.DEFINE_integer("chunk_size", 0, "Bytes per chunk (0: the run's context).")
_NUM_CHUNKS = flags.DEFINE_integer("num_chunks", 0, "Chunks to rate (0: all).")
_DIGITS = flags.DEFINE_list("weight_digits", ["1", "2"], "int8 digits per matrix entry.")
_BATCH = flags.DEFINE_integer("batch", 16, "Chunks per forward pass when rating.")
_SPEED_RUN = flags.DEFINE_string("speed_run", "", "Run to time ('' skips the speed part).")
_LANES = flags.DEFINE_list("lanes", ["16", "64"], "Rows decoded together.")
_SPEED_TOKENS = flags.DEFINE_integer("speed_tokens", 256, "Positions per timed chunk.")
_BLOCKS = flags.DEFINE_integer("attention_blocks", 8, "As models.lm_coder.CoderShape.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repetitions, alternating paths (best kept).")
_OUT = flags.DEFINE_string("out", "", "Append JSON lines here too.")


def _chunks(context: int) -> np.ndarray:
    size = _CHUNK.value or context
    chunks = list(sources.get_source(_SOURCE.value).chunks(_NUM_CHUNKS.value, size))
    return np.frombuffer(b"".join(chunks), np.uint8).reshape(len(chunks), size).astype(np.int32)


def _batched(fn, tokens: np.ndarray) -> np.ndarray:
    step = _BATCH.value
    return np.concatenate(
        [np.asarray(fn(tokens[i : i + step])) for i in range(0, len(tokens), step)]
    )


def rate(workdir: str) -> list[dict]:
    """Bits per byte of one run's held-out chunks: float log-loss, float tables, integer tables."""
    cfg, params, step = checkpoints.restore_params(workdir)
    tokens = _chunks(cfg.context_length)
    model = transformer.Transformer(cfg)
    log_probs = _batched(jax.jit(lambda t: model.apply({"params": params}, t)), tokens)
    picked = np.take_along_axis(log_probs, tokens[..., None], -1)[..., 0].astype(np.float64)
    float_bpb = -picked.sum() / np.log(2) / tokens.size
    tables_bpb = integer.code_length_bits(quantize.quantize_np(np.exp(log_probs)), tokens)
    tables_bpb = tables_bpb.sum() / tokens.size
    rows = []
    for digits in map(int, _DIGITS.value):
        start = time.perf_counter()
        int_params = integer.quantize_params(cfg, params, weight_digits=digits)
        seconds = time.perf_counter() - start
        fn = jax.jit(integer.tables)
        int_tables = _batched(lambda t, p=int_params, fn=fn: fn(p, t), tokens)
        int_bpb = integer.code_length_bits(int_tables, tokens).sum() / tokens.size
        rows.append({
            "bench": "integer_rate",
            "run": workdir,
            "step": int(step),
            "num_params": transformer.num_params(params),
            "norm": cfg.norm,
            "source": _SOURCE.value,
            "bytes": int(tokens.size),
            "weight_digits": digits,
            "float_log_loss_bpb": float_bpb,
            "float_tables_bpb": float(tables_bpb),
            "integer_bpb": float(int_bpb),
            "vs_log_loss_percent": 100 * (int_bpb / float_bpb - 1),
            "vs_float_tables_percent": 100 * (int_bpb / tables_bpb - 1),
            "quantize_seconds": seconds,
        })  # fmt: skip
    return rows


def _scan_steps(step_fn, init, lanes: int, length: int, blocks: int):
    """A jitted pass over `length` positions, one scan per attention block (as lm_coder)."""

    def run(tokens):
        carry = (init(lanes, length), jnp.zeros(lanes, jnp.int32))
        block_len = -(-length // blocks)
        checksum = jnp.zeros((), jnp.int32)
        for first in range(0, length, block_len):
            last = min(length, first + block_len)

            def body(carry, t, kv_length=last):
                cache, prev = carry
                table, cache = step_fn(prev, t, cache, kv_length)
                return (cache, tokens[:, t]), table[:, 0]

            carry, out = jax.lax.scan(body, carry, jnp.arange(first, last, dtype=jnp.int32))
            checksum = checksum + jnp.sum(out)
        return checksum

    return jax.jit(run)


def speed(workdir: str) -> list[dict]:
    """Tables per second of the float and the integer KV-cache step."""
    cfg, params, _ = checkpoints.restore_params(workdir)
    model = transformer.Transformer(cfg)
    int_params = integer.quantize_params(cfg, params)
    length = min(_SPEED_TOKENS.value, cfg.context_length)

    def float_step(prev, t, cache, kv_length):
        log_probs, cache = model.apply(
            {"params": params}, prev, t, cache, kv_length, method=transformer.Transformer.decode
        )
        return quantize.quantize_jax(jnp.exp(log_probs)), cache

    int_step = functools.partial(integer.decode_step, int_params)
    paths = {
        "float": (float_step, functools.partial(transformer.init_cache, cfg)),
        "integer": (int_step, functools.partial(integer.init_cache, int_params)),
    }
    rows = []
    for lanes in map(int, _LANES.value):
        tokens = np.random.default_rng(0).integers(0, 256, (lanes, length)).astype(np.int32)
        runs, first_call = {}, {}
        for name, (step_fn, init) in paths.items():
            runs[name] = _scan_steps(step_fn, init, lanes, length, _BLOCKS.value)
            start = time.perf_counter()
            jax.block_until_ready(runs[name](tokens))
            first_call[name] = time.perf_counter() - start
        # Alternate the paths so that a change in machine load hits both alike; keep the best.
        times = {name: [] for name in paths}
        for _ in range(_REPEATS.value):
            for name, run in runs.items():
                start = time.perf_counter()
                jax.block_until_ready(run(tokens))
                times[name].append(time.perf_counter() - start)
        for name in paths:
            rows.append({
                "bench": "integer_speed",
                "run": workdir,
                "path": name,
                "lanes": lanes,
                "positions": length,
                "attention_blocks": _BLOCKS.value,
                "seconds": min(times[name]),
                "tables_per_second": lanes * length / min(times[name]),
                "first_call_seconds": first_call[name],
                "devices": f"{jax.device_count()}x {jax.devices()[0].device_kind}",
                "jax": jax.__version__,
            })  # fmt: skip
    return rows


def _emit(rows: list[dict]) -> None:
    for row in rows:
        print(json.dumps(row), flush=True)
        if _OUT.value:
            with open(_OUT.value, "a") as f:
                f.write(json.dumps(row) + "\n")


def main(argv):
    del argv
    rates = [row for run in _RUNS.value for row in rate(run)]
    _emit(rates)
    speeds = speed(_SPEED_RUN.value) if _SPEED_RUN.value else []
    _emit(speeds)
    if rates:
        print(f"\n{'run':>24} {'params':>10} {'digits':>6} {'float':>7} {'tables':>7} "
              f"{'integer':>7} {'vs float':>9}")  # fmt: skip
        for r in rates:
            print(
                f"{os.path.basename(r['run']):>24} {r['num_params']:>10,} {r['weight_digits']:>6} "
                f"{r['float_log_loss_bpb']:>7.4f} {r['float_tables_bpb']:>7.4f} "
                f"{r['integer_bpb']:>7.4f} {r['vs_log_loss_percent']:>+8.2f}%"
            )
    if speeds:
        print(f"\n{'path':>8} {'lanes':>6} {'tables/s':>10} {'s/chunk':>8} {'first call s':>12}")
        for r in speeds:
            print(
                f"{r['path']:>8} {r['lanes']:>6} {r['tables_per_second']:>10,.0f} "
                f"{r['seconds']:>8.3f} {r['first_call_seconds']:>12.1f}"
            )


if __name__ == "__main__":
    app.run(main)
