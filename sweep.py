r"""Runs a sweep of training runs declared in a sweep file, here, on Slurm, or by any scheduler.

  python sweep.py --sweep=configs/sweeps/scaling.py --mode=local    # run them one after another
  python sweep.py --sweep=configs/sweeps/scaling.py --mode=print    # one command per line
  python sweep.py --sweep=configs/sweeps/scaling.py --mode=slurm --slurm.gpus_per_run=1
  python sweep.py --sweep=configs/sweeps/scaling.py --mode=status   # new/queued/running/...
  python sweep.py --sweep=configs/sweeps/scaling.py --mode=gather   # only write the CSV

A sweep file defines `get_sweep()` returning a dict:

  config:   the base config file, e.g. 'configs/default.py' (no ':arg').
  name:     the sweep's name; runs live in ROOT/NAME/RUN (ROOT is --root, default `runs`).
  fixed:    {key: value} given to every run.
  axes:     {key: [values]}; the sweep is their Cartesian product, in declaration order.
  arg_keys: keys that go into the config file's arg string (default: size, dataset, tokenizer);
            every other key is a config field, passed as --config.KEY=VALUE.
  slurm:    optional {option: value} the sweep asks of Slurm (e.g. {'gpus_per_run': 1}); the
            --slurm.* flags override them, but not down to no GPUs where the sweep asks for them.

Before anything runs or is submitted, in every mode, each run's config is built from its command
line as train.py builds it and checked as train.py checks it (misspelt fields, values that do
not parse, numbers out of range), and a run that has trained already must keep its recipe
(training.recipe; `"train.extend": True` in `fixed` continues finished runs with more steps):
the first problem ends the sweep in one line naming the run and the field.

A run is complete when its workdir holds train.py's results.json for the configured number of
steps; complete runs are skipped, interrupted ones resume from their newest checkpoint (train.py
does that by itself). After `local` (and in `gather`) the runs' results are collected into
ROOT/NAME/results.csv: one row per run with its axis values, status and final metrics.

`slurm` submits the incomplete runs as one job array (cluster.slurm: one array task per run,
logs in WORKDIR/slurm/, requeued when train.py checkpoints on SIGUSR1/SIGTERM and exits with
status 75) and returns. A run of several processes (--slurm.tasks_per_run, or one process per
GPU) gets --config.distributed=True; `print` shows the same commands. Commands run in the
repository's directory, so this works from anywhere.
"""

import dataclasses
import difflib
import importlib.util
import itertools
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time
from typing import Any

from absl import flags

import cli
import runs
from cluster import slurm
from training import checks, recipe

REPO = pathlib.Path(__file__).resolve().parent

DEFAULT_ARG_KEYS = ("size", "dataset", "tokenizer")
CSV_FIELDS = (
    "num_params",
    "step",
    "tokens_seen",
    "bytes_per_token",
    "train_bytes",
    "window_bytes",
    "test_bytes",
    "test_bits_per_byte",
    "eval_bits_per_byte",
    "gzip_chunked_bits_per_byte",
    "lzma_chunked_bits_per_byte",
    "gzip_chunked_header_once_bits_per_byte",
    "lzma_chunked_header_once_bits_per_byte",
    "gzip_bits_per_byte",
    "lzma_bits_per_byte",
    "seconds",
)


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a sweep: its name, the values of the axes, and its train.py arguments."""

    name: str
    values: dict[str, Any]  # axis key -> value
    config_arg: str  # 'configs/x.py:size=200K,...'
    overrides: dict[str, Any]  # config field -> value
    steps: int | None  # train.steps if the sweep sets it, else None (read from the run)

    def command(
        self, workdir: pathlib.Path, python: str = "python", distributed: bool = False
    ) -> list[str]:
        """train.py's command line, to run in the repository's directory."""
        args = [python, "train.py", f"--config={self.config_arg}"]
        args += [f"--config.{k}={v}" for k, v in self.overrides.items()]
        if distributed and "distributed" not in self.overrides:
            args.append("--config.distributed=True")
        return args + [f"--workdir={workdir}"]


def _slug(key: str, value: Any) -> str:
    leaf = key.rsplit(".", 1)[-1]
    text = f"{leaf}={value}"
    return "".join(ch if ch.isalnum() or ch in "=-._" else "-" for ch in text)


def load_sweep(path: str | pathlib.Path) -> dict[str, Any]:
    """Imports a sweep file and returns its checked `get_sweep()` dict."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No sweep file {path}.")
    spec = importlib.util.spec_from_file_location(f"sweep_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        sweep = dict(module.get_sweep())
    except Exception as e:  # noqa: BLE001 - any error in the user's file: say which, in one line
        raise ValueError(f"sweep file {path} does not load: {type(e).__name__}: {e}") from e
    unknown = set(sweep) - {"config", "name", "fixed", "axes", "arg_keys", "slurm"}
    if unknown:
        raise ValueError(f"{path}: unknown sweep keys {sorted(unknown)}.")
    for key in ("config", "name", "axes"):
        if key not in sweep:
            raise ValueError(f"{path}: the sweep lacks {key!r}.")
    if ":" in sweep["config"]:
        raise ValueError(f"{path}: give config without ':arg'; put arg keys in fixed or axes.")
    for key, values in sweep["axes"].items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"{path}: axis {key!r} needs a non-empty list of values.")
        if len(set(map(str, values))) != len(values):
            raise ValueError(f"{path}: axis {key!r} repeats a value.")
    overlap = set(sweep.get("fixed", {})) & set(sweep["axes"])
    if overlap:
        raise ValueError(f"{path}: keys both fixed and swept: {sorted(overlap)}.")
    return sweep


