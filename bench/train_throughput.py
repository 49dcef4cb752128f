r"""Training throughput (tokens/s) of the size presets.

  python bench/train_throughput.py --sizes=200K,800K,3.2M --batch_size=128 --seq_len=2048 \
      --dtype=bfloat16 --steps=20

Times `training.steps.make_train_step`'s jitted step (the one train.py runs) on random tokens
after a warm-up, with the batch split over all local devices, and prints one JSON line per size
and a table.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from configs import default  # noqa: E402
from models import transformer  # noqa: E402
from training import steps  # noqa: E402

_SIZES = flags.DEFINE_list("sizes", ["200K", "800K", "3.2M"], "Presets to time.")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Global batch size.")
_SEQ = flags.DEFINE_integer("seq_len", 2048, "Sequence length.")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "Compute dtype.")
_ATTN = flags.DEFINE_string("attention", "auto", "auto, xla or cudnn.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps (compilation included).")
_OUT = flags.DEFINE_string("out", "", "Append JSON lines here too.")


def bench_size(size: str) -> dict:
    config = default.get_config(f"size={size}")
    config.model.dtype = _DTYPE.value
    config.model.attention = _ATTN.value
    config.model.context_length = _SEQ.value
    model_cfg = transformer.TransformerConfig.from_config(config.model, 256)
    model = transformer.Transformer(model_cfg)
    tx = steps.make_optimizer(config.optim, 1000)
    mesh = steps.make_mesh()
    train_step = steps.make_train_step(model, tx, mesh)
    params = transformer.init_params(model_cfg, jax.random.key(0))
    state = jax.device_put(
        {"step": np.int32(0), "params": params, "opt_state": tx.init(params)},
        NamedSharding(mesh, P()),
    )
    rng = np.random.default_rng(0)
    sharding = NamedSharding(mesh, P("data"))
    batches = [
        jax.device_put(rng.integers(0, 256, (_BATCH.value, _SEQ.value), dtype=np.int32), sharding)
        for _ in range(4)
    ]
    for i in range(_WARMUP.value):
        state, metrics = train_step(state, batches[i % 4])
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for i in range(_STEPS.value):
        state, metrics = train_step(state, batches[i % 4])
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start
    return {
        "bench": "train_throughput",
        "size": size,
        "num_params": transformer.num_params(params),
        "batch_size": _BATCH.value,
        "seq_len": _SEQ.value,
        "dtype": _DTYPE.value,
        "attention": _ATTN.value,
        "devices": f"{jax.device_count()}x {jax.devices()[0].device_kind}",
        "seconds_per_step": seconds / _STEPS.value,
        "tokens_per_second": _STEPS.value * _BATCH.value * _SEQ.value / seconds,
        "jax": jax.__version__,
    }


def main(argv):
    del argv
    rows = []
    for size in _SIZES.value:
        row = bench_size(size)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if _OUT.value:
            with open(_OUT.value, "a") as f:
                f.write(json.dumps(row) + "\n")
    print(f"\n{'size':>6} {'params':>12} {'s/step':>9} {'tokens/s':>14}   {rows[0]['devices']}")
    for r in rows:
        print(
            f"{r['size']:>6} {r['num_params']:>12,} {r['seconds_per_step']:>9.4f} "
            f"{r['tokens_per_second']:>14,.0f}"
        )


if __name__ == "__main__":
    app.run(main)
