"""The training loop every trainer shares; a `Task` supplies the data and the evaluations.

    state <- restore or init -> for each step: train, then `itstime` to log / evaluate /
    checkpoint -> final test -> results.json

train.py's language modelling and train_addition.py's addition task differ only in their
`Task`: what a batch is, which positions count in the loss, what an evaluation measures and
what the final test reports. Everything else (the jitted step, checkpoints and resume, metrics,
progress, the NaN stop) is here, once.
"""

import contextlib
import copy
import dataclasses
import json
import math
import os
import pathlib
import shutil
import time
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

import runs
from models import transformer
from training import checkpoints, checks, recipe, runtime, steps
from training.metrics import MetricsWriter

LN2 = math.log(2.0)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf."""

    user_error = True  # the command line prints its message in one line (cli.run)


class Task(Protocol):
    """What a trainer supplies to `train_loop`: built as `Task(config, workdir)`."""

    vocab_size: int
    loss_mask: np.ndarray | None  # [length] weights of positions in the loss; None: all
    postfix_keys: tuple[str, ...]  # eval metrics shown on the progress bar

    def batch(self, step: int) -> np.ndarray:
        """The global training batch of `step`, int32 [batch, length], same on every process."""

    def compile(self, model: transformer.Transformer, mesh) -> None:
        """Builds the task's jitted evaluation functions for `model`."""

    def log_metrics(self, loss: float) -> dict[str, Any]:
        """Extra fields of a log line derived from the training loss."""

    def evaluate(self, params) -> dict[str, Any]:
        """The fields of an eval line."""

    def test(self, params) -> dict[str, Any]:
        """The fields of the final test line (returned in the final metrics too)."""

    def summary(self) -> dict[str, Any]:
        """Fields added to the final metrics (e.g. the training data's size)."""


def headline(metrics: dict[str, Any]) -> str:
    """The first line of a trainer's report."""
    return f"Trained {metrics['num_params']:,} parameters for {metrics['step']} steps."


def itstime(step: int, every_n_steps: int, total_steps: int) -> bool:
    """Whether a periodic action is due once `step` steps are done: every N and at the last."""
    return step == total_steps or (every_n_steps > 0 and step % every_n_steps == 0)


def check_finite(values: list[tuple[int, dict[str, Any]]]) -> None:
    """Raises NonFiniteLossError naming the first (step, metrics) whose loss is NaN or inf."""
    for step, m in values:
        if not np.isfinite(m["loss"]):
            raise NonFiniteLossError(f"Loss is {m['loss']} at step {step}; stopping.")


class _LogWindow:
    """The steps since the last log line: their device metrics, read back together, and time.

    Tokens per second are timed from the end of this invocation's first step, so neither the
    compilation nor a resume's restore counts.
    """

    def __init__(self, tokens_per_step: int, seconds_before: float):
        self.tokens_per_step = tokens_per_step
        self.pending: list[tuple[int, Any]] = []
        self.t_start = time.perf_counter() - seconds_before
        self.t_last: float | None = None
        self.timed_steps = 0

    def add(self, step: int, metrics) -> None:
        self.pending.append((step, metrics))
        if self.t_last is None:
            jax.block_until_ready(metrics)
            self.t_last = time.perf_counter()
        else:
            self.timed_steps += 1

    def pause(self) -> None:
        """Restarts the clock (after an evaluation, which is not training time)."""
        if self.t_last is not None:
            self.t_last = time.perf_counter()

    def flush(self) -> dict[str, Any]:
        """Reads the pending metrics back, checks them, and returns the log line's fields."""
        values = [(s, jax.device_get(m)) for s, m in self.pending]
        self.pending.clear()
        check_finite(values)
        now = time.perf_counter()
        elapsed = now - (self.t_last or now)
        tokens_per_second = None
        if self.timed_steps and elapsed > 0:
            tokens_per_second = self.timed_steps * self.tokens_per_step / elapsed
        self.t_last, self.timed_steps = now, 0
        step, m = values[-1]
        return {
            "step": step,
            "loss": float(m["loss"]),
            "grad_norm": float(m["grad_norm"]),
            "tokens_per_second": tokens_per_second,
            "elapsed_s": now - self.t_start,
        }

    def seconds(self) -> float:
        """Training seconds of the run so far, earlier invocations included."""
        return time.perf_counter() - self.t_start


@dataclasses.dataclass
class _Run:
    """What the step loop works with, built by `train_loop`."""

    config: ml_collections.ConfigDict
    task: Task
    train_step: Any
    mesh: Any
    mngr: Any
    writer: MetricsWriter
    preemption: runtime.Preemption


