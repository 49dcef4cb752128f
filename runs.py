"""A run directory and the results files the tools write, without JAX; `python runs.py [DIR...]`
summarises run directories.

One place for the names of a training run's files and for the small I/O every tool shares:
train.py writes runs, sweep.py gathers them, eval_compress.py and the analyses write tables.
Importing this module imports neither JAX nor orbax, so `sweep.py --mode=print` and the
analyses start fast; checkpoints are read by `training.checkpoints`.

A run directory holds:

| file | written by | what |
|---|---|---|
| `config.json` | train.py at start | the run's config |
| `metrics.jsonl` | train.py, one line per log / eval / test | `step` plus metrics |
| `results.json` | train.py once all `train.steps` are done | final metrics; the run is complete |
| `tokenizer.json` | train.py, trained tokenizers only | the BPE vocabulary |
| `checkpoints/` | orbax | params, optimizer state, step, sampler state |
"""

import csv
import json
import os
import pathlib
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

import ml_collections

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
TOKENIZER_FILE = "tokenizer.json"
CHECKPOINT_DIR = "checkpoints"


def load_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """Returns the config a run in `workdir` was trained with.

    Raises:
      FileNotFoundError: `workdir` holds no config.json.
    """
    path = pathlib.Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{workdir} is not a training run: it has no {CONFIG_FILE}.")
    config = json.loads(path.read_text())
    if "model_type" in config and "tokenizer" not in config:  # Hugging Face's config.json
        raise FileNotFoundError(
            f"{workdir} is not a training run but a Hugging Face model directory: name it "
            f"hf:{workdir}."
        )
    return ml_collections.ConfigDict(config)


def load_results(workdir: str | os.PathLike) -> dict[str, Any] | None:
    """Returns a run's final metrics (results.json), or None if the run is not complete."""
    path = pathlib.Path(workdir) / RESULTS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def load_tokenizer(workdir: str | os.PathLike, config: ml_collections.ConfigDict | None = None):
    """Returns the tokenizer a run was trained with (a trained BPE is read from the run)."""
    from data import tokenizers

    config = config or load_config(workdir)
    return tokenizers.get_tokenizer(
        config.tokenizer, cache_path=pathlib.Path(workdir) / TOKENIZER_FILE
    )


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` so that readers see the old file or the whole new one."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Appends one JSON line to `path`."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Returns the records of a JSON-lines file ([] if it does not exist)."""
    path = pathlib.Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_csv(
    path: str | os.PathLike,
    rows: Iterable[dict[str, Any]],
    fields: Sequence[str] = (),
    float_format: str = "",
) -> None:
    """Writes `rows` to `path` atomically, `fields` as columns.

    Args:
      path: output file.
      rows: dicts; keys outside `fields` are left out, missing ones left empty.
      fields: columns; default the keys of all rows in order of appearance.
      float_format: e.g. '.6g' to round floats; '' writes them as Python prints them.
        Nothing is written when there are neither rows nor fields.
    """
    rows = list(rows)
    fields = list(fields) or list(dict.fromkeys(k for r in rows for k in r))
    if not fields:
        return
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore", restval="")
        writer.writeheader()
        for row in rows:
            if float_format:
                row = {k: _format(v, float_format) for k, v in row.items()}
            writer.writerow(row)
    os.replace(tmp, path)


def _format(value: Any, float_format: str) -> Any:
    return format(value, float_format) if isinstance(value, float) else value


# ---------------------------------------------------------------------------------------------
# `python runs.py [DIR ...]`: a summary of run directories.


def find_runs(roots: Sequence[str | os.PathLike]) -> list[pathlib.Path]:
    """Run directories (holding config.json) at or under `roots`, sorted."""
    found = set()
    for root in map(pathlib.Path, roots):
        if (root / CONFIG_FILE).is_file():
            found.add(root)
        elif root.is_dir():
            found.update(p.parent for p in root.rglob(CONFIG_FILE) if p.parent.is_dir())
        else:
            raise FileNotFoundError(f"no run directory or folder of runs at {root}.")
    return sorted(found)


def checkpoint_steps(workdir: str | os.PathLike) -> list[int]:
    """The steps of a run's checkpoints (orbax's step directories), without reading them."""
    directory = pathlib.Path(workdir) / CHECKPOINT_DIR
    steps = [int(p.name) for p in directory.glob("*") if p.is_dir() and p.name.isdigit()]
    return sorted(steps)


def summary(workdir: pathlib.Path) -> dict[str, Any]:
    """One run's row: name, size, step reached of its steps, held-out bits/byte, checkpoints."""
    config = json.loads((workdir / CONFIG_FILE).read_text())
    lines = read_jsonl(workdir / METRICS_FILE)
    results = load_results(workdir) or {}
    evals = [r["eval_bits_per_byte"] for r in lines if "eval_bits_per_byte" in r]
    return {
        "run": str(workdir),
        "size": architecture(config),
        "step": max((r["step"] for r in lines), default=0),
        "steps": config.get("train", {}).get("steps"),
        "complete": bool(results),
        "test_bits_per_byte": results.get("test_bits_per_byte"),
        "eval_bits_per_byte": evals[-1] if evals else None,
        "checkpoints": checkpoint_steps(workdir),
    }


_SHAPE = ("num_layers", "width", "num_heads", "mlp_ratio", "context_length")


def architecture(config: dict[str, Any]) -> str:
    """A run's model as its size preset's name ('200K') where the model is exactly that preset's,
    else its shape: layers x width, heads, context ('2x48 h2 ctx64', with ' mlp2' when the MLP
    ratio is not 4).

    Args:
      config: the run's config.json, as a dict.
    """
    model, size = config.get("model", {}), str(config.get("size", ""))
    shape = [model.get(k) for k in _SHAPE]
    if None in shape:
        return size or "-"
    if size and shape == _preset_shape(config, size):
        return size
    layers, width, heads, mlp_ratio, context = shape
    mlp = f" mlp{mlp_ratio:g}" if mlp_ratio != 4 else ""
    return f"{layers}x{width} h{heads} ctx{context}{mlp}"


def _preset_shape(config: dict[str, Any], size: str) -> list | None:
    """The model shape the run's config family gives preset `size` (None: no such preset)."""
    from configs import addition, default  # the presets; imported only to name a run's size

    data = config.get("data", {})
    try:
        if "num_digits" in data:  # train_addition.py's runs
            made = addition.get_config(f"size={size},digits={data['num_digits']}")
        else:
            made = default.get_config(f"size={size}")
    except (ValueError, KeyError):
        return None
    return [made.model.get(k) for k in _SHAPE]


def format_summary(rows: list[dict[str, Any]]) -> str:
    width = max([3, *(len(r["run"]) for r in rows)])
    size = max([4, *(len(r["size"]) for r in rows)])
    lines = [
        f"{'run':<{width}}  {'size':>{size}}  {'step':>13}  {'test bpb':>8}  {'eval bpb':>8}  ckpts"
    ]
    for r in rows:
        step = f"{r['step']}/{r['steps']}" + (" done" if r["complete"] else "")
        fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else "-"  # noqa: E731
        ckpts = ",".join(map(str, r["checkpoints"])) or "-"
        lines.append(
            f"{r['run']:<{width}}  {r['size']:>{size}}  {step:>13}  "
            f"{fmt(r['test_bits_per_byte']):>8}  {fmt(r['eval_bits_per_byte']):>8}  {ckpts}"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    rows = [summary(w) for w in find_runs(argv[1:] or ["runs"])]
    print(format_summary(rows) if rows else "No runs found.")


if __name__ == "__main__":
    import cli

    cli.run(main)
