r"""End-to-end throughput (MB/s of raw data) of eval_compress's rating paths.

  python bench/eval_throughput.py --size=3.2M --num_chunks=8192 --coded_chunks=1024 \
      --chunks_per_device=64 --lanes=512                                           # a GPU
  python bench/eval_throughput.py --size=test --context=2048 --num_chunks=64 --coded_chunks=16
  python bench/eval_throughput.py --run=runs/3.2M --dataset=enwik8 --num_chunks=4096

Model paths, each from the dataset source through the prefetch thread to bits:
* log-loss: `LanguageModelCompressor.log_loss`, the parallel pass over all local devices;
* coded: `LanguageModelCompressor.code`, the range coder through `LMCoder` (and `--verify`:
  every group decoded back as well).
One warm-up call on the first blocks compiles the programs and is not timed. Without `--run`, the
model is `--size`'s preset with randomly initialised weights, written to a temporary run
(throughput does not depend on the weights' values).

Classical compressors: `compressors.evaluation.evaluate` for each one alone, chunked over
`--workers` processes and, separately, unchunked (one stream), timed by the wall clock (worker
start-up included: use a dataset of some MB); `compute_mb_per_s` divides by the summed
compression time instead, one core's speed.

Prints one JSON line per measurement and a table; `--out` appends the JSON lines to a file.
"""

import json
import os
import shlex
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

from compressors import evaluation  # noqa: E402
from configs import eval as eval_config  # noqa: E402
from data import sources  # noqa: E402

# JAX and the model code are imported inside the model benchmark: the classical compressors'
# worker processes import this module again, and start faster without them.

_RUN = flags.DEFINE_string("run", "", "A training run to rate with; default: random weights.")
_SIZE = flags.DEFINE_string("size", "test", "Preset for random weights (without --run).")
_CONTEXT = flags.DEFINE_integer("context", 0, "Context length for random weights; 0: preset's.")
_DTYPE = flags.DEFINE_string("dtype", "", "Compute dtype ('' keeps the run's: float32).")
_ATTENTION = flags.DEFINE_string("attention", "", "Attention ('' keeps the run's: auto).")
_BLOCKS = flags.DEFINE_integer("attention_blocks", 0, "Coder attention blocks; 0: its default.")
_DATASET = flags.DEFINE_string("dataset", "pydocs", "A data.sources spec.")
_CHUNK = flags.DEFINE_integer("chunk_size", 0, "Bytes per chunk; 0: the model's context.")
_NUM_CHUNKS = flags.DEFINE_integer("num_chunks", 64, "Chunks for the log-loss path.")
_CODED_CHUNKS = flags.DEFINE_integer("coded_chunks", 16, "Chunks for the coded path; 0 skips.")
_CHUNKS_PER_DEVICE = flags.DEFINE_integer("chunks_per_device", 8, "Log-loss rows per device.")
_LANES = flags.DEFINE_integer("lanes", 8, "Coder group size per device.")
_VERIFY = flags.DEFINE_bool("verify", False, "Also time the coded path with verification.")
_CLASSICAL = flags.DEFINE_list(
    "classical", ["gzip", "lzma", "zstd", "bzip2", "brotli", "png", "flac"], "Compressors."
)
_CLASSICAL_CHUNKS = flags.DEFINE_integer("classical_chunks", 0, "0: the dataset's default.")
_WORKERS = flags.DEFINE_integer("workers", 0, "Processes for classical; 0: one per core.")
_OUT = flags.DEFINE_string("out", "", "Append JSON lines here too.")