def _train_steps(run: _Run, state, start: int, seconds: float):
    """Runs steps `start`..`train.steps`, logging, evaluating and checkpointing as configured.

    Args:
      run: the loop's parts.
      state, start, seconds: the restored state, its step and the training seconds before it.

    Returns:
      (state, metrics of the last log and eval lines, training seconds so far).

    Raises:
      runtime.Preempted: a signal asked to stop; the current step was checkpointed first
        (before this invocation's first step is done there is nothing new to save, and
        `run.preemption` stops the run at once).
    """
    config, task, writer = run.config, run.task, run.writer
    total, every = config.train.steps, config.train
    window = _LogWindow(config.train.batch_size * config.model.context_length, seconds)
    metrics: dict[str, Any] = {}
    show = config.train.progress and jax.process_index() == 0
    with tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, disable=not show) as bar:
        for step in range(start, total):
            state, step_metrics = run.train_step(state, steps.to_global(task.batch(step), run.mesh))
            done = step + 1
            window.add(done, step_metrics)  # waits for the first step: compiled and run
            if done == start + 1:  # from now on a signal waits for a step and its checkpoint
                run.preemption.at_risk(True)
            if itstime(done, every.log_every, total):
                line = window.flush()
                line.update(task.log_metrics(line["loss"]))
                metrics.update(line)
                writer.write(line)
                bar.set_postfix(_postfix(metrics, task), refresh=False)
            if itstime(done, every.eval_every, total):
                evaluation = task.evaluate(state["params"])
                metrics.update(evaluation)
                writer.write({"step": done, **evaluation})
                window.pause()
                bar.set_postfix(_postfix(metrics, task), refresh=False)
            if itstime(done, every.checkpoint_every, total):
                checkpoints.save(run.mngr, state, config.seed, done, window.seconds())
            elif done < total:
                _stop_if_asked(run, state, done, window)
            bar.update(1)
    return state, metrics, window.seconds()


def _stop_if_asked(run: _Run, state, step: int, window: _LogWindow) -> None:
    """Checkpoints `step` (unless saved already) and raises runtime.Preempted if a signal asked
    to stop."""
    if step >= run.config.train.steps or not run.preemption.should_stop(step):
        return
    if run.mngr.latest_step() != step:
        checkpoints.save(run.mngr, state, run.config.seed, step, window.seconds())
    run.mngr.wait_until_finished()
    raise run.preemption.stopped(step)


def _is_test_line(record: dict[str, Any]) -> bool:
    return any(k.startswith("test_") for k in record)


def _postfix(metrics: dict[str, Any], task: Task) -> dict[str, str]:
    shown = {"loss": f"{metrics['loss']:.4f}"} if "loss" in metrics else {}
    if metrics.get("tokens_per_second"):
        shown["tok_s"] = f"{metrics['tokens_per_second']:,.0f}"
    shown.update({k: f"{metrics[k]:.4f}" for k in task.postfix_keys if k in metrics})
    return shown


def train_loop(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike, task_cls: type
) -> dict[str, Any]:
    """Trains (or resumes) the model of `config` on a task in `workdir`.

    A run whose results.json shows all `train.steps` done is complete: its results are returned
    and nothing is trained, tested or written again. SIGTERM and SIGUSR1 checkpoint the current
    step and stop (`runtime.Preempted`); one training at a time holds the run directory.

    Args:
      config: a training config (configs/default.py or configs/addition.py).
      workdir: run directory (see `runs`).
      task_cls: the `Task`'s class, built as `task_cls(config, workdir)` once the run directory
        is locked.

    Returns:
      Final metrics: step, num_params, the last log and eval lines' fields, the test fields,
      the task's summary, seconds (training time of the run, resumes included).

    Raises:
      NonFiniteLossError: the loss became NaN or inf (the message names the step).
      ValueError: the config is invalid, differs from the run saved in `workdir` or between
        processes, or another training holds `workdir`.
      runtime.Preempted: stopped on a signal after checkpointing.
    """
    t_start = time.perf_counter()
    workdir = pathlib.Path(workdir)
    checks.check(config)
    config = _resolve_dtype(config, workdir)
    checks.check_memory(config, *runtime.memory_bytes(), jax.device_count())
    with runtime.Preemption() as preemption:
        recipe.check_resume(workdir, config)
        done = runs.load_results(workdir)
        if done is not None and done.get("step") == config.train.steps:
            return done
        runtime.check_same_config(config)
        with _run_directory(workdir, preemption), runtime.RunLock(workdir):
            metrics = _train(config, workdir, task_cls(config, workdir), preemption)
    metrics["invocation_seconds"] = time.perf_counter() - t_start
    if jax.process_index() == 0 and metrics["step"] == config.train.steps:
        runs.write_atomic(workdir / runs.RESULTS_FILE, json.dumps(metrics, indent=2))
    return metrics