def expand(sweep: dict[str, Any]) -> list[Run]:
    """The sweep's runs: the Cartesian product of its axes, first axis slowest."""
    arg_keys = tuple(sweep.get("arg_keys", DEFAULT_ARG_KEYS))
    fixed = dict(sweep.get("fixed", {}))
    keys = list(sweep["axes"])
    result = []
    for combo in itertools.product(*(sweep["axes"][k] for k in keys)):
        values = dict(zip(keys, combo, strict=True))
        settings = {**fixed, **values}
        arg = ",".join(f"{k}={v}" for k, v in settings.items() if k in arg_keys)
        overrides = {k: v for k, v in settings.items() if k not in arg_keys}
        steps = overrides.get("train.steps")
        result.append(
            Run(
                name="+".join(_slug(k, v) for k, v in values.items()) or "run",
                values=values,
                config_arg=f"{sweep['config']}:{arg}" if arg else sweep["config"],
                overrides=overrides,
                steps=None if steps is None else int(steps),
            )
        )
    return result


def run_config(sweep: dict[str, Any], run: Run):
    """The config train.py builds from `run`'s command line, as it records it in config.json.

    The same parser as train.py's flags reads the config file and the overrides, so a field or
    value that train.py would refuse is refused here, and `training.checks.check` applies the
    same numeric ranges.

    Raises:
      ValueError: one line naming the run and what is wrong (a misspelt field with its closest
        name, a value that does not parse, a number out of range).
    """
    path, _, arg = run.config_arg.partition(":")
    path = os.path.join(REPO, path)  # train.py runs in the repository's directory
    argv = ["train.py", f"--config={path}:{arg}" if arg else f"--config={path}"]
    base = _parse(run, argv)
    for key in run.overrides:
        _check_field(base, key, f"sweep run {run.name}")
    config = _parse(run, argv + [f"--config.{k}={v}" for k, v in run.overrides.items()])
    try:
        checks.check(config)
    except ValueError as e:
        raise ValueError(f"sweep run {run.name}: {e}") from None
    if config.get("data", {}).get("path"):  # train.py records the file it trained on so
        config.data.name = f"file:{os.path.abspath(os.path.join(REPO, config.data.path))}"
        config.data.path = ""
    return config


def _parse(run: Run, argv: list[str]):
    """The config absl's --config flag (config_flags, as in train.py) makes of `argv`."""
    from absl import flags as absl_flags
    from ml_collections import config_flags

    values = absl_flags.FlagValues()
    try:
        config_flags.DEFINE_config_file("config", None, flag_values=values, sys_argv=argv)
        values(argv)
    except (absl_flags.Error, ValueError) as e:
        raise ValueError(f"sweep run {run.name}: {_config_error(str(e))}") from None
    return values.config


def _check_field(config, key: str, where: str) -> None:
    """Raises ValueError if `key` ('train.steps') names no field of `config`."""
    parts = key.split(".")
    for depth, part in enumerate(parts):
        fields = list(config.keys()) if hasattr(config, "keys") else []
        if part not in fields:
            close = difflib.get_close_matches(part, fields, n=1)
            hint = f": did you mean {'.'.join([*parts[:depth], close[0]])!r}?" if close else "."
            raise ValueError(f"{where}: no such config field {key!r}{hint}")
        config = config[part]