def _random_run(workdir: str) -> str:
    """Writes a run directory holding `--size`'s preset with random weights."""
    import jax
    import orbax.checkpoint as ocp

    import runs
    from configs import default
    from models import transformer
    from training import checkpoints

    config = default.get_config(f"size={_SIZE.value}")
    config.model.context_length = _CONTEXT.value or config.model.context_length
    model_cfg = transformer.TransformerConfig.from_config(config.model, 256)
    params = transformer.init_params(model_cfg, jax.random.key(0))
    with open(os.path.join(workdir, runs.CONFIG_FILE), "w") as f:
        f.write(config.to_json(indent=2))
    with checkpoints.manager(workdir) as mngr:
        mngr.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params})))
        mngr.wait_until_finished()
    return workdir


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_model(workdir: str) -> list[dict]:
    from compressors import language_model

    lm = language_model.LanguageModelCompressor(
        workdir,
        chunks_per_device=_CHUNKS_PER_DEVICE.value,
        lanes=_LANES.value,
        dtype=_DTYPE.value,
        attention=_ATTENTION.value,
        attention_blocks=_BLOCKS.value,
    )
    chunk_size = _CHUNK.value or lm.model_cfg.context_length
    source = sources.get_source(_DATASET.value)

    def chunks(n):
        return source.chunks(n, chunk_size)

    common = {
        "model": _RUN.value or f"{_SIZE.value} (random weights)",
        "params": lm.num_params,
        "dataset": source.name,
        "chunk_size": chunk_size,
        "devices": len(lm.devices),
        "device_kind": lm.devices[0].device_kind,
        "dtype": lm.model_cfg.dtype,
    }
    rows_per_pass = _CHUNKS_PER_DEVICE.value * len(lm.devices)
    lm.log_loss(chunks(rows_per_pass), chunk_size)  # compile
    n = _NUM_CHUNKS.value
    seconds = _timed(lambda: lm.log_loss(chunks(n), chunk_size))
    results = [{"path": "log_loss", "num_chunks": n, "seconds": seconds, **common}]
    if _CODED_CHUNKS.value:
        groups = _LANES.value * len(lm.devices)
        lm.code(chunks(groups), chunk_size, verify=_VERIFY.value)  # compile every device's coder
        n = _CODED_CHUNKS.value
        for verify in (False, True) if _VERIFY.value else (False,):
            seconds = _timed(lambda v=verify: lm.code(chunks(n), chunk_size, verify=v))
            path = "coded+verify" if verify else "coded"
            results.append({"path": path, "num_chunks": n, "seconds": seconds, **common})
    for r in results:
        r["mb_per_s"] = r["num_chunks"] * chunk_size / 1e6 / r["seconds"]
    return results


def bench_classical() -> list[dict]:
    results = []
    for name in _CLASSICAL.value:
        for chunking in ("chunked", "unchunked"):
            config = eval_config.get_config()
            config.update_from_flattened_dict(
                {
                    "dataset": _DATASET.value,
                    "compressors": name,
                    "chunking": chunking,
                    "num_chunks": _CLASSICAL_CHUNKS.value,
                    "workers": _WORKERS.value,
                    "progress": False,
                }
            )
            with tempfile.TemporaryDirectory() as out:
                start = time.perf_counter()
                (record,) = evaluation.evaluate(config, out)
                seconds = time.perf_counter() - start
            results.append(
                {
                    "path": f"{name} {chunking}",
                    "dataset": record["dataset"],
                    "num_chunks": record["num_chunks"],
                    "seconds": seconds,
                    "mb_per_s": record["raw_bytes"] / 1e6 / seconds,
                    "compute_mb_per_s": record["mb_per_s"],  # per core: summed compress time
                    "raw_rate": record["raw_rate"],
                    "workers": _WORKERS.value or os.cpu_count(),
                }
            )
    return results


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)
    print("command: python " + shlex.join(sys.argv))
    results = []
    if _NUM_CHUNKS.value:
        if _RUN.value:
            results += bench_model(_RUN.value)
        else:
            with tempfile.TemporaryDirectory() as workdir:
                results += bench_model(_random_run(workdir))
    if _CLASSICAL.value:
        results += bench_classical()
    for r in results:
        print(json.dumps(r))
        if _OUT.value:
            with open(_OUT.value, "a") as f:
                f.write(json.dumps(r) + "\n")
    print(f"{'path':<20} {'chunks':>7} {'seconds':>9} {'MB/s':>10} {'MB/s/core':>10}")
    for r in results:
        per_core = f"{r['compute_mb_per_s']:>10.3f}" if "compute_mb_per_s" in r else ""
        print(
            f"{r['path']:<20} {r['num_chunks']:>7} {r['seconds']:>9.2f} {r['mb_per_s']:>10.4f} "
            + per_core
        )


if __name__ == "__main__":
    app.run(main)
