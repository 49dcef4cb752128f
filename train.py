r"""Trains a byte-level Transformer language model.

  python train.py --config=configs/default.py:size=test --workdir=/tmp/run
  python train.py --config=configs/default.py:size=3.2M,dataset=enwik8 --workdir=runs/3.2M \
      --config.train.steps=100000 --config.model.dtype=bfloat16

Re-running the same command resumes from the newest checkpoint in --workdir.
"""

import contextlib
import gzip
import json
import lzma
import math
import os
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import app, flags, logging
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags

import runs
from data import batches, corpus, tokenizers
from models import transformer

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Training config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, config.")

CONFIG_FILE = runs.CONFIG_FILE
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"  # final metrics, written once the run has reached train.steps
LN2 = math.log(2.0)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf."""


def make_optimizer(optim: ml_collections.ConfigDict, total_steps: int):
    """Returns the optax transformation for `config.optim`.

    'adamw': linear warmup to `peak_lr`, cosine decay to `final_lr_fraction * peak_lr`, global
    gradient clipping, decoupled weight decay on matrices only. 'adam_constant': the reference
    code's plain Adam at a constant `peak_lr` (use 1e-4 to match it).
    """
    if optim.name == "adam_constant":
        return optax.adam(optim.peak_lr, b1=optim.b1, b2=optim.b2)
    if optim.name != "adamw":
        raise ValueError(f"optim.name must be 'adamw' or 'adam_constant', got {optim.name!r}.")
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optim.peak_lr,
        warmup_steps=max(1, min(optim.warmup_steps, total_steps - 1)),
        decay_steps=max(2, total_steps),
        end_value=optim.peak_lr * optim.final_lr_fraction,
    )
    decay_mask = lambda params: jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)  # noqa: E731
    return optax.chain(
        optax.clip_by_global_norm(optim.grad_clip_norm),
        optax.adamw(
            schedule, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay, mask=decay_mask
        ),
    )


def _sum_nll(model, params, tokens):
    """Summed negative log-likelihood in nats and the per-row sums, tokens [batch, length]."""
    log_probs = model.apply({"params": params}, tokens)
    nll = -jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
    return nll.sum(axis=-1)


def make_steps(model, tx, mesh):
    """Returns jitted (train_step, eval_step) with the batch split over the mesh's 'data' axis."""
    replicated = NamedSharding(mesh, P())
    split = NamedSharding(mesh, P("data"))

    def loss_fn(params, tokens):
        row_nll = _sum_nll(model, params, tokens)
        return row_nll.sum() / tokens.size

    def train_step(state, tokens):
        loss, grads = jax.value_and_grad(loss_fn)(state["params"], tokens)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

    def eval_step(params, tokens, weights):
        row_nll = _sum_nll(model, params, tokens)
        return (row_nll * weights).sum(), weights.sum() * tokens.shape[1]

    train_step = jax.jit(
        train_step, in_shardings=(replicated, split), out_shardings=replicated, donate_argnums=0
    )
    eval_step = jax.jit(
        eval_step, in_shardings=(replicated, split, split), out_shardings=replicated
    )
    return train_step, eval_step


