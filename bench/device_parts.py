"""The device check's parts: what each measures, run in a child process by bench/device_check.py.

Each part takes a `part_runner.Context` (its settings, work directory and deadline), records
what it reaches as it goes, and returns its figures; bench/device_check.py lists the parts and
what they check. They import JAX and the project's modules only when they run.
"""

import hashlib
import math
import os
import shutil
import time

from bench import device_report, part_runner
from bench.device_report import PATHS


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


def _ensure_run(ctx: part_runner.Context) -> str:
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


def _with_note(ctx: part_runner.Context, values: dict, note: str) -> dict:
    """`values` with `note` added to the part's notes so far."""
    return {**values, "note": "; ".join(filter(None, [ctx.state["values"].get("note"), note]))}


def _run_model_config(run: str):
    import runs
    from models import transformer

    return transformer.TransformerConfig.from_config(runs.load_config(run).model, 256)


def _trainer(ctx: part_runner.Context, size: str, seq_len: int = 0):
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


def part_model(ctx: part_runner.Context) -> dict:
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


def _input_file(ctx: part_runner.Context, chunk: int) -> str:
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
    return int(stats.get("bytes_limit") or device_report.ram_bytes() or 1 << 30)


def _net(cfg, path: str):
    """The coder's model on a coding path: 'portable' (the integer twin) or 'float'."""
    from models import coding_model

    if path == "portable":
        return coding_model.IntegerTransformer(cfg)
    return coding_model.FloatTransformer(cfg)


def _coder_lanes(net, chunk: int, num_chunks: int) -> int:
    """The coder's default lanes for this device (`lm_coder.default_lanes`: from its memory),
    at most the chunks there are."""
    from models import lm_coder

    return int(max(1, min(num_chunks, lm_coder.default_lanes(net, chunk))))


