r"""Trains a Transformer on n-digit addition and reports its loss above the known entropy floor.

  python train_addition.py --config=configs/addition.py:size=test --workdir=/tmp/add   # seconds
  python train_addition.py --config=configs/addition.py:size=200K --workdir=runs/addition-200K

The data (`data/addition.py`) has an exactly known conditional entropy per position, so the
held-out log-loss splits into the floor (aleatoric, the operands' own randomness) and the excess
(epistemic, what the model has yet to learn: mostly the answer digits). Eval lines in
metrics.jsonl carry the excess overall and per position and the exact-match accuracy of the
answers; the run ends with the same numbers on a fresh test sample. The optimiser and the jitted
train step are train.py's (`make_optimizer`, `make_steps`); re-running the same command resumes
from the newest checkpoint.
"""

import json
import math
import os
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import runs
import train as lm_train
from data import addition
from models import transformer

# train.py defines --config and --workdir when imported; this script reuses those two flags (its
# entry point points --config at the addition config by default).
FLAGS = flags.FLAGS

METRICS_FILE = lm_train.METRICS_FILE
LN2 = math.log(2.0)


def make_eval_fn(model: transformer.Transformer, num_digits: int):
    """Returns the jitted evaluation of one batch of held-out sequences.

    The function maps (params, tokens [batch, L]) to (nll sums per position [L], the sum over
    rows of (row loss per predicted token - floor)^2, the exact-answer count). A row counts as
    exact when the argmax at every answer digit, given the true prefix, is the true digit; that
    is the same as greedy decoding producing the whole answer c.
    """
    answer = addition.answer_positions(num_digits)
    floor = addition.floor_nats_per_token(num_digits)  # centres the squares: no cancellation

    @jax.jit
    def eval_fn(params, tokens):
        log_probs = model.apply({"params": params}, tokens)
        nll = -jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
        row_excess = nll[:, 1:].mean(axis=1) - floor
        hits = jnp.argmax(log_probs, axis=-1) == tokens
        return nll.sum(axis=0), (row_excess**2).sum(), hits[:, answer].all(axis=1).sum()

    return eval_fn


def evaluate(eval_fn, params, tokens: np.ndarray, batch_size: int, num_digits: int):
    """Held-out metrics of `params` on `tokens` [num_rows, L] (num_rows a multiple of batch_size).

    Returns:
      dict with loss (nats per predicted token), excess_nats (loss minus the floor),
      excess_fraction (excess / floor), loss_stderr (standard error of loss and excess over the
      rows, nats), excess_per_position (list over the predicted positions 1..L-1, nats; a
      finite sample can put a position slightly below its floor), answer_accuracy (exact-match
      fraction of c) and bits_per_byte (code length of whole sequences, 's' included, per
      character).

    Raises:
      ValueError: the row count is not a multiple of batch_size.
    """
    if len(tokens) % batch_size:
        raise ValueError(f"{len(tokens)} eval rows are not a multiple of batch {batch_size}.")
    nll_sums, squares, exact = np.zeros(tokens.shape[1]), 0.0, 0
    for i in range(0, len(tokens), batch_size):
        sums, sq, count = eval_fn(params, tokens[i : i + batch_size])
        nll_sums += np.asarray(sums, np.float64)
        squares += float(sq)
        exact += int(count)
    num = len(tokens)
    per_position = nll_sums / num
    floor_per_position = addition.position_entropy_nats(num_digits)
    loss = float(per_position[1:].mean())
    floor = addition.floor_nats_per_token(num_digits)
    variance = max(squares / num - (loss - floor) ** 2, 0.0) * num / max(num - 1, 1)
    return {
        "loss": loss,
        "excess_nats": loss - floor,
        "excess_fraction": (loss - floor) / floor,
        "loss_stderr": math.sqrt(variance / num),
        "excess_per_position": [float(x) for x in (per_position - floor_per_position)[1:]],
        "answer_accuracy": exact / num,
        "bits_per_byte": float(per_position.sum() / LN2 / tokens.shape[1]),
    }