def _to_global(local_rows: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Builds the global batch from this host's rows (a plain device_put on one host)."""
    return jax.make_array_from_process_local_data(sharding, local_rows)


def _host_rows(rows: np.ndarray) -> np.ndarray:
    """This host's share of a global batch that every host generated identically."""
    per_host = len(rows) // jax.process_count()
    start = jax.process_index() * per_host
    return rows[start : start + per_host]


def evaluate_bits_per_byte(eval_step, params, windows, weights, batch_size, sharding, num_bytes):
    """Code length of the held-out windows in bits per original byte (`num_bytes` they cover)."""
    total_nll = 0.0
    for i in range(0, len(windows), batch_size):
        nll, _ = eval_step(
            params,
            _to_global(_host_rows(windows[i : i + batch_size]), sharding),
            _to_global(_host_rows(weights[i : i + batch_size]), sharding),
        )
        total_nll += float(nll)
    return total_nll / LN2 / num_bytes


def classical_bits_per_byte(data: bytes, window: int) -> dict[str, float]:
    """gzip -9 and LZMA2 (Python's lzma default) on the same bytes, in bits per byte.

    Reported twice: on the whole of `data` (their best case) and on each `window`-byte chunk on
    its own, container overhead included, which is the in-context setting the model is rated in.
    """
    codecs = {"gzip": lambda b: gzip.compress(b, 9, mtime=0), "lzma": lzma.compress}
    chunks = [data[i : i + window] for i in range(0, len(data), window)]
    out = {}
    for name, compress in codecs.items():
        out[f"{name}_bits_per_byte"] = 8 * len(compress(data)) / len(data)
        out[f"{name}_chunked_bits_per_byte"] = 8 * sum(len(compress(c)) for c in chunks) / len(data)
    return out


class MetricsWriter:
    """Appends JSON lines to workdir/metrics.jsonl and mirrors them to wandb when configured."""

    def __init__(self, workdir: pathlib.Path, config: ml_collections.ConfigDict):
        self._path = workdir / METRICS_FILE
        self._wandb = None
        if config.wandb.mode != "disabled" and jax.process_index() == 0:
            self._wandb = _init_wandb(config, workdir)

    def write(self, record: dict[str, Any]) -> None:
        if jax.process_index() != 0:
            return
        with open(self._path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()


def _init_wandb(config, workdir):
    """Starts wandb; on any failure (no package, no network) logs a warning and goes on without."""
    if config.wandb.mode not in ("online", "offline"):
        raise ValueError(
            f"wandb.mode must be online, offline or disabled, got {config.wandb.mode!r}"
        )
    try:
        import wandb  # optional dependency

        return wandb.init(
            project=config.wandb.project,
            name=config.wandb.name or None,
            mode=config.wandb.mode,
            dir=str(workdir),
            config=config.to_dict(),
            settings=wandb.Settings(init_timeout=30),
        )
    except Exception as e:  # noqa: BLE001 - logging must never stop training
        logging.warning("wandb disabled: %s", e)
        return None


def _check_config_matches(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
    """Refuses to resume a run whose model or tokenizer differs from the saved one."""
    path = workdir / CONFIG_FILE
    if not path.exists():
        return
    saved = json.loads(path.read_text())
    now = json.loads(config.to_json())
    diffs = [
        f"{section}.{k}: {saved[section].get(k)!r} -> {v!r}"
        for section in ("model",)
        for k, v in now[section].items()
        if saved[section].get(k) != v
    ]
    for k in ("name", "train_bytes"):  # the data the model has seen so far
        if saved["data"].get(k, 0) != now["data"][k]:
            diffs.append(f"data.{k}: {saved['data'].get(k)!r} -> {now['data'][k]!r}")
    if saved.get("tokenizer") != now["tokenizer"]:
        diffs.append(f"tokenizer: {saved.get('tokenizer')!r} -> {now['tokenizer']!r}")
    if diffs:
        raise ValueError(
            f"{workdir} holds a run with another model or data ({'; '.join(diffs)}): "
            "use a new --workdir or the saved config."
        )


def make_mesh() -> jax.sharding.Mesh:
    """A one-axis ('data') mesh over all devices: the batch is split, parameters replicated."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))


def init_state(cfg: transformer.TransformerConfig, tx, seed: int, mesh) -> dict[str, Any]:
    """Fresh training state {step, params, opt_state}, replicated over the mesh."""

    def init():
        params = transformer.init_params(cfg, jax.random.key(seed))
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

    return jax.jit(init, out_shardings=NamedSharding(mesh, P()))()


def save_checkpoint(mngr: ocp.CheckpointManager, state, seed: int, step: int) -> None:
    """Saves the state and the data sampler's state (seed, next step) at `step`."""
    mngr.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave({"seed": seed, "next_step": step}),
        ),
        force=True,
    )


def restore_checkpoint(mngr: ocp.CheckpointManager, state, seed: int, workdir) -> tuple[Any, int]:
    """Returns (state, next step) from the newest checkpoint, or (`state`, 0) if there is none.

    Raises:
      ValueError: the checkpoint's sampler state belongs to another seed.
    """
    if mngr.latest_step() is None:
        return state, 0
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
    restored = mngr.restore(
        mngr.latest_step(),
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()
        ),
    )
    state, sampler = restored["state"], restored["data"]
    start = int(state["step"])
    if sampler["seed"] != seed or sampler["next_step"] != start:
        raise ValueError(f"Checkpoint data state {sampler} does not match seed {seed}.")
    logging.warning("Resumed %s from step %d.", workdir, start)
    return state, start