def _config_error(message: str) -> str:
    """config_flags wraps a config file's error in a traceback: keep the error's own line."""
    if "Error whilst parsing config file" in message:
        errors = re.findall(r"^\w*(?:Error|Exception): (.+)$", message, re.M)
        if errors:
            return errors[-1]
    return " ".join(message.split())


def check_runs(sweep: dict[str, Any], root: pathlib.Path) -> None:
    """Checks every run of the sweep before any runs: its config, and its recipe if it trained.

    Raises:
      ValueError: one line naming the first run with a problem and the field (`run_config`),
        or a run that has trained under another recipe than the sweep's (`recipe.check_resume`).
    """
    for run in expand(sweep):
        config = run_config(sweep, run)
        try:
            recipe.check_resume(root / sweep["name"] / run.name, config)
        except ValueError as e:
            raise ValueError(f"sweep run {run.name}: {e}") from None


def run_status(workdir: pathlib.Path, run: Run) -> str:
    """'complete' (results.json at the configured steps), 'partial' (started) or 'new'."""
    results = runs.load_results(workdir)
    if results is not None:
        steps = run.steps
        if steps is None and (workdir / runs.CONFIG_FILE).exists():
            steps = runs.load_config(workdir).train.steps
        if results.get("step") == steps:
            return "complete"
    return "partial" if workdir.exists() and any(workdir.iterdir()) else "new"


def gather(sweep: dict[str, Any], root: pathlib.Path) -> pathlib.Path:
    """Writes ROOT/NAME/results.csv, one row per run of the sweep, and returns its path."""
    planned = expand(sweep)
    base = root / sweep["name"]
    base.mkdir(parents=True, exist_ok=True)
    axis_keys = list(sweep["axes"])
    rows = []
    for run in planned:
        workdir = base / run.name
        status = run_status(workdir, run)
        row = {"run": run.name, "status": status, **{k: run.values[k] for k in axis_keys}}
        metrics = {}
        if status == "complete":
            metrics = runs.load_results(workdir)
            config = runs.load_config(workdir)
            row["tokenizer_name"] = config.tokenizer
            row["context_length"] = config.model.context_length
        row.update({k: metrics.get(k, "") for k in CSV_FIELDS})
        rows.append(row)
    fields = ["run", "status", *axis_keys, "tokenizer_name", "context_length", *CSV_FIELDS]
    out = base / "results.csv"
    runs.write_csv(out, rows, fields)
    return out


def run_local(sweep: dict[str, Any], root: pathlib.Path, python: str) -> int:
    """Runs the sweep's incomplete runs one after another; returns the number that failed."""
    planned = expand(sweep)
    failed = []
    for i, run in enumerate(planned, 1):
        workdir = root / sweep["name"] / run.name
        status = run_status(workdir, run)
        if status == "complete":
            print(f"[{i}/{len(planned)}] {run.name}: complete, skipped", flush=True)
            continue
        verb = "resuming" if status == "partial" else "starting"
        print(f"[{i}/{len(planned)}] {run.name}: {verb}", flush=True)
        t0 = time.perf_counter()
        code = subprocess.call(run.command(workdir, python), cwd=REPO)
        took = time.perf_counter() - t0
        if code != 0:
            failed.append(run.name)
            print(f"[{i}/{len(planned)}] {run.name}: FAILED (exit {code}) after {took:.0f} s")
        else:
            print(f"[{i}/{len(planned)}] {run.name}: done in {took:.0f} s", flush=True)
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}")
    return len(failed)


def slurm_options(sweep: dict[str, Any], flag_values: dict[str, Any]):
    """The sweep's own Slurm options with the flags that were given on top.

    Args:
      sweep: from `load_sweep`.
      flag_values: the --slurm.* flags given on the command line, {option: value}.

    Raises:
      ValueError: an unknown or bad option, or no GPUs where the sweep asks for them.
    """
    from cluster import slurm

    asked = dict(sweep.get("slurm", {}))
    values = {**asked, **flag_values}
    if asked.get("gpus_per_run", 0) > 0 and values.get("gpus_per_run") == 0:
        raise ValueError(
            f"the sweep asks for {asked['gpus_per_run']} GPU(s) per run (its 'slurm' entry): "
            "--slurm.gpus_per_run=0 would run it without them."
        )
    return slurm.SlurmOptions.from_dict(values)


