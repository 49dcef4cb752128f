"""Whether a run may go on under a config: its recipe must be the one it was trained with.

A run's recipe is everything in its config that changes the numbers it trains to: the model,
data, tokenizer, optimiser and schedule, batch size, seed and number of steps. The rest is
operational (`OPERATIONAL`: progress, the log, eval and checkpoint intervals, checkpoints kept,
distributed, wandb...) and may change on any resume. Every field not listed there is recipe, so a
field added to the configs later is compared until someone says otherwise.

A resume whose recipe differs is refused with one line naming each difference, unless
`train.extend=True` says it is meant: then `train.steps` may be raised (the learning-rate
schedule stretches to the new length, so on a finished run the rate rises again) and the
optimiser's settings other than its name may change, and config.json records each such change
in its `history`. config.json therefore always describes what the run was trained with.

Imports neither JAX nor the trainers: sweep.py checks its runs with it before submitting them.
"""

import json
import os
import pathlib
import time
from typing import Any

import runs
from training import checks

# Fields (or whole sections) that may change on any resume: they change no number the run
# trains to. `history` is config.json's own record of extensions.
OPERATIONAL = (
    "train.progress",
    "train.log_every",
    "train.eval_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.eval_batch_size",  # how many held-out rows at once: memory, not the numbers
    "train.extend",
    "data.cache_dir",
    "distributed",
    "wandb",
    "history",
)

# What a field an older run's config.json lacks meant when it was written: the model's defaults
# (models.transformer.TransformerConfig; tests/recipe_test.py holds the two together).
OLDER_RUN_DEFAULTS = {
    "model": {
        "num_layers": 4,
        "width": 256,
        "num_heads": 8,
        "mlp_ratio": 4,
        "context_length": 2048,
        "norm": "post",
        "rope_base": 10_000.0,
        "dtype": "float32",
        "attention": "auto",
        "emb_init_scale": 0.02,
        "positions": "rotary",
    }
}

HISTORY_KEY = "history"
EXTEND_HINT = (
    "--config.train.extend=True to go on under the new settings (recorded in config.json's "
    "history; a raised train.steps stretches the learning-rate schedule to the new length, so "
    "the rate goes up from where it was)"
)


def is_operational(path: str) -> bool:
    """Whether the config field `path` ('train.log_every') may change on a resume."""
    return any(path == key or path.startswith(f"{key}.") for key in OPERATIONAL)


def changes(saved: dict[str, Any], now: dict[str, Any]) -> dict[str, list]:
    """The recipe fields whose values differ, {path: [saved value, value now]}.

    Args:
      saved: the run's config.json.
      now: this invocation's config as a dict (`json.loads(config.to_json())`).

    Only fields `now` has are compared (the current configs define the recipe). A field the
    saved config lacks means `OLDER_RUN_DEFAULTS`' value, or else matches a false value now
    (0, '', False: an option that did not exist was off). `model.dtype='auto'` matches any saved
    dtype: the trainer resolves 'auto' to the dtype a run was trained with.
    """
    old, new = checks.flatten_paths(saved), checks.flatten_paths(now)
    defaults = checks.flatten_paths(OLDER_RUN_DEFAULTS)
    out = {}
    for path, value in new.items():
        if is_operational(path) or (path == "model.dtype" and value == "auto"):
            continue
        before = old.get(path, defaults.get(path))
        if before is None and not value:
            continue
        if before != value:
            out[path] = [before, value]
    return out


def differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """`changes` as 'path: saved -> now' lines, e.g. "optim.peak_lr: 0.01 -> 0.02"."""
    return [f"{path}: {a!r} -> {b!r}" for path, (a, b) in changes(saved, now).items()]


def extend_refusal(diffs: dict[str, list]) -> str | None:
    """Why `train.extend=True` cannot make these changes, or None if it can."""
    for path, (before, after) in diffs.items():
        if path == "train.steps":
            if not isinstance(before, int) or after <= before:
                return f"train.extend only raises train.steps ({before!r} -> {after!r})"
        elif not path.startswith("optim.") or path == "optim.name":
            return f"train.extend cannot change {path}"
    return None


def has_trained(workdir: str | os.PathLike) -> bool:
    """Whether `workdir` holds anything trained: a checkpoint or final results."""
    workdir = pathlib.Path(workdir)
    return bool(runs.checkpoint_steps(workdir)) or (workdir / runs.RESULTS_FILE).exists()


def check_resume(workdir: str | os.PathLike, config) -> dict[str, list]:
    """Refuses to go on with a run in `workdir` under another recipe than its own.

    Args:
      workdir: the run directory; a run that has trained nothing yet (no checkpoint, no
        results) may start over under any config.
      config: this invocation's config (a ConfigDict, or a dict).

    Returns:
      The recipe changes `train.extend=True` allows and asks for, {path: [saved, now]}, to be
      recorded (`write_config` does); {} when the recipe is the saved one.

    Raises:
      ValueError: one line naming each difference and the way out.
    """
    workdir = pathlib.Path(workdir)
    path = workdir / runs.CONFIG_FILE
    if not path.exists() or not has_trained(workdir):
        return {}
    now = _as_dict(config)
    diffs = changes(json.loads(path.read_text()), now)
    if not diffs:
        return {}
    listed = "; ".join(f"{p}: {a!r} -> {b!r}" for p, (a, b) in diffs.items())
    refusal = extend_refusal(diffs)
    extend = bool(now.get("train", {}).get("extend"))
    if refusal is None and extend:
        return diffs
    way_out = "give the saved settings (config.json) or use a new --workdir"
    if refusal is None:
        way_out += f", or add {EXTEND_HINT}"
    elif extend:
        way_out += f" ({refusal})"
    raise ValueError(
        f"{workdir} holds a run with another model or data or training recipe ({listed}): "
        f"{way_out}."
    )


def write_config(workdir: str | os.PathLike, config, step: int) -> dict[str, list]:
    """Writes config.json for a run (re)starting at `step`, recording an extension.

    The saved history is kept, and the recipe changes `check_resume` allows under
    `train.extend=True` are appended to it as {"step", "changes", "time"}.

    Returns:
      The changes recorded ({} if none).

    Raises:
      ValueError: as `check_resume`.
    """
    workdir = pathlib.Path(workdir)
    recorded = check_resume(workdir, config)
    path = workdir / runs.CONFIG_FILE
    history = json.loads(path.read_text()).get(HISTORY_KEY, []) if path.exists() else []
    if recorded:
        entry = {"step": step, "changes": recorded, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        history = [*history, entry]
    out = _as_dict(config)
    if history:
        out[HISTORY_KEY] = history
    runs.write_atomic(path, json.dumps(out, indent=2))
    return recorded


def _as_dict(config) -> dict[str, Any]:
    return json.loads(config.to_json()) if hasattr(config, "to_json") else dict(config)
