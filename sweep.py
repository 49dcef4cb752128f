r"""Runs a sweep of training runs declared in a sweep file, or prints them for a scheduler.

  python sweep.py --sweep=configs/sweeps/scaling.py --mode=local    # run them one after another
  python sweep.py --sweep=configs/sweeps/scaling.py --mode=print    # one command per line
  python sweep.py --sweep=configs/sweeps/scaling.py --mode=gather   # only write the CSV

A sweep file defines `get_sweep()` returning a dict:

  config:   the base config file, e.g. 'configs/default.py' (no ':arg').
  name:     the sweep's name; runs live in ROOT/NAME/RUN (ROOT is --root, default `runs`).
  fixed:    {key: value} given to every run.
  axes:     {key: [values]}; the sweep is their Cartesian product, in declaration order.
  arg_keys: keys that go into the config file's arg string (default: size, dataset, tokenizer);
            every other key is a config field, passed as --config.KEY=VALUE.

A run is complete when its workdir holds train.py's results.json for the configured number of
steps; complete runs are skipped, interrupted ones resume from their newest checkpoint (train.py
does that by itself). After `local` (and in `gather`) the runs' results are collected into
ROOT/NAME/results.csv: one row per run with its axis values, status and final metrics.
"""

import dataclasses
import importlib.util
import itertools
import pathlib
import shlex
import subprocess
import sys
import time
from typing import Any

import runs

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

    def command(self, workdir: pathlib.Path, python: str = "python") -> list[str]:
        args = [python, "train.py", f"--config={self.config_arg}"]
        args += [f"--config.{k}={v}" for k, v in self.overrides.items()]
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
    spec.loader.exec_module(module)
    sweep = dict(module.get_sweep())
    unknown = set(sweep) - {"config", "name", "fixed", "axes", "arg_keys"}
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
        code = subprocess.call(run.command(workdir, python))
        took = time.perf_counter() - t0
        if code != 0:
            failed.append(run.name)
            print(f"[{i}/{len(planned)}] {run.name}: FAILED (exit {code}) after {took:.0f} s")
        else:
            print(f"[{i}/{len(planned)}] {run.name}: done in {took:.0f} s", flush=True)
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}")
    return len(failed)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", required=True, help="sweep file, e.g. configs/sweeps/x.py")
    parser.add_argument("--mode", choices=("local", "print", "gather"), default="print")
    parser.add_argument("--root", default="runs", help="runs live in ROOT/NAME/RUN")
    parser.add_argument("--python", default=sys.executable, help="interpreter for local runs")
    args = parser.parse_args(argv)
    try:
        sweep = load_sweep(args.sweep)
    except (FileNotFoundError, ValueError) as e:
        print(f"sweep.py: {e}", file=sys.stderr)
        return 2
    root = pathlib.Path(args.root)
    if args.mode == "print":
        for run in expand(sweep):
            workdir = root / sweep["name"] / run.name
            print(shlex.join(run.command(workdir)))
        return 0
    failed = run_local(sweep, root, args.python) if args.mode == "local" else 0
    out = gather(sweep, root)
    print(f"Results of {len(expand(sweep))} runs: {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