def submit_slurm(sweep: dict[str, Any], root: pathlib.Path, options, python: str):
    """Submits the sweep's incomplete runs as one Slurm job array.

    Returns:
      The `cluster.slurm.Submission`, or None when every run is complete.

    Raises:
      cluster.slurm.SlurmUnavailable, SlurmError: nothing was submitted (one-line messages).
    """
    from cluster import slurm

    todo = []
    for run in expand(sweep):
        workdir = root / sweep["name"] / run.name
        if run_status(workdir, run) != "complete":
            command = run.command(workdir, python, distributed=options.num_tasks > 1)
            todo.append((run.name, command, workdir))
    if not todo:
        return None
    return slurm.submit_array(todo, options, root / sweep["name"] / slurm.LOG_DIR, cwd=REPO)


def status(sweep: dict[str, Any], root: pathlib.Path) -> list[dict[str, Any]]:
    """One row per run: name, state (new / partial / queued / running / complete / failed),
    reason, step reached and the last eval bits per byte (from its metrics.jsonl)."""
    from cluster import slurm

    state_files = slurm.submissions(root / sweep["name"] / slurm.LOG_DIR)
    jobs = slurm.query(state_files) if state_files else {}
    rows = []
    for run in expand(sweep):
        workdir = root / sweep["name"] / run.name
        state, reason = run_status(workdir, run), ""
        job = jobs.get(run.name)
        if state == "complete" and job is not None and job.state in ("queued", "running"):
            # results.json is written; the job still finishes (its exit status is not recorded).
            state, reason = job.state, "results written; its job is finishing"
        elif state != "complete" and job is not None:
            state, reason = job.state, job.reason
            if state == "complete":  # its command exited 0, yet results.json is short of steps
                state, reason = "failed", "exited 0 before train.steps (see its log)"
        lines = runs.read_jsonl(workdir / runs.METRICS_FILE)
        evals = [r["eval_bits_per_byte"] for r in lines if "eval_bits_per_byte" in r]
        step = max((r["step"] for r in lines), default=0)
        rows.append(
            {"run": run.name, "state": state, "step": step, "steps": run.steps,
             "eval_bits_per_byte": evals[-1] if evals else None, "reason": reason}
        )  # fmt: skip
    return rows


def format_status(rows: list[dict[str, Any]]) -> str:
    """The status rows as an aligned table."""
    width = max([len("run"), *(len(r["run"]) for r in rows)])
    lines = [f"{'run':<{width}}  {'state':<8}  {'step':>13}  {'eval bpb':>8}  reason"]
    for r in rows:
        step = f"{r['step']}/{r['steps']}" if r["steps"] else str(r["step"])
        bpb = f"{r['eval_bits_per_byte']:.4f}" if r["eval_bits_per_byte"] is not None else "-"
        lines.append(f"{r['run']:<{width}}  {r['state']:<8}  {step:>13}  {bpb:>8}  {r['reason']}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    cli.no_arguments(argv)
    FLAGS = flags.FLAGS  # noqa: N806
    sweep = load_sweep(FLAGS.sweep)
    root = pathlib.Path(FLAGS.root).resolve()
    options = slurm_options(sweep, slurm.given_flags(FLAGS))
    check_runs(sweep, root)  # every mode: nothing is run or submitted that train.py refuses
    if FLAGS.mode == "print":
        for run in expand(sweep):
            workdir = root / sweep["name"] / run.name
            print(shlex.join(run.command(workdir, distributed=options.num_tasks > 1)))
        return 0
    if FLAGS.mode == "slurm":
        submission = submit_slurm(sweep, root, options, FLAGS.python)
        if submission is None:
            print("Every run is complete: nothing to submit.")
        else:
            print(f"Submitted job array {submission.job_id} ({submission.state_file.parent}).")
            print(f"Watch: python sweep.py --sweep={FLAGS.sweep} --mode=status --root={FLAGS.root}")
        return 0
    if FLAGS.mode == "status":
        print(format_status(status(sweep, root)))
        return 0
    failed = run_local(sweep, root, FLAGS.python) if FLAGS.mode == "local" else 0
    out = gather(sweep, root)
    print(f"Results of {len(expand(sweep))} runs: {out}")
    return 1 if failed else 0


def _define_flags() -> None:
    flags.DEFINE_string("sweep", None, "Sweep file, e.g. configs/sweeps/scaling.py.", required=True)
    flags.DEFINE_enum(
        "mode", "print", ["local", "print", "gather", "slurm", "status"], "What to do."
    )
    flags.DEFINE_string("root", "runs", "Runs live in ROOT/NAME/RUN.")
    flags.DEFINE_string("python", sys.executable, "Interpreter the runs use.")
    slurm.define_flags()


if __name__ == "__main__":
    cli.run(lambda argv: sys.exit(main(argv)), define_flags=_define_flags)
