r"""The accelerator check: correctness and speed of the whole pipeline in one command.

  python bench/device_check.py --out=DIR            # one GPU: at most ~8 minutes, compiles included
  python bench/device_check.py --out=DIR --small    # any CPU: tiny presets, about a minute

Writes `DIR/device_check.json` (the figures, keys below), `DIR/device_check.md` (a table of each
figure beside its goal and roofline) and `DIR/device_check.log` (each part's output). It needs
only the repository: the embedded `pydocs` corpus, random weights, and a model it trains itself
for a few hundred steps.

Parts, in this order, each in a child process of this script (`--part=NAME`) with a time budget,
so that a hung compile or an out-of-memory kill costs that part only; a part records what it
reached as it goes, and one that fails, times out or is skipped leaves its figures null and its
reason under `notes`:

* `model`: trains the round-trip model (3.2M, bf16, pydocs) a few hundred steps; writes a run.
* `compress_portable`, `compress_float`: `compress.compress_file` twice with the default
  (integer) path and the float path: speed, and the two streams must be equal (`deterministic`).
* `decompress_portable`, `decompress_float`: in another process, `compress.decompress_file`
  twice, compared with the input byte for byte and by sha256 (`roundtrip_exact`), speed, and a
  re-encode in that process must give the same stream.
* `attention`: cuDNN flash attention against XLA's, bf16, 3.2M: the largest log-prob difference
  of one forward (GPU only).
* `train_SIZE`: the bf16 train step at batch 128 x 2048: tokens/s, and the loss is finite.
* `eval`: `LanguageModelCompressor.log_loss` and `.code` on 2048-byte chunks: MB/s.
* `coder`: the range coder alone at 8,192 lanes (`bench/coder_throughput.py`): symbols/s.

The compression parts use a run they find (the `model` part's) or write one with random weights.
Lanes: `lm_coder.default_lanes` (from the device's memory), at most the chunks there are. The
model paths run in the run's compute dtype ('auto': bf16 on a GPU, float32 on a CPU). Rooflines:
training and log-loss from peak bf16 FLOP/s; compression, the coded path and the coder from
memory bandwidth (a decode step reads the whole filled KV prefix of every lane), read from NVML
(bus width x memory clock) where it answers, else from a table of device kinds; the JSON says
which. `--small` runs the same parts with the `test` preset, short contexts and few steps, two
parts at a time (`--jobs`; one at a time otherwise, so that timings do not overlap); the
portable and training parts share compiled programs through a persistent cache, the float
path's parts each compile their own (tests/device_check_test.py).

`--fail_part=NAME` (or `NAME:hang`) makes a part fail (or hang until its budget runs out), to
test the isolation; `--parts=A,B` runs some parts only (and the parts they need);
`--budgets=NAME=SECONDS,...` overrides budgets; `--time_limit_s` bounds the whole run.
"""

import argparse
import dataclasses
import datetime
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# The parent imports no JAX: only the children touch the device, one at a time.

