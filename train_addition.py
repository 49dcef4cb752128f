r"""Trains a Transformer on n-digit addition and reports its loss above the known entropy floor.

  python train_addition.py --config=configs/addition.py:size=test --workdir=/tmp/add   # seconds
  python train_addition.py --config=configs/addition.py:size=200K --workdir=runs/addition-200K

The data (`data/addition.py`) has an exactly known conditional entropy per position, so the
held-out log-loss splits into the floor (aleatoric, the operands' own randomness) and the excess
(epistemic, what the model has yet to learn: mostly the answer digits). Eval lines in
metrics.jsonl carry the excess overall and per position and the exact-match accuracy of the
answers; the run ends with the same numbers on a fresh test sample. The loop is
`training.loop.train_loop`, as for train.py; the training loss averages over the predicted
positions only (not the leading 's', which the evaluation does not count either). Re-running the
same command resumes from the newest checkpoint; a complete run is left alone.
"""

import cli  # first: a Ctrl-C while the modules below import then ends in one line

# isort: split
import math
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags

from data import addition
from models import transformer
from training import loop, runtime

LN2 = loop.LN2


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
        nll = transformer.token_nll(log_probs, tokens)
        row_excess = nll[:, 1:].mean(axis=1) - floor
        hits = log_probs.argmax(axis=-1) == tokens
        return nll.sum(axis=0), (row_excess**2).sum(), hits[:, answer].all(axis=1).sum()

    return eval_fn


def evaluate(eval_fn, params, tokens: np.ndarray, batch_size: int, num_digits: int):
    """Held-out metrics of `params` on `tokens` [num_rows, L] (num_rows a multiple of batch_size).

    Returns:
      dict with loss (nats per predicted token), excess_nats (loss minus the floor),
      excess_fraction (excess / floor), loss_stderr (standard error of loss and excess over the
      rows, nats), excess_per_position (list over the predicted positions 1..L-1, nats; a
      finite sample can put a position slightly below its floor), answer_accuracy (exact-match
      fraction of c) and bits_per_byte (code length of whole sequences per character, the
      leading 's' at 0 bits: it is certain by the format, and the loss leaves it out, so the
      model's own prediction of it is untrained and would add about 18 nats a sequence).

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
        "bits_per_byte": float(per_position[1:].sum() / LN2 / tokens.shape[1]),
    }


class AdditionTask:
    """n-digit addition: fresh samples every step, excess over the entropy floor on held-out rows.

    Args:
      config: a config from `configs/addition.py`.
      workdir: unused (the uniform `Task` signature).

    Raises:
      ValueError: the vocabulary or context does not fit the task.
    """

    postfix_keys = ("excess_nats", "answer_accuracy")

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | os.PathLike = ""):
        del workdir  # nothing of the task lives in the run directory
        num_digits = config.data.num_digits
        if config.data.vocab_size != addition.VOCAB_SIZE:
            raise ValueError(
                f"data.vocab_size must be {addition.VOCAB_SIZE} for the addition task."
            )
        if config.model.context_length != addition.sequence_length(num_digits):
            raise ValueError(
                f"model.context_length must be {addition.sequence_length(num_digits)} for "
                f"{num_digits}-digit addition, got {config.model.context_length}."
            )
        self.config, self.num_digits = config, num_digits
        self.vocab_size = addition.VOCAB_SIZE
        # The leading 's' is certain and not predicted: it stays out of the loss, as in `evaluate`.
        self.loss_mask = np.ones(config.model.context_length, np.float32)
        self.loss_mask[0] = 0.0
        self.eval_rows = addition.sample_batch(
            config.train.eval_samples, config.seed, 0, num_digits, split="eval"
        )
        self._eval_fn = None

    def batch(self, step: int) -> np.ndarray:
        c = self.config
        return addition.sample_batch(c.train.batch_size, c.seed, step, self.num_digits)

    def compile(self, model: transformer.Transformer, mesh) -> None:
        del mesh  # evaluation runs on one device
        self._eval_fn = make_eval_fn(model, self.num_digits)

    def log_metrics(self, loss: float) -> dict[str, Any]:
        del loss
        return {}

    def _evaluate(self, params, rows) -> dict[str, Any]:
        return evaluate(
            self._eval_fn, params, rows, self.config.train.eval_batch_size, self.num_digits
        )

    def evaluate(self, params) -> dict[str, Any]:
        ev = self._evaluate(params, self.eval_rows)
        return {
            "eval_loss": ev["loss"],
            "excess_nats": ev["excess_nats"],
            "excess_fraction": ev["excess_fraction"],
            "loss_stderr": ev["loss_stderr"],
            "answer_accuracy": ev["answer_accuracy"],
            "eval_bits_per_byte": ev["bits_per_byte"],
            "excess_per_position": ev["excess_per_position"],
        }

    def test(self, params) -> dict[str, Any]:
        c = self.config
        rows = addition.sample_batch(c.train.test_samples, c.seed, 0, self.num_digits, "test")
        test = self._evaluate(params, rows)
        return {
            "floor_nats": addition.floor_nats_per_token(self.num_digits),
            "test_samples": len(rows),
            **{f"test_{k}": v for k, v in test.items()},
        }

    def summary(self) -> dict[str, Any]:
        return {"floor_nats": addition.floor_nats_per_token(self.num_digits)}


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Trains (or resumes) the addition model of `config` in `workdir`.

    Args:
      config: a config from `configs/addition.py`.
      workdir: run directory; holds config.json, metrics.jsonl, checkpoints/ and results.json.

    Returns:
      Final metrics: step, num_params, floor_nats, the last eval's metrics, the test metrics on
      fresh samples (test_*), seconds.

    Raises:
      loop.NonFiniteLossError: the loss became NaN or inf.
      ValueError: the config is invalid or differs from the run saved in `workdir`.
    """
    return loop.train_loop(config, workdir, AdditionTask)


def report(metrics: dict[str, Any]) -> str:
    """The summary printed at the end of a run: the test excess over the floor."""
    if "test_loss" not in metrics:
        return loop.headline(metrics)
    m = metrics
    return "\n".join(
        [
            loop.headline(m),
            f"Entropy floor {m['floor_nats']:.6f} nats per predicted token.",
            f"Test loss {m['test_loss']:.6f}: excess {m['test_excess_nats']:.6f} nats "
            f"+- {m['test_loss_stderr']:.6f} ({100 * m['test_excess_fraction']:.3f}% of the "
            f"floor); answer exact match {100 * m['test_answer_accuracy']:.2f}%; "
            f"{m['test_bits_per_byte']:.4f} bits per byte.",
        ]
    )


def _check_config(config) -> None:
    if "num_digits" not in config.get("data", {}):
        raise app.UsageError("--config must be an addition config: configs/addition.py[:ARG].")


def _define_flags() -> None:
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", cli.repo_path("configs/addition.py"), "Addition training config."
    )
    flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, config.")


if __name__ == "__main__":
    cli.run(
        lambda argv: runtime.train_main(argv, train, report, _check_config),
        define_flags=_define_flags,
    )
