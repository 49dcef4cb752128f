"""metrics.jsonl, mirrored to Weights & Biases when configured."""

import json
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from absl import logging

import runs


class MetricsWriter:
    """Appends JSON lines to workdir/metrics.jsonl (process 0 only) and mirrors them to wandb."""

    def __init__(self, workdir: pathlib.Path, config: ml_collections.ConfigDict):
        self._path = pathlib.Path(workdir) / runs.METRICS_FILE
        self._primary = jax.process_index() == 0
        self._wandb = None
        if config.wandb.mode != "disabled" and self._primary:
            self._wandb = _init_wandb(config, workdir)

    def keep_only(self, keep: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """Drops the lines for which `keep` is false and returns the others' records.

        A resumed run logs the steps after its checkpoint again; this removes their old lines.
        Other processes than 0 return [].
        """
        if not self._primary:
            return []
        records = runs.read_jsonl(self._path)
        kept = [r for r in records if keep(r)]
        if len(kept) != len(records):
            runs.write_atomic(self._path, "".join(json.dumps(r) + "\n" for r in kept))
        return kept

    def write(self, record: dict[str, Any]) -> None:
        """Appends `record` (which has a 'step')."""
        if not self._primary:
            return
        runs.append_jsonl(self._path, record)
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