PATHS = ("portable", "float")
REQUIRED = ("jax", "flax", "optax", "orbax.checkpoint", "ml_collections", "absl", "tqdm")
MIN_PART_S = 5.0  # a part is not started with less time left than this


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a run measures (FULL on a GPU, SMALL on a CPU with --small).

    Attributes:
      size: the preset of the attention, round-trip, compression and eval parts.
      train_sizes: presets timed by the train parts.
      train_batch: global batch of the timed train steps.
      seq_len: their sequence length (and the attention part's).
      model_steps: training steps of the round-trip model, at most.
      model_batch: its batch.
      input_bytes: pydocs bytes compressed (0: all), after one chunk of random bytes.
      attention_batch: rows of the attention comparison.
      max_rows: log-loss rows per device, at most.
      coder_lanes, coder_length: the range coder's batch.
      timed_s: what each timed loop aims at, in seconds.
      budgets: seconds per part (`train` for each train part).
      time_limit_s: the whole run's limit.
    """

    size: str
    train_sizes: tuple[str, ...]
    train_batch: int
    seq_len: int
    model_steps: int
    model_batch: int
    input_bytes: int
    attention_batch: int
    max_rows: int
    coder_lanes: int
    coder_length: int
    timed_s: float
    budgets: dict
    time_limit_s: float


FULL = Settings(
    size="3.2M",
    train_sizes=("200K", "800K", "3.2M"),
    train_batch=128,
    seq_len=2048,
    model_steps=300,
    model_batch=32,
    input_bytes=0,
    attention_batch=8,
    max_rows=512,
    coder_lanes=8192,
    coder_length=2048,
    timed_s=4.0,
    budgets={
        "model": 40,
        "compress_portable": 70,
        "decompress_portable": 40,
        "compress_float": 50,
        "decompress_float": 50,
        "attention": 25,
        "train": 30,
        "eval": 55,
        "coder": 30,
    },
    time_limit_s=450,
)
SMALL = Settings(
    size="test",
    train_sizes=("test",),
    train_batch=16,
    seq_len=64,
    model_steps=100,
    model_batch=16,
    input_bytes=8192,
    attention_batch=2,
    max_rows=16,
    coder_lanes=256,
    coder_length=128,
    timed_s=0.3,
    budgets=dict.fromkeys(FULL.budgets, 60),
    time_limit_s=300,
)

GOALS = {  # the goals on one H100 (BENCHMARKS.md)
    "train_tokens_per_second": {"200K": 15e6, "3.2M": 8e6},
    "eval_log_loss_mb_per_s": 40.0,
    "compress_mb_per_s": 2.0,
    "decompress_mb_per_s": 2.0,
    "coder_symbols_per_second": 20e6,
}

# Datasheet figures by device kind (first match wins), used where NVML does not answer.
_BANDWIDTH = (
    ("H200", 4.8e12),
    ("H100 PCIe", 2.0e12),
    ("H100 NVL", 3.9e12),
    ("H100", 3.35e12),
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12),
    ("L40S", 0.864e12),
    ("L4", 0.3e12),
)
_PEAK_BF16 = (  # dense bf16 FLOP/s
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
)


def part_names(settings: Settings) -> list[str]:
    """The parts of a run, in order: correctness first."""
    names = ["model"]
    for path in PATHS:
        names += [f"compress_{path}", f"decompress_{path}"]
    names.append("attention")
    names += [f"train_{size}" for size in reversed(settings.train_sizes)]
    return names + ["eval", "coder"]


# ---------------------------------------------------------------------------------------------
# Children: one part each.


class _Skip(Exception):
    """The part cannot run here (the message says why)."""


class Context:
    """A child's part: its settings, work directory, deadline and progress file."""

    def __init__(self, name: str, settings: Settings, work: str, deadline: float):
        self.name, self.settings, self.work, self.deadline = name, settings, work, deadline
        self.state = {"status": "running", "stage": "started", "values": {}}
        self.path = os.path.join(work, "parts", f"{name}.json")

    def time_left(self) -> float:
        return self.deadline - time.time()

    def report(self, stage: str, **values) -> None:
        """Records a stage reached and its values (written at once: a kill keeps them)."""
        self.state["stage"] = stage
        self.state["values"].update(values)
        self.write()

    def write(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.state, f, default=_plain)
        os.replace(tmp, self.path)


def _plain(x):
    """JSON for NumPy scalars."""
    return x.item() if hasattr(x, "item") else str(x)


def _device_info() -> dict:
    """The first device: kind, memory, bandwidth and peak bf16 rate (and where they come from)."""
    import jax

    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    info = {
        "kind": device.device_kind,
        "platform": device.platform,
        "count": jax.device_count(),
        "jax": jax.__version__,
        "memory_bytes": stats.get("bytes_limit") or _ram_bytes(),
    }
    bandwidth, source = _bandwidth(device)
    info.update(bandwidth_bytes_per_s=bandwidth, bandwidth_source=source)
    peak = _lookup(_PEAK_BF16, device.device_kind) if device.platform == "gpu" else None
    info.update(
        peak_bf16_flops=peak,
        peak_source=f"datasheet, by device kind ({device.device_kind})" if peak else "unknown",
    )
    return info


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _lookup(table, kind: str):
    return next((value for key, value in table if key in kind), None)


def _bandwidth(device) -> tuple[float | None, str]:
    """Memory bandwidth from NVML (bus width x max memory clock x 2), else the datasheet table."""
    if device.platform != "gpu":
        return None, f"unknown for a {device.platform} device"
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(getattr(device, "local_hardware_id", 0) or 0)
        bus_bits = pynvml.nvmlDeviceGetMemoryBusWidth(handle)
        clock_mhz = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM)
        bandwidth = bus_bits / 8 * clock_mhz * 1e6 * 2
        if 1e11 < bandwidth < 2e13:  # else a misreading: fall back to the table
            return bandwidth, f"NVML: {bus_bits}-bit bus x {clock_mhz} MHz x 2"
    except Exception:  # noqa: BLE001 - NVML absent or unsupported: the table
        pass
    bandwidth = _lookup(_BANDWIDTH, device.device_kind)
    source = f"datasheet, by device kind ({device.device_kind})" if bandwidth else "unknown"
    return bandwidth, source


def _share_compiles(work: str) -> None:
    """Lets parts share compiled programs through a persistent cache: the portable parts (the
    integer path's tables do not depend on how its program was compiled) and the training
    parts. The float path's parts compile afresh in each process, as a decompressor elsewhere
    would, which is what they check."""
    import jax

    jax.config.update("jax_compilation_cache_dir", os.path.join(work, "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _quiet() -> None:
    from absl import logging

    logging.set_verbosity(logging.ERROR)


def _model_config(size: str, context: int = 0):
    """(config, TransformerConfig) of a preset, optionally with another context."""
    from configs import default
    from models import transformer

    config = default.get_config(f"size={size}")
    if context:
        config.model.context_length = context
    return config, transformer.TransformerConfig.from_config(config.model, 256)


def _write_run(path: str, config, params, step: int) -> None:
    """Writes a run directory (config.json and a params-only checkpoint), atomically."""
    import orbax.checkpoint as ocp

    import runs
    from training import checkpoints

    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with open(os.path.join(tmp, runs.CONFIG_FILE), "w") as f:
        f.write(config.to_json(indent=2))
    with checkpoints.manager(tmp) as mngr:
        mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params})))
        mngr.wait_until_finished()
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def _ensure_run(ctx: Context) -> str:
    """The `model` part's run, or one with random weights written now (and noted)."""
    import jax

    from models import transformer
    from training import checkpoints

    path = os.path.join(ctx.work, "run")
    if os.path.isdir(path) and checkpoints.available_steps(path):
        return path
    config, cfg = _model_config(ctx.settings.size)
    _write_run(path, config, transformer.init_params(cfg, jax.random.key(0)), 0)
    ctx.report("wrote a run with random weights", note="random weights (no run from `model`)")
    return path


def _with_note(ctx: Context, values: dict, note: str) -> dict:
    """`values` with `note` added to the part's notes so far."""
    return {**values, "note": "; ".join(filter(None, [ctx.state["values"].get("note"), note]))}


def _run_model_config(run: str):
    import runs
    from models import transformer

    return transformer.TransformerConfig.from_config(runs.load_config(run).model, 256)