def _resolve_dtype(config: ml_collections.ConfigDict, workdir: pathlib.Path):
    """`model.dtype='auto'` becomes what it means here (bfloat16 on a GPU or TPU, float32 on a
    CPU) and is recorded so; a run being resumed keeps the dtype it was trained with."""
    if config.model.dtype != "auto":
        return config
    config = copy.deepcopy(config)
    saved = (
        runs.load_config(workdir).model.get("dtype")
        if (workdir / runs.CONFIG_FILE).exists()
        else None
    )
    resolved = saved if saved not in (None, "auto") else None
    config.model.dtype = resolved or str(transformer.compute_dtype("auto"))
    return config


def _train(config, workdir: pathlib.Path, task: Task, preemption) -> dict[str, Any]:
    """Builds the model and step, restores, trains, tests: `train_loop` inside its guards."""
    mesh = steps.make_mesh()
    if config.train.batch_size % jax.device_count():
        raise ValueError(
            f"train.batch_size={config.train.batch_size} must be a multiple of "
            f"{jax.device_count()} devices."
        )
    model_cfg = transformer.TransformerConfig.from_config(config.model, task.vocab_size)
    model = transformer.Transformer(model_cfg)
    tx = steps.make_optimizer(config.optim, config.train.steps)
    train_step = steps.make_train_step(model, tx, mesh, task.loss_mask)
    task.compile(model, mesh)
    state = steps.init_state(model_cfg, tx, config.seed, mesh)
    metrics: dict[str, Any] = {"num_params": transformer.num_params(state["params"])}
    metrics["compute_dtype"] = config.model.dtype
    metrics["attention"] = transformer.attention_implementation(
        config.model.attention, transformer.compute_dtype(config.model.dtype), model_cfg.head_dim
    )
    extended, resume_step = {}, max(runs.checkpoint_steps(workdir), default=0)
    if jax.process_index() == 0:  # config.json, with a train.extend's changes in its history
        extended = recipe.write_config(workdir, config, resume_step)
    writer = MetricsWriter(workdir, config)
    if extended:  # kept by the resume below: it is at the step the run goes on from
        writer.write({"step": resume_step, "config_changes": extended})
    with checkpoints.manager(workdir, config.train.keep_checkpoints) as mngr:
        state, start, seconds = checkpoints.restore(mngr, state, config.seed)
        # Lines past the checkpoint are logged again, and so is the final test.
        kept = writer.keep_only(lambda r: r["step"] <= start and not _is_test_line(r))
        for line in kept:  # what a run resumed at its last step would otherwise lose
            metrics.update({k: v for k, v in line.items() if k != "step"})
        run = _Run(config, task, train_step, mesh, mngr, writer, preemption)
        state, last, seconds = _train_steps(run, state, start, seconds)
    preemption.at_risk(False, "testing")  # the last step's checkpoint is written
    metrics.update(last, step=max(start, config.train.steps))
    metrics["tokens_seen"] = metrics["step"] * config.train.batch_size * config.model.context_length
    if metrics["step"] > 0:
        test = task.test(state["params"])
        metrics.update(test)
        writer.write({"step": metrics["step"], **test})
    writer.close()
    metrics.update(task.summary())
    metrics["seconds"] = seconds
    return metrics


@contextlib.contextmanager
def _run_directory(workdir: pathlib.Path, preemption: runtime.Preemption):
    """Creates `workdir`. A start that fails (an error, a NaN, a signal) before the run has a
    checkpoint leaves nothing behind: what it made in `workdir`, and `workdir` if it made it,
    is removed, so that nothing (a config.json, a lock) stands in the way of another try."""
    before = {p.name for p in workdir.iterdir()} if workdir.is_dir() else None
    workdir.mkdir(parents=True, exist_ok=True)

    def remove_unfinished() -> None:
        if jax.process_index() != 0 or runs.checkpoint_steps(workdir) or not workdir.exists():
            return
        if before is None:
            shutil.rmtree(workdir, ignore_errors=True)
            return
        for path in workdir.iterdir():
            if path.name in before:
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    preemption.on_abort(remove_unfinished)  # a stop that cannot unwind (from XLA's compiler)
    try:
        yield
    except BaseException:
        remove_unfinished()
        raise