def check_finite(values: list[tuple[int, dict[str, Any]]]) -> None:
    """Raises NonFiniteLossError naming the first (step, metrics) whose loss is NaN or inf."""
    for step, m in values:
        if not np.isfinite(m["loss"]):
            raise NonFiniteLossError(f"Loss is {m['loss']} at step {step}; stopping.")


def _progress(total: int, initial: int, enabled: bool):
    if not enabled or jax.process_index() != 0:
        return contextlib.nullcontext(None)
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Trains (or resumes) the model of `config` in `workdir`.

    Args:
      config: a config from `configs/default.py`.
      workdir: run directory; holds config.json, metrics.jsonl, checkpoints/ and, once all
        train.steps are done, results.json (the returned metrics; sweep.py's completion mark).

    Returns:
      Final metrics: step, loss, num_params, eval/test bits per byte, gzip and LZMA2 bits per byte
      on the same test bytes, tokens_per_second.

    Raises:
      NonFiniteLossError: the loss became NaN or inf (the message names the step).
      ValueError: the config is invalid or differs from the run saved in `workdir`.
    """
    if config.distributed:
        jax.distributed.initialize()
    t_start = time.perf_counter()
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _check_config_matches(workdir, config)
    data = corpus.load_corpus(config.data.name, config.data.path, config.data.cache_dir)
    train_split, valid_split, test_split = corpus.split(
        data, config.data.valid_fraction, config.data.test_fraction
    )
    if config.data.train_bytes < 0 or config.data.train_bytes > len(train_split):
        raise ValueError(
            f"data.train_bytes={config.data.train_bytes} is outside [0, {len(train_split)}], "
            "the train split's size (0 trains on all of it)."
        )
    if config.data.train_bytes:
        train_split = train_split[: config.data.train_bytes]
    tokenizer = tokenizers.get_tokenizer(
        config.tokenizer, train_data=train_split, cache_path=workdir / runs.TOKENIZER_FILE
    )
    train_ids = tokenizer.encode_array(train_split)
    bytes_per_token = len(train_split) / max(1, len(train_ids))  # 1 for bytes
    if jax.process_index() == 0:
        (workdir / CONFIG_FILE).write_text(config.to_json(indent=2))
    seq_len, batch_size = config.model.context_length, config.train.batch_size

    num_devices = jax.device_count()
    if batch_size % num_devices:
        raise ValueError(
            f"train.batch_size={batch_size} must be a multiple of {num_devices} devices."
        )
    mesh = make_mesh()
    split_sharding = NamedSharding(mesh, P("data"))

    cfg = transformer.TransformerConfig.from_config(config.model, tokenizer.vocab_size)
    model = transformer.Transformer(cfg)
    tx = make_optimizer(config.optim, config.train.steps)
    train_step, eval_step = make_steps(model, tx, mesh)

    state = init_state(cfg, tx, config.seed, mesh)
    num_params = transformer.num_params(state["params"])

    eval_sets = {}
    for name, split_data in (("eval", valid_split), ("test", test_split)):
        # eval_max_bytes bounds the bytes tokenised; rates are per byte those tokens stand for.
        head = split_data[: config.train.eval_max_bytes]
        windows, weights = batches.eval_windows(
            tokenizer.encode_array(head), seq_len, config.train.eval_max_bytes, batch_size
        )
        num_bytes = int(tokenizer.token_bytes[windows[weights > 0]].sum())
        eval_sets[name] = (windows, weights, num_bytes)

    def run_eval(name, params):
        windows, weights, num_bytes = eval_sets[name]
        return evaluate_bits_per_byte(
            eval_step, params, windows, weights, batch_size, split_sharding, num_bytes
        )

    mngr = runs.checkpoint_manager(workdir, config.train.keep_checkpoints)
    state, start = restore_checkpoint(mngr, state, config.seed, workdir)

    writer = MetricsWriter(workdir, config)
    metrics = {"step": start, "num_params": num_params}
    tokens_per_step = batch_size * seq_len
    pending = []  # (step, device metrics) since the last log, read back together
    t_last, steps_since = time.perf_counter(), 0

    try:
        with _progress(config.train.steps, start, config.train.progress) as bar:
            for step in range(start, config.train.steps):
                rows = batches.sample_windows(train_ids, batch_size, seq_len, config.seed, step)
                state, step_metrics = train_step(
                    state, _to_global(_host_rows(rows), split_sharding)
                )
                pending.append((step + 1, step_metrics))
                steps_since += 1
                done = step + 1
                is_last = done == config.train.steps
                if done % config.train.log_every == 0 or is_last:
                    values = [(s, jax.device_get(m)) for s, m in pending]
                    pending.clear()
                    check_finite(values)
                    elapsed = time.perf_counter() - t_last
                    tokens_per_second = steps_since * tokens_per_step / elapsed
                    t_last, steps_since = time.perf_counter(), 0
                    s, m = values[-1]
                    metrics.update(
                        step=s,
                        loss=float(m["loss"]),
                        train_bits_per_byte=float(m["loss"]) / LN2 / bytes_per_token,
                        grad_norm=float(m["grad_norm"]),
                        tokens_per_second=tokens_per_second,
                    )
                    writer.write(
                        {
                            k: metrics[k]
                            for k in (
                                "step",
                                "loss",
                                "train_bits_per_byte",
                                "grad_norm",
                                "tokens_per_second",
                            )
                        }
                    )
                    if bar is not None:
                        bar.set_postfix(
                            loss=f"{metrics['loss']:.3f}", tok_s=f"{tokens_per_second:,.0f}"
                        )
                if done % config.train.eval_every == 0 or is_last:
                    metrics["eval_bits_per_byte"] = run_eval("eval", state["params"])
                    writer.write(
                        {"step": done, "eval_bits_per_byte": metrics["eval_bits_per_byte"]}
                    )
                    t_last = time.perf_counter()  # keep eval time out of tokens/s
                if done % config.train.checkpoint_every == 0 or is_last:
                    save_checkpoint(mngr, state, config.seed, done)
                if bar is not None:
                    bar.update(1)

    finally:
        # Lets a checkpoint saved before a crash or Ctrl-C finish writing, so resume finds it.
        mngr.wait_until_finished()
        mngr.close()
    # 1 means the step compiled once and never again (a changed shape or dtype would recompile).
    metrics["train_step_compiles"] = train_step._cache_size()
    if config.train.steps > 0 or start > 0:
        metrics["test_bits_per_byte"] = run_eval("test", state["params"])
        windows, weights, _ = eval_sets["test"]
        test_bytes = tokenizer.decode(windows[weights > 0].reshape(-1))
        metrics.update(classical_bits_per_byte(test_bytes, seq_len))
        metrics["window_bytes"] = seq_len
        metrics["test_bytes"] = len(test_bytes)
        writer.write(
            {
                "step": metrics["step"],
                **{
                    k: metrics[k]
                    for k in (
                        "test_bits_per_byte",
                        "gzip_bits_per_byte",
                        "lzma_bits_per_byte",
                        "test_bytes",
                    )
                },
            }
        )
    writer.close()
    metrics["train_bytes"] = len(train_split)
    metrics["tokens_seen"] = metrics["step"] * tokens_per_step
    metrics["bytes_per_token"] = bytes_per_token  # of the training split; 1 for bytes
    metrics["seconds"] = time.perf_counter() - t_start  # this invocation's (a resume counts anew)
    if jax.process_index() == 0 and metrics["step"] == config.train.steps:
        _write_atomic(workdir / RESULTS_FILE, json.dumps(metrics, indent=2))
    return metrics


def _write_atomic(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _report(metrics: dict[str, Any]) -> str:
    lines = [f"Trained {metrics['num_params']:,} parameters for {metrics['step']} steps."]
    if "test_bits_per_byte" in metrics:
        w = metrics["window_bytes"]
        lines += [
            f"Held-out test split, {metrics['test_bytes']:,} bytes, in bits per byte:",
            f"  {'':10s} {f'{w}-byte windows':>16s} {'whole split':>12s}",
            f"  {'model':10s} {metrics['test_bits_per_byte']:16.3f} {'-':>12s}",
        ]
        for name, key in (("gzip -9", "gzip"), ("LZMA2", "lzma")):
            chunked, whole = (
                metrics[f"{key}_chunked_bits_per_byte"],
                metrics[f"{key}_bits_per_byte"],
            )
            lines.append(f"  {name:10s} {chunked:16.3f} {whole:12.3f}")
        lines.append(
            "Windows are coded on their own (the paper's in-context setting); the model's figure "
            "is its log-loss, the code length an arithmetic coder reaches up to a few bytes each."
        )
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("Too many command-line arguments.")
    if _WORKDIR.value is None:
        raise app.UsageError("--workdir is required.")
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    metrics = train(_CONFIG.value, _WORKDIR.value)
    print(_report(metrics))


if __name__ == "__main__":
    app.run(main)