def _trainer(ctx: Context, size: str, seq_len: int = 0):
    """(config, bf16 model config, jitted train step, fresh state, mesh): the step train.py
    runs, with a warmup of a tenth of `model_steps` (the same program in `model` and `train_*`
    where the shapes agree, so the compile cache serves both)."""
    import dataclasses as dc

    from models import transformer
    from training import steps

    config, cfg = _model_config(size, seq_len)
    config.optim.warmup_steps = max(1, ctx.settings.model_steps // 10)
    cfg = dc.replace(cfg, dtype="bfloat16")
    tx = steps.make_optimizer(config.optim, ctx.settings.model_steps)
    mesh = steps.make_mesh()
    train_step = steps.make_train_step(transformer.Transformer(cfg), tx, mesh)
    return config, cfg, train_step, steps.init_state(cfg, tx, 0, mesh), mesh


def part_model(ctx: Context) -> dict:
    """Trains the round-trip model for up to `model_steps` bf16 steps on pydocs; writes a run."""
    import jax
    import numpy as np

    from data import batches, corpus
    from models import transformer
    from training import steps

    s = ctx.settings
    config, cfg, train_step, state, mesh = _trainer(ctx, s.size)
    tokens = np.frombuffer(corpus.pydocs_bytes(), np.uint8)
    save_margin = max(5.0, 0.2 * (ctx.deadline - time.time()))
    losses, step, start = [], 0, time.perf_counter()
    while step < s.model_steps:
        rows = batches.sample_windows(tokens, s.model_batch, cfg.context_length, 0, step)
        state, metrics = train_step(state, steps.to_global(rows, mesh))
        step += 1
        if step == 1 or step % 25 == 0 or step == s.model_steps:
            losses.append(float(metrics["loss"]) / math.log(2))
            ctx.report(f"step {step}", steps=step, bits_per_byte=losses[-1])
            if ctx.time_left() < save_margin:
                break
    seconds = time.perf_counter() - start
    _write_run(os.path.join(ctx.work, "run"), config, jax.device_get(state["params"]), step)
    values = {
        "steps": step,
        "first_bits_per_byte": losses[0],
        "bits_per_byte": losses[-1],
        "finite": bool(np.isfinite(losses).all()),
        "seconds": seconds,
        "num_params": transformer.num_params(state["params"]),
    }
    if step < s.model_steps:
        values["note"] = f"trained {step} of {s.model_steps} steps (time budget)"
    return values


def _input_file(ctx: Context, chunk: int) -> str:
    """One chunk of seeded random bytes (stored raw) then pydocs: the round trip's input."""
    import numpy as np

    from data import corpus

    path = os.path.join(ctx.work, f"input_{chunk}.bin")
    if not os.path.exists(path):
        data = np.random.default_rng(0).bytes(chunk)
        data += corpus.pydocs_bytes()[: ctx.settings.input_bytes or None]
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.replace(path + ".tmp", path)
    return path


def _device_memory_bytes() -> int:
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    return int(stats.get("bytes_limit") or _ram_bytes() or 1 << 30)


def _coder_lanes(cfg, chunk: int, portable: bool, num_chunks: int) -> int:
    """The coder's default lanes for this device (`lm_coder.default_lanes`: from its memory),
    at most the chunks there are."""
    from models import lm_coder

    return int(max(1, min(num_chunks, lm_coder.default_lanes(cfg, chunk, portable))))


def _kv_traffic(cfg, chunk: int, portable: bool) -> dict:
    """What one chunk's coding reads from the KV cache: positions summed over its steps (each
    block of steps reads the cache up to the block's end) and bytes per position (all layers,
    keys and values, from the cache the coder allocates)."""
    import jax

    from models import integer, lm_coder, transformer

    blocks = lm_coder.CoderShape(1, chunk, portable=portable).attention_blocks
    block_len = -(-chunk // blocks)
    positions = sum(
        (min(chunk, first + block_len) - first) * min(chunk, first + block_len)
        for first in range(0, chunk, block_len)
    )
    init = integer.init_cache if portable else transformer.init_cache
    cache = jax.eval_shape(lambda: init(cfg, 1, chunk))
    leaves = jax.tree_util.tree_leaves(cache)
    per_position = sum(x.size * x.dtype.itemsize for x in leaves) / chunk
    return {
        "chunk_bytes": chunk,
        "kv_positions_read_per_chunk": positions,
        "kv_bytes_per_position": per_position,
        "kv_cache_dtype": str(leaves[0].dtype),
        "attention_blocks": blocks,
        "num_layers": cfg.num_layers,
        "width": cfg.width,
    }


def _stream(ctx: Context, path: str, which: str) -> str:
    return os.path.join(ctx.work, f"stream_{path}_{which}.lmc")


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _same_file(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def part_compress(ctx: Context, path: str) -> dict:
    """compress_file twice with one path: the second call is timed, and its stream must equal
    the first's."""
    import compress

    run, portable = _ensure_run(ctx), path == "portable"
    cfg = _run_model_config(run)
    src = _input_file(ctx, cfg.context_length)
    num_chunks = -(-os.path.getsize(src) // cfg.context_length)
    lanes = _coder_lanes(cfg, cfg.context_length, portable, num_chunks)
    ctx.report("lanes chosen", lanes=lanes, **_kv_traffic(cfg, cfg.context_length, portable))
    first = compress.compress_file(run, src, _stream(ctx, path, "a"), lanes, portable=portable)
    ctx.report(
        "first encode (compile included)",
        first_seconds=first["seconds"],
        raw_bytes=first["raw_bytes"],
        compressed_bytes=first["compressed_bytes"],
        bits_per_byte=first["bits_per_byte"],
        ideal_bits_per_byte=first["ideal_bits"] / first["raw_bytes"],
        num_chunks=first["num_chunks"],
        raw_chunks=first["raw_chunks"],
        input_sha256=_sha256(src),
    )
    second = compress.compress_file(run, src, _stream(ctx, path, "b"), lanes, portable=portable)
    same = _same_file(_stream(ctx, path, "a"), _stream(ctx, path, "b"))
    values = {
        "mb_per_s": second["mb_per_s"],
        "seconds": second["seconds"],
        "deterministic": same,
        "stream_sha256": _sha256(_stream(ctx, path, "a")),
    }
    if first["raw_chunks"] == first["num_chunks"]:
        return _with_note(ctx, values, "every chunk was stored raw: the coder was not exercised")
    return values


def part_decompress(ctx: Context, path: str) -> dict:
    """decompress_file in this process (not the compressing one), twice (the second timed),
    each output compared with the input byte for byte and by sha256; then a re-encode here
    must give the compressing process's stream."""
    import compress
    from coding import container, range_coder

    stream, run = _stream(ctx, path, "a"), os.path.join(ctx.work, "run")
    if not os.path.exists(stream):
        raise _Skip(f"no stream: compress_{path} did not write one")
    src = _input_file(ctx, _run_model_config(run).context_length)
    want, values = _sha256(src), {}
    for which in ("first", "second"):
        if which == "second" and ctx.time_left() < values["first_seconds"] / 2 + 3:
            return _with_note(ctx, values, "no time for a second (timed) decode")
        out = os.path.join(ctx.work, f"restored_{path}_{which}")
        try:
            result = compress.decompress_file(run, stream, out, force=True)
        except (container.FormatError, range_coder.CorruptStreamError) as e:
            return {"exact": False, "error": f"{type(e).__name__}: {e}"}
        values["exact"] = values.get("exact", True) and _same_file(src, out)
        values["exact"] = values["exact"] and _sha256(out) == want
        values[f"{which}_seconds"] = result["seconds"]
        ctx.report(f"{which} decode", **values)
        if not values["exact"]:
            return values
    values["mb_per_s"] = result["mb_per_s"]
    ctx.report("second decode timed", **values)
    if ctx.time_left() > values["first_seconds"] + 5:
        with open(stream, "rb") as f:
            lanes = container.ContainerReader(f).header.group_chunks
        again = _stream(ctx, path, "c")
        compress.compress_file(run, src, again, lanes, portable=path == "portable", force=True)
        values["reencode_identical"] = _same_file(stream, again)
    return values


def _backend() -> str:
    import jax

    return jax.default_backend()


def part_attention(ctx: Context) -> dict:
    """cuDNN flash attention against XLA's in one bf16 forward: largest log-prob difference."""
    import dataclasses as dc

    import jax
    import numpy as np

    from data import batches, corpus
    from models import transformer
    from training import checkpoints

    if _backend() != "gpu":
        raise _Skip(f"cuDNN attention needs an NVIDIA GPU; the backend here is {_backend()}")
    s = ctx.settings
    run = os.path.join(ctx.work, "run")
    if os.path.isdir(run) and checkpoints.available_steps(run):
        cfg, params, _ = checkpoints.restore_params(run)
        weights = "the model part's"
    else:
        _, cfg = _model_config(s.size)
        params, weights = transformer.init_params(cfg, jax.random.key(0)), "random"
    tokens = np.frombuffer(corpus.pydocs_bytes(), np.uint8)
    rows = batches.sample_windows(tokens, s.attention_batch, cfg.context_length, 1, 0)
    log_probs = {}
    for impl in ("xla", "cudnn"):
        model = transformer.Transformer(dc.replace(cfg, dtype="bfloat16", attention=impl))
        log_probs[impl] = np.asarray(jax.jit(model.apply)({"params": params}, rows))
        ctx.report(f"{impl} forward", weights=weights)
    diff = np.abs(log_probs["cudnn"] - log_probs["xla"])
    nll = {k: -np.take_along_axis(v, rows[..., None], -1).mean() for k, v in log_probs.items()}
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "bits_per_byte_xla": float(nll["xla"] / math.log(2)),
        "bits_per_byte_cudnn": float(nll["cudnn"] / math.log(2)),
        "rows": list(rows.shape),
    }


def part_train(ctx: Context, size: str) -> dict:
    """A bf16 train step (training.steps, as train.py runs it) at `train_batch x seq_len`:
    tokens/s after two untimed steps, and whether the loss and gradient norm are finite."""
    import jax
    import numpy as np

    from models import transformer
    from training import steps

    s = ctx.settings
    _, cfg, train_step, state, mesh = _trainer(ctx, size, s.seq_len)
    rng = np.random.default_rng(0)
    shape = (s.train_batch, s.seq_len)
    batches = [steps.to_global(rng.integers(0, 256, shape, np.int32), mesh) for _ in range(2)]
    start = time.perf_counter()
    for i in range(2):
        state, metrics = train_step(state, batches[i])
        jax.block_until_ready(metrics)
        if i == 0:
            ctx.report("compiled", compile_seconds=time.perf_counter() - start)
    finite = bool(np.isfinite([float(metrics["loss"]), float(metrics["grad_norm"])]).all())
    ctx.report("warm", finite=finite)
    count, start = 0, time.perf_counter()
    while count < 200 and time.perf_counter() - start < s.timed_s and ctx.time_left() > 3:
        for _ in range(5):
            state, metrics = train_step(state, batches[count % 2])
            count += 1
        jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start
    finite = finite and bool(np.isfinite(float(metrics["loss"])))
    num_params = transformer.num_params(state["params"])
    return {
        "tokens_per_second": count * s.train_batch * s.seq_len / seconds,
        "seconds_per_step": seconds / count,
        "steps": count,
        "batch": list(shape),
        "finite": finite,
        "num_params": num_params,
        # matmuls: 6 flops per parameter and token; causal attention: 6 * layers * T * d
        "flops_per_token": 6 * num_params + 6 * cfg.num_layers * s.seq_len * cfg.width,
    }


def _corpus_chunks(chunk: int):
    """n -> an iterator over n pydocs chunks of `chunk` bytes, cycling through the corpus."""
    from data import sources

    base = list(sources.get_source("pydocs").chunks(0, chunk))
    return lambda n: (base[i % len(base)] for i in range(n))


def _timed_passes(fn, target_s: float, ctx: Context) -> tuple[int, float]:
    """Calls `fn()` (returning units done) until `target_s` have passed, or until another call
    might not fit before the deadline; returns (units, seconds)."""
    units, start = 0, time.perf_counter()
    while True:
        before = time.perf_counter()
        units += fn()
        now = time.perf_counter()
        if now - start >= target_s or ctx.time_left() < 2 * (now - before) + 3:
            return units, now - start


def part_eval(ctx: Context) -> dict:
    """eval_compress's model paths on pydocs chunks of the model's context, in the run's compute
    dtype: the parallel log-loss pass and the coded path (float tables, no verification), MB/s
    after a warm-up."""
    from compressors import language_model
    from models import lm_coder

    s, run = ctx.settings, _ensure_run(ctx)
    cfg = _run_model_config(run)
    chunk = cfg.context_length
    # Inference activations, about 13 KB per token for the 3.2M model in bf16: an eighth of
    # the device's memory, at most max_rows.
    per_row = chunk * (40 * cfg.width + 12 * cfg.vocab_size)
    rows = int(max(1, min(s.max_rows, _device_memory_bytes() // 8 // per_row)))
    lanes = _coder_lanes(cfg, chunk, False, lm_coder.MAX_LANES)
    lm = language_model.LanguageModelCompressor(run, chunks_per_device=rows, lanes=lanes)
    chunks = _corpus_chunks(chunk)
    block = rows * len(lm.devices)
    lm.log_loss(chunks(block), chunk)  # compile
    n, seconds = _timed_passes(lambda: len(lm.log_loss(chunks(4 * block), chunk)), s.timed_s, ctx)
    ctx.report("log-loss timed", rows=rows, log_loss_mb_per_s=n * chunk / 1e6 / seconds)
    lm.code(chunks(lanes), chunk)  # compile
    n, seconds = _timed_passes(lambda: len(lm.code(chunks(lanes), chunk)[0]), s.timed_s, ctx)
    traffic = _kv_traffic(lm.model_cfg, chunk, False)
    flops = 2 * lm.num_params + 2 * cfg.num_layers * chunk * cfg.width
    return {
        "lanes": lanes,
        "coded_mb_per_s": n * chunk / 1e6 / seconds,
        "log_loss_flops_per_byte": flops,
        **traffic,
    }


def part_coder(ctx: Context) -> dict:
    """The range coder alone (bench/coder_throughput.py's JAX encoder and decode scan)."""
    from bench import coder_throughput

    s, vocab = ctx.settings, 256
    tables, ids, symbols = coder_throughput.make_inputs(s.coder_lanes, s.coder_length, vocab, 64)
    ctx.report("inputs made", lanes=s.coder_lanes, length=s.coder_length)
    encode_s, decode_s, _, _ = coder_throughput.bench_jax(tables, ids, symbols, repeats=3)
    return {
        "encode_symbols_per_second": symbols.size / encode_s,
        "decode_symbols_per_second": symbols.size / decode_s,
        "table_bytes": 4 * vocab,
    }


def _part_function(name: str):
    if name.startswith("train_"):
        return lambda ctx: part_train(ctx, name.removeprefix("train_"))
    for prefix, fn in (("compress_", part_compress), ("decompress_", part_decompress)):
        if name.startswith(prefix) and name.removeprefix(prefix) in PATHS:
            return lambda ctx: fn(ctx, name.removeprefix(prefix))
    fns = {"model": part_model, "attention": part_attention, "eval": part_eval}
    return {**fns, "coder": part_coder}[name]


def run_part(args) -> int:
    """A child's main: runs one part, recording its state in WORK/parts/NAME.json."""
    settings = SMALL if args.small else FULL
    ctx = Context(args.part, settings, args.workdir, args.deadline)
    ctx.write()
    status = 0
    try:
        if args.fail == "raise":
            raise RuntimeError("forced failure (--fail_part)")
        if args.fail == "hang":
            time.sleep(10 * 24 * 3600)
        _quiet()
        if args.part == "model" or args.part.startswith("train_") or "_portable" in args.part:
            _share_compiles(args.workdir)
        ctx.report("started", device_info=_device_info())
        values = _part_function(args.part)(ctx)
        ctx.state["values"].update(values)
        ctx.state.update(status="ok", stage="done")
    except _Skip as e:
        ctx.state.update(status="skipped", reason=str(e))
    except Exception as e:  # noqa: BLE001 - recorded for the parent, which goes on
        traceback.print_exc()
        ctx.state.update(status="failed", reason=f"{type(e).__name__}: {e}".splitlines()[0])
        status = 1
    ctx.write()
    return status


# ---------------------------------------------------------------------------------------------
# The parent: runs the parts, collects their JSON, writes the report.


@dataclasses.dataclass
class _Child:
    """A part running in its own process session."""

    name: str
    process: subprocess.Popen
    start: float
    budget: float
    log_path: str


def _start_child(name: str, args, work: str, budget: float) -> _Child:
    path = os.path.join(work, "parts", f"{name}.json")
    if os.path.exists(path):
        os.remove(path)
    cmd = [sys.executable, os.path.abspath(__file__), f"--part={name}", f"--workdir={work}"]
    cmd += [f"--deadline={time.time() + budget}"] + (["--small"] if args.small else [])
    fail = dict(f.partition(":")[::2] for f in args.fail_part)
    if name in fail:
        cmd.append(f"--fail={fail[name] or 'raise'}")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.jobs > 1:  # each child would take 75% of a GPU's memory
        env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.75 / args.jobs:.2f}")
    log_path = os.path.join(work, "parts", f"{name}.log")
    with open(log_path, "w") as out:
        process = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True
        )
    return _Child(name, process, time.time(), budget, log_path)


def _finish_child(child: _Child, work: str, log) -> dict:
    """Collects a finished child's state, or kills its whole session once past its budget."""
    timed_out = child.process.poll() is None
    if timed_out:
        os.killpg(child.process.pid, signal.SIGKILL)
    code, seconds = child.process.wait(), time.time() - child.start
    with open(child.log_path, errors="replace") as f:
        text = f.read()
    log.write(f"===== {child.name}: exit {code}, {seconds:.1f} s =====\n{text[-20000:]}\n")
    log.flush()
    state = {"status": None, "stage": "not started", "values": {}}
    try:
        with open(os.path.join(work, "parts", f"{child.name}.json")) as f:
            state = json.load(f)
    except (OSError, ValueError):
        pass
    state.update(seconds=seconds, budget_s=child.budget, exit_code=code)
    if timed_out:
        state["status"] = "timed out"
        state["reason"] = (
            f"timed out after {child.budget:.0f} s (its budget) at stage {state['stage']!r}"
        )
    elif state["status"] not in ("ok", "skipped", "failed"):
        lines = [line for line in text.splitlines() if line.strip()]
        why = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        why += " (out of memory?)" if code == -signal.SIGKILL else ""
        state["status"] = "failed"
        state["reason"] = f"{why} at stage {state['stage']!r}" + (
            f": {lines[-1][:300]}" if lines else ""
        )
    return state


def _dependencies(name: str) -> tuple[str, ...]:
    """Parts that must have ended (however) before `name` starts."""
    if name.startswith("decompress_"):
        return ("compress_" + name.removeprefix("decompress_"),)
    return () if name in ("model", "coder") else ("model",)


def run_parts(names: list[str], args, work: str, budgets: dict, limit_s: float, log) -> dict:
    """Runs the parts, at most `args.jobs` at a time, each after its dependencies, in order;
    returns each part's state."""
    started, pending, running, states = time.time(), list(names), [], {}
    while pending or running:
        for name in list(pending):
            if len(running) >= args.jobs:
                break
            if any(d in pending or d in [c.name for c in running] for d in _dependencies(name)):
                continue
            pending.remove(name)
            left = started + limit_s - time.time()
            if left < MIN_PART_S:
                states[name] = {"status": "skipped", "reason": f"the run's {limit_s:.0f} s limit"}
                continue
            budget = min(budgets.get(name, budgets["train"]), left)
            print(f"device_check: {name} (budget {budget:.0f} s) ...", flush=True)
            try:
                running.append(_start_child(name, args, work, budget))
            except OSError as e:
                states[name] = {"status": "failed", "reason": f"could not start: {e}"}
        time.sleep(0.1)
        for child in list(running):
            if child.process.poll() is not None or time.time() > child.start + child.budget:
                running.remove(child)
                states[child.name] = _finish_child(child, work, log)
                print(f"device_check: {child.name}: {states[child.name]['status']}", flush=True)
    return {name: states[name] for name in names}


def _combine(checks: list) -> bool | None:
    """False if any check failed, True if all passed, None if some did not run."""
    if any(c is False for c in checks):
        return False
    return True if checks and all(c is True for c in checks) else None


def _roofline_mb_per_s(values: dict, bandwidth: float | None, itemsize: float | None = None):
    """Chunk bytes over the time to read its KV traffic at `bandwidth`; `itemsize` replaces the
    cache's bytes per position with a plain cache of that element size."""
    if not bandwidth or not values.get("kv_positions_read_per_chunk"):
        return None
    per_position = values["kv_bytes_per_position"]
    if itemsize:
        per_position = 2 * values["num_layers"] * values["width"] * itemsize
    seconds = values["kv_positions_read_per_chunk"] * per_position / bandwidth
    return values["chunk_bytes"] / seconds / 1e6


def assemble(states: dict, settings: Settings, args, started: float) -> dict:
    """The report: the documented keys (BENCHMARKS.md), rooflines, goals, settings, parts."""
    values = {name: state.get("values", {}) for name, state in states.items()}

    def get(part, key):
        return values.get(part, {}).get(key)

    info = next((v["device_info"] for v in values.values() if v.get("device_info")), {})
    notes = {}
    for name, state in states.items():
        if state.get("status") != "ok":
            notes[name] = f"{state.get('status')}: {state.get('reason', '')}"
        elif get(name, "note"):
            notes[name] = get(name, "note")
    roundtrip = {
        p: {
            "exact": get(f"decompress_{p}", "exact"),
            "deterministic": get(f"compress_{p}", "deterministic"),
            "reencode_identical": get(f"decompress_{p}", "reencode_identical"),
            **{
                step: {k: v for k, v in values.get(f"{step}_{p}", {}).items() if k != "device_info"}
                for step in ("compress", "decompress")
            },
        }
        for p in PATHS
    }
    train = {s: get(f"train_{s}", "tokens_per_second") for s in settings.train_sizes}
    finite = [get(f"train_{s}", "finite") for s in settings.train_sizes] + [get("model", "finite")]
    report = {
        "device": f"{info.get('kind', 'unknown')} ({info.get('platform', 'unknown')})",
        "jax_version": info.get("jax") or _version("jax"),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python " + shlex.join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
        "mode": "small: CPU, tiny presets" if args.small else "full",
        "roundtrip_exact": _combine([get(f"decompress_{p}", "exact") for p in PATHS]),
        "deterministic": _combine(
            [get(f"compress_{p}", "deterministic") for p in PATHS]
            + [x for p in PATHS if (x := get(f"decompress_{p}", "reencode_identical")) is not None]
        ),
        "attention_max_abs_diff": get("attention", "max_abs_diff"),
        "train_step_finite": _combine([x for x in finite if x is not None]),
        "train_tokens_per_second": train,
        "eval_log_loss_mb_per_s": get("eval", "log_loss_mb_per_s"),
        "eval_coded_mb_per_s": get("eval", "coded_mb_per_s"),
        "compress_mb_per_s": get("compress_portable", "mb_per_s"),
        "decompress_mb_per_s": get("decompress_portable", "mb_per_s"),
        "compress_float_mb_per_s": get("compress_float", "mb_per_s"),
        "decompress_float_mb_per_s": get("decompress_float", "mb_per_s"),
        "coder_symbols_per_second": _min(
            get("coder", "encode_symbols_per_second"), get("coder", "decode_symbols_per_second")
        ),
        "coder_encode_symbols_per_second": get("coder", "encode_symbols_per_second"),
        "coder_decode_symbols_per_second": get("coder", "decode_symbols_per_second"),
        "notes": notes,
    }
    for part in ("model", "eval", "coder"):
        report[part] = {k: v for k, v in values.get(part, {}).items() if k != "device_info"}
    report["rooflines"] = _rooflines(values, info, settings)
    report["goals"] = GOALS
    report["roundtrip"] = roundtrip
    report["device_info"] = info
    report["versions"] = {p: _version(p) for p in ("jax", "jaxlib", "flax", "optax", "numpy")}
    report["host"] = {"cpus": os.cpu_count(), "machine": platform.machine()}
    report["settings"] = dataclasses.asdict(settings)
    report["parts"] = {
        name: {k: state.get(k) for k in ("status", "stage", "seconds", "budget_s", "reason")}
        for name, state in states.items()
    }
    report["wall_seconds"] = time.time() - started
    return report


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _min(*xs):
    xs = [x for x in xs if x is not None]
    return min(xs) if len(xs) == 2 else None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _rooflines(values: dict, info: dict, settings: Settings) -> dict:
    """Each speed's bound on this device, with its basis."""
    bandwidth, peak = info.get("bandwidth_bytes_per_s"), info.get("peak_bf16_flops")
    bw_src, peak_src = info.get("bandwidth_source", "unknown"), info.get("peak_source", "unknown")
    out = {}
    for size in settings.train_sizes:
        flops = values.get(f"train_{size}", {}).get("flops_per_token")
        out[f"train_{size}"] = {
            "value": peak / flops if peak and flops else None,
            "unit": "tokens/s",
            "basis": f"peak bf16 FLOP/s ({peak_src}) / (6 N + 6 L T d) FLOP per token",
        }
    flops = values.get("eval", {}).get("log_loss_flops_per_byte")
    out["eval_log_loss"] = {
        "value": peak / flops / 1e6 if peak and flops else None,
        "unit": "MB/s",
        "basis": f"peak bf16 FLOP/s ({peak_src}) / (2 N + 2 L T d) FLOP per byte",
    }
    kv_basis = (
        f"memory bandwidth ({bw_src}) / KV-cache bytes a chunk's decode steps read (each "
        "step reads the filled prefix of its attention block, all layers, keys and values)"
    )
    for key, part in (
        ("eval_coded", "eval"),
        ("compress_portable", "compress_portable"),
        ("compress_float", "compress_float"),
    ):
        v = values.get(part, {})
        out[key] = {
            "value": _roofline_mb_per_s(v, bandwidth),
            "unit": "MB/s",
            "basis": kv_basis + f" ({v.get('kv_cache_dtype', '?')} cache)",
        }
        if key == "compress_float":
            out[key]["float32_cache"] = _roofline_mb_per_s(v, bandwidth, 4)
            out[key]["bfloat16_cache"] = _roofline_mb_per_s(v, bandwidth, 2)
    table = values.get("coder", {}).get("table_bytes")
    out["coder"] = {
        "value": bandwidth / (table + 8) if bandwidth and table else None,
        "unit": "symbols/s",
        "basis": f"memory bandwidth ({bw_src}) / (its frequency table + 8 bytes) per decoded "
        "symbol: loose, the coder is sequential per lane",
    }
    return out


# Markdown ----------------------------------------------------------------------------------


def _num(x, unit: str = "", digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "**NO**"
    for scale, prefix in ((1e12, " T"), (1e9, " G"), (1e6, " M"), (1e3, " K")):
        if abs(x) >= scale and unit in ("tokens/s", "symbols/s", "B/s", "FLOP/s"):
            return f"{x / scale:.{digits}g}{prefix}{unit}"
    return f"{x:.{digits}g} {unit}".strip()


def _details(r: dict) -> str:
    """What the figures were measured on, in a sentence each."""
    m, rt, c = r["model"], r["roundtrip"], r["coder"]
    size = r["settings"]["size"]
    out = [
        f"Model: {size}, {m['steps']} bf16 steps on pydocs, {_num(m['bits_per_byte'])} bits/byte "
        "training loss."
        if m.get("steps")
        else f"Model: {size}, random weights (no run from the `model` part)."
    ]
    for path in PATHS:
        v = rt[path]["compress"]
        if v.get("raw_bytes"):
            out.append(
                f"Round trip, {path}: {v['raw_bytes']:,} bytes (a random chunk, then pydocs) to "
                f"{v['compressed_bytes']:,} ({_num(v['bits_per_byte'])} bits/byte, the model's "
                f"log-loss {_num(v['ideal_bits_per_byte'])}), {v['num_chunks']} chunks of "
                f"{v['chunk_bytes']} bytes in groups of {v['lanes']} lanes, "
                f"{v['kv_cache_dtype']} KV cache."
            )
    if r["eval"].get("lanes"):
        out.append(f"Eval: {r['eval']['lanes']} coder lanes.")
    if c.get("lanes"):
        out.append(
            f"Coder: {c['lanes']:,} lanes x {c['length']:,} symbols, encode "
            f"{_num(c.get('encode_symbols_per_second'), 'symbols/s')}, decode "
            f"{_num(c.get('decode_symbols_per_second'), 'symbols/s')}."
        )
    return " ".join(out)


def markdown(report: dict) -> str:
    """The report as a Markdown table: each figure beside its goal and roofline."""
    r, roof, rt = report, report["rooflines"], report["roundtrip"]
    small = r["mode"].startswith("small")
    rows = [
        ("round trip exact, portable (default)", _num(rt["portable"].get("exact")), "exact", "-"),
        ("round trip exact, float (`--noportable`)", _num(rt["float"].get("exact")), "exact", "-"),
        ("two encodes identical (deterministic)", _num(r["deterministic"]), "yes", "-"),
        ("bf16 train step finite", _num(r["train_step_finite"]), "yes", "-"),
        (
            "cuDNN vs XLA attention, max abs log-prob diff (bf16)",
            _num(r["attention_max_abs_diff"]),
            "bf16 rounding",
            "-",
        ),
    ]
    for size, value in r["train_tokens_per_second"].items():
        goal = GOALS["train_tokens_per_second"].get(size)
        rows.append(
            (
                f"train {size}, tokens/s",
                _num(value, "tokens/s"),
                f">= {_num(goal, 'tokens/s')}" if goal else "-",
                _num(roof.get(f"train_{size}", {}).get("value"), "tokens/s"),
            )
        )
    speed_rows = (
        ("eval, log-loss", "eval_log_loss_mb_per_s", ">= 40 MB/s", "eval_log_loss"),
        ("eval, coded", "eval_coded_mb_per_s", "bounded by the coder", "eval_coded"),
        ("compress, portable", "compress_mb_per_s", ">= 2 MB/s", "compress_portable"),
        ("decompress, portable", "decompress_mb_per_s", ">= 2 MB/s", "compress_portable"),
        ("compress, float", "compress_float_mb_per_s", ">= 2 MB/s", "compress_float"),
        ("decompress, float", "decompress_float_mb_per_s", ">= 2 MB/s", "compress_float"),
    )
    for label, key, goal, roof_key in speed_rows:
        rows.append((label, _num(r[key], "MB/s"), goal, _num(roof[roof_key]["value"], "MB/s")))
    rows.append(
        (
            "range coder alone (min of encode, decode)",
            _num(r["coder_symbols_per_second"], "symbols/s"),
            ">= 20 Msymbols/s",
            _num(roof["coder"]["value"], "symbols/s"),
        )
    )
    lines = [
        f"Accelerator check, {r['date']}: {r['device']}, jax {r['jax_version']}"
        + (" (CPU, tiny presets: NOT comparable to the goals)" if small else ""),
        "",
        f"`{r['command']}` ({r['wall_seconds']:.0f} s)",
        "",
        "| check | result | goal | roofline |",
        "|---|---:|---|---:|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
        "",
        f"Rooflines: bandwidth {_num(r['device_info'].get('bandwidth_bytes_per_s'), 'B/s')} "
        f"({r['device_info'].get('bandwidth_source', 'unknown')}), peak bf16 "
        f"{_num(r['device_info'].get('peak_bf16_flops'), 'FLOP/s')} "
        f"({r['device_info'].get('peak_source', 'unknown')}). Float path with a float32 cache: "
        f"{_num(roof['compress_float'].get('float32_cache'), 'MB/s')}, bf16 cache: "
        f"{_num(roof['compress_float'].get('bfloat16_cache'), 'MB/s')}.",
        "",
        _details(r),
    ]
    if r["notes"]:
        lines += ["", "Notes:", *(f"* `{k}`: {v}" for k, v in r["notes"].items())]
    return "\n".join(lines) + "\n"


def run_all(args) -> int:
    """The parent's main: every part in turn, then the JSON and Markdown reports."""
    started = time.time()
    settings = SMALL if args.small else FULL
    budgets = dict(settings.budgets)
    for item in filter(None, args.budgets.split(",")):
        key, _, seconds = item.partition("=")
        budgets[key] = float(seconds)
    settings = dataclasses.replace(settings, budgets=budgets)
    time_limit = args.time_limit_s or settings.time_limit_s
    os.makedirs(args.out, exist_ok=True)
    work = args.workdir or tempfile.mkdtemp(prefix="device_check_")
    os.makedirs(os.path.join(work, "parts"), exist_ok=True)
    names = part_names(settings)
    if args.parts:  # and what they need: a fresh machine has no run or stream yet
        wanted = set(args.parts.split(","))
        while extra := {d for n in wanted for d in _dependencies(n)} - wanted:
            wanted |= extra
        names = [n for n in names if n in wanted]
    with open(os.path.join(args.out, "device_check.log"), "w") as log:
        states = run_parts(names, args, work, budgets, time_limit, log)
    try:
        report = assemble(states, settings, args, started)
    except Exception as e:  # noqa: BLE001 - a report of the raw states rather than none
        report = {"notes": {"report": f"{type(e).__name__}: {e}"}, "parts": states}
    missing = [m for m in REQUIRED if not _importable(m)]
    if missing:  # every part fails then: say why once
        report["notes"]["setup"] = (
            f"missing packages: {', '.join(missing)} (carry them as wheels: README, Notes)"
        )
    with open(os.path.join(args.out, "device_check.json"), "w") as f:
        json.dump(report, f, indent=2, default=_plain)
    try:
        text = markdown(report)
    except Exception as e:  # noqa: BLE001 - the JSON is written; say why the table is not
        text = f"No table: {type(e).__name__}: {e}; see device_check.json.\n"
    with open(os.path.join(args.out, "device_check.md"), "w") as f:
        f.write(text)
    print(text)
    if not args.workdir and not args.keep_workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="directory for device_check.json / .md / .log")
    parser.add_argument("--small", action="store_true", help="tiny presets, for a CPU")
    parser.add_argument("--parts", default="", help="comma-separated parts (default: all)")
    parser.add_argument("--budgets", default="", help="NAME=SECONDS,... ('train' for all)")
    parser.add_argument("--time_limit_s", type=float, default=0, help="0: the mode's default")
    parser.add_argument("--fail_part", action="append", default=[], help="NAME or NAME:hang")
    parser.add_argument("--jobs", type=int, default=0, help="parts at a time (0: 1, 2 --small)")
    parser.add_argument("--workdir", default="", help="work files (default: a temporary dir)")
    parser.add_argument("--keep_workdir", action="store_true")
    parser.add_argument("--part", help=argparse.SUPPRESS)  # a child's part
    parser.add_argument("--deadline", type=float, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--fail", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.part:
        return run_part(args)
    if not args.out:
        parser.error("--out is required")
    args.jobs = args.jobs or (2 if args.small else 1)
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