def _check_config(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
    """Validates the config and refuses to resume a run with another model or task."""
    num_digits = config.data.num_digits
    if config.data.vocab_size != addition.VOCAB_SIZE:
        raise ValueError(f"data.vocab_size must be {addition.VOCAB_SIZE} for the addition task.")
    if config.model.context_length != addition.sequence_length(num_digits):
        raise ValueError(
            f"model.context_length must be {addition.sequence_length(num_digits)} for "
            f"{num_digits}-digit addition, got {config.model.context_length}."
        )
    path = workdir / runs.CONFIG_FILE
    if path.exists():
        saved, now = json.loads(path.read_text()), json.loads(config.to_json())
        diffs = [s for s in ("model", "data") if saved.get(s) != now[s]]
        if diffs:
            raise ValueError(
                f"{workdir} holds a run with another {' and '.join(diffs)} config: "
                "use a new --workdir or the saved config."
            )


def _eval_record(step: int, ev: dict[str, Any], elapsed_s: float) -> dict[str, Any]:
    """The metrics.jsonl line of one held-out evaluation."""
    return {
        "step": step,
        "eval_loss": ev["loss"],
        "excess_nats": ev["excess_nats"],
        "excess_fraction": ev["excess_fraction"],
        "loss_stderr": ev["loss_stderr"],
        "answer_accuracy": ev["answer_accuracy"],
        "eval_bits_per_byte": ev["bits_per_byte"],
        "excess_per_position": ev["excess_per_position"],
        "elapsed_s": elapsed_s,
    }


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Trains (or resumes) the addition model of `config` in `workdir`.

    Args:
      config: a config from `configs/addition.py`.
      workdir: run directory; holds config.json, metrics.jsonl and checkpoints/.

    Returns:
      Final metrics: step, num_params, floor_nats, the last eval's metrics (eval_*), the test
      metrics on fresh samples (test_*), train_seconds and train_step_compiles.

    Raises:
      lm_train.NonFiniteLossError: the loss became NaN or inf.
      ValueError: the config is invalid or differs from the run saved in `workdir`.
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _check_config(workdir, config)
    (workdir / runs.CONFIG_FILE).write_text(config.to_json(indent=2))
    num_digits, batch_size = config.data.num_digits, config.train.batch_size

    mesh = lm_train.make_mesh()
    split_sharding = NamedSharding(mesh, P("data"))
    cfg = transformer.TransformerConfig.from_config(config.model, config.data.vocab_size)
    model = transformer.Transformer(cfg)
    tx = lm_train.make_optimizer(config.optim, config.train.steps)
    train_step, _ = lm_train.make_steps(model, tx, mesh)
    eval_fn = make_eval_fn(model, num_digits)

    state = lm_train.init_state(cfg, tx, config.seed, mesh)
    num_params = transformer.num_params(state["params"])
    eval_rows = addition.sample_batch(
        config.train.eval_samples, config.seed, 0, num_digits, split="eval"
    )

    mngr = runs.checkpoint_manager(workdir, config.train.keep_checkpoints)
    state, start = lm_train.restore_checkpoint(mngr, state, config.seed, workdir)
    writer = lm_train.MetricsWriter(workdir, config)
    metrics = {"step": start, "num_params": num_params}
    metrics["floor_nats"] = addition.floor_nats_per_token(num_digits)
    pending, t_start = [], time.perf_counter()

    bar = _progress(config.train.steps, start, config.train.progress)
    try:
        for step in range(start, config.train.steps):
            rows = addition.sample_batch(batch_size, config.seed, step, num_digits)
            state, step_metrics = train_step(state, jax.device_put(rows, split_sharding))
            pending.append((step + 1, step_metrics))
            done = step + 1
            is_last = done == config.train.steps
            if done % config.train.log_every == 0 or is_last:
                values = [(s, jax.device_get(m)) for s, m in pending]
                pending.clear()
                lm_train.check_finite(values)
                s, m = values[-1]
                # lm_train.make_steps averages over all L positions, the certain 's' included.
                metrics.update(step=s, loss=float(m["loss"]), grad_norm=float(m["grad_norm"]))
                writer.write(
                    {
                        "step": s,
                        "loss": metrics["loss"],
                        "grad_norm": metrics["grad_norm"],
                        "elapsed_s": time.perf_counter() - t_start,
                    }
                )
                if bar is not None:
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            if done % config.train.eval_every == 0 or is_last:
                ev = evaluate(
                    eval_fn, state["params"], eval_rows, config.train.eval_batch_size, num_digits
                )
                metrics.update({f"eval_{k}": v for k, v in ev.items()})
                writer.write(_eval_record(done, ev, time.perf_counter() - t_start))
                if bar is not None:
                    bar.set_postfix(
                        excess=f"{ev['excess_nats']:.4f}", acc=f"{ev['answer_accuracy']:.3f}"
                    )
            if done % config.train.checkpoint_every == 0 or is_last:
                lm_train.save_checkpoint(mngr, state, config.seed, done)
            if bar is not None:
                bar.update(1)
    finally:
        mngr.wait_until_finished()
        mngr.close()
        if bar is not None:
            bar.close()
    metrics["train_seconds"] = time.perf_counter() - t_start
    metrics["train_step_compiles"] = train_step._cache_size()
    if config.train.steps > 0 or start > 0:
        test_rows = addition.sample_batch(
            config.train.test_samples, config.seed, 0, num_digits, split="test"
        )
        test = evaluate(
            eval_fn, state["params"], test_rows, config.train.eval_batch_size, num_digits
        )
        metrics.update({f"test_{k}": v for k, v in test.items()})
        writer.write(
            {
                "step": metrics["step"],
                "num_params": num_params,
                "floor_nats": metrics["floor_nats"],
                "test_samples": len(test_rows),
                "train_seconds": metrics["train_seconds"],
                **{f"test_{k}": v for k, v in test.items()},
            }
        )
    writer.close()
    return metrics


def _report(metrics: dict[str, Any]) -> str:
    lines = [f"Trained {metrics['num_params']:,} parameters for {metrics['step']} steps."]
    if "test_loss" in metrics:
        floor = metrics["floor_nats"]
        lines += [
            f"Entropy floor {floor:.6f} nats per predicted token.",
            f"Test loss {metrics['test_loss']:.6f}: excess {metrics['test_excess_nats']:.6f} nats "
            f"+- {metrics['test_loss_stderr']:.6f} ({100 * metrics['test_excess_fraction']:.3f}% "
            "of the floor); "
            f"answer exact match {100 * metrics['test_answer_accuracy']:.2f}%; "
            f"{metrics['test_bits_per_byte']:.4f} bits per byte.",
        ]
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("Too many command-line arguments.")
    if FLAGS.workdir is None:
        raise app.UsageError("--workdir is required.")
    if "num_digits" not in FLAGS.config.get("data", {}):
        raise app.UsageError("--config must be an addition config: configs/addition.py[:ARG].")
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    print(_report(train(FLAGS.config, FLAGS.workdir)))


if __name__ == "__main__":
    FLAGS.set_default("config", "configs/addition.py")
    app.run(main)