def _kv_traffic(net, chunk: int) -> dict:
    """What one chunk's coding reads from the KV cache: positions summed over its steps (each
    block of steps reads the cache up to the block's end) and bytes per position (all layers,
    keys and values, from the cache the coder allocates)."""
    import jax

    cfg = net.config
    blocks = net.attention_blocks(chunk)
    block_len = -(-chunk // blocks)
    positions = sum(
        (min(chunk, first + block_len) - first) * min(chunk, first + block_len)
        for first in range(0, chunk, block_len)
    )
    cache = jax.eval_shape(lambda: net.init_cache(None, 1, chunk, ""))
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


def _stream(ctx: part_runner.Context, path: str, which: str) -> str:
    return os.path.join(ctx.work, f"stream_{path}_{which}.lmc")


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _same_file(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def part_compress(ctx: part_runner.Context, path: str) -> dict:
    """compress_file twice with one path: the second call is timed, and its stream must equal
    the first's."""
    from compressors import lm_stream

    run, portable = _ensure_run(ctx), path == "portable"
    cfg = _run_model_config(run)
    src = _input_file(ctx, cfg.context_length)
    num_chunks = -(-os.path.getsize(src) // cfg.context_length)
    net = _net(cfg, path)
    lanes = _coder_lanes(net, cfg.context_length, num_chunks)
    ctx.report("lanes chosen", lanes=lanes, **_kv_traffic(net, cfg.context_length))
    first = lm_stream.compress_file(run, src, _stream(ctx, path, "a"), lanes, portable=portable)
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
    second = lm_stream.compress_file(run, src, _stream(ctx, path, "b"), lanes, portable=portable)
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


def part_decompress(ctx: part_runner.Context, path: str) -> dict:
    """decompress_file in this process (not the compressing one), twice (the second timed),
    each output compared with the input byte for byte and by sha256; then a re-encode here
    must give the compressing process's stream."""
    from coding import container, range_coder
    from compressors import lm_stream

    stream, run = _stream(ctx, path, "a"), os.path.join(ctx.work, "run")
    if not os.path.exists(stream):
        raise part_runner.Skip(f"no stream: compress_{path} did not write one")
    src = _input_file(ctx, _run_model_config(run).context_length)
    want, values = _sha256(src), {}
    for which in ("first", "second"):
        if which == "second" and ctx.time_left() < values["first_seconds"] / 2 + 3:
            return _with_note(ctx, values, "no time for a second (timed) decode")
        out = os.path.join(ctx.work, f"restored_{path}_{which}")
        try:
            result = lm_stream.decompress_file(run, stream, out, force=True)
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
        lm_stream.compress_file(run, src, again, lanes, portable=path == "portable", force=True)
        values["reencode_identical"] = _same_file(stream, again)
    return values


def part_online(ctx: part_runner.Context) -> dict:
    """compress.py's online coder (`online_model`, `online_recipe`) on the first `online_bytes`
    of pydocs, then its decompression in this process: KB/s each way (compiles included, as
    one command runs it), bits per byte, and the bytes compared."""
    from compressors import lm_stream
    from data import corpus

    s = ctx.settings
    src, stream = os.path.join(ctx.work, "online_in"), os.path.join(ctx.work, "online.lmc")
    out = os.path.join(ctx.work, "online_out")
    with open(src, "wb") as f:
        f.write(corpus.pydocs_bytes()[: s.online_bytes])
    coded = lm_stream.compress_file(s.online_model, src, stream, recipe=s.online_recipe)
    values = {
        "model": s.online_model,
        "recipe": s.online_recipe,
        "raw_bytes": coded["raw_bytes"],
        "compressed_bytes": coded["compressed_bytes"],
        "bits_per_byte": coded["bits_per_byte"],
        "compress_kb_per_s": coded["raw_bytes"] / 1e3 / coded["seconds"],
    }
    ctx.report("compressed", **values)
    decoded = lm_stream.decompress_file(None, stream, out)
    values["decompress_kb_per_s"] = decoded["raw_bytes"] / 1e3 / decoded["seconds"]
    values["exact"] = _same_file(src, out)
    return values


def _backend() -> str:
    import jax

    return jax.default_backend()


def part_attention(ctx: part_runner.Context) -> dict:
    """cuDNN flash attention against XLA's in one bf16 forward: largest log-prob difference."""
    import dataclasses as dc

    import jax
    import numpy as np

    from data import batches, corpus
    from models import transformer
    from training import checkpoints

    if _backend() != "gpu":
        raise part_runner.Skip(
            f"cuDNN attention needs an NVIDIA GPU; the backend here is {_backend()}"
        )
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


def part_train(ctx: part_runner.Context, size: str) -> dict:
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


def _timed_passes(fn, target_s: float, ctx: part_runner.Context) -> tuple[int, float]:
    """Calls `fn()` (returning units done) until `target_s` have passed, or until another call
    might not fit before the deadline; returns (units, seconds)."""
    units, start = 0, time.perf_counter()
    while True:
        before = time.perf_counter()
        units += fn()
        now = time.perf_counter()
        if now - start >= target_s or ctx.time_left() < 2 * (now - before) + 3:
            return units, now - start


def part_eval(ctx: part_runner.Context) -> dict:
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
    net = _net(cfg, "float")
    lanes = _coder_lanes(net, chunk, lm_coder.MAX_LANES)
    # The coder runs in the attention blocks compress.py gives this chunk (the blocks the KV
    # traffic below counts): 8 for 2,048 bytes, as eval_compress's default; 1 for --small's 64,
    # one program to compile instead of eight.
    lm = language_model.LanguageModelCompressor(
        run,
        chunks_per_device=rows,
        lanes=lanes,
        attention_blocks=net.attention_blocks(chunk),
    )
    chunks = _corpus_chunks(chunk)
    block = rows * len(lm.devices)
    lm.log_loss(chunks(block), chunk)  # compile
    n, seconds = _timed_passes(lambda: len(lm.log_loss(chunks(4 * block), chunk)), s.timed_s, ctx)
    ctx.report("log-loss timed", rows=rows, log_loss_mb_per_s=n * chunk / 1e6 / seconds)
    lm.code(chunks(lanes), chunk)  # compile
    n, seconds = _timed_passes(lambda: len(lm.code(chunks(lanes), chunk)[0]), s.timed_s, ctx)
    traffic = _kv_traffic(_net(lm.model_cfg, "float"), chunk)
    flops = 2 * lm.num_params + 2 * cfg.num_layers * chunk * cfg.width
    return {
        "lanes": lanes,
        "coded_mb_per_s": n * chunk / 1e6 / seconds,
        "log_loss_flops_per_byte": flops,
        **traffic,
    }


def part_coder(ctx: part_runner.Context) -> dict:
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


def run(ctx: part_runner.Context) -> dict:
    """Runs the part `ctx.name` in this process; returns its values.

    Raises:
      part_runner.Skip: the part cannot run here.
    """
    name = ctx.name
    _quiet()
    if name == "model" or name.startswith("train_") or "_portable" in name:
        _share_compiles(ctx.work)
    ctx.report("started", device_info=device_report.device_info())
    return _part_function(name)(ctx)


def _part_function(name: str):
    if name.startswith("train_"):
        return lambda ctx: part_train(ctx, name.removeprefix("train_"))
    for prefix, fn in (("compress_", part_compress), ("decompress_", part_decompress)):
        if name.startswith(prefix) and name.removeprefix(prefix) in PATHS:
            return lambda ctx: fn(ctx, name.removeprefix(prefix))
    parts = {
        "model": part_model,
        "online": part_online,
        "attention": part_attention,
        "eval": part_eval,
        "coder": part_coder,
    }
    return parts[name]
