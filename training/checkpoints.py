"""Orbax checkpoints of a run: the training state with the data sampler's state, and params.

A checkpoint at step s holds {step, params, opt_state} and the sampler state {seed, next_step}
(the data order is a pure function of seed and step, so that is all a resume needs). Tools that
only use a trained model (compress.py, eval_compress.py, sample.py) read its params alone with
`restore_params`.
"""

import os
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

import runs
from models import transformer


def manager(workdir, keep: int | None = None, read_only=False) -> ocp.CheckpointManager:
    """The run's orbax CheckpointManager over workdir/checkpoints, keeping the newest `keep`."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only
    )
    directory = pathlib.Path(workdir).absolute() / runs.CHECKPOINT_DIR
    return ocp.CheckpointManager(directory, options=options)


def save(mngr: ocp.CheckpointManager, state, seed: int, step: int, seconds: float = 0.0) -> None:
    """Saves the state, the data sampler's state (seed, next step) and the training seconds."""
    mngr.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave({"seed": seed, "next_step": step, "seconds": seconds}),
        ),
        force=True,
    )


def restore(mngr: ocp.CheckpointManager, state, seed: int) -> tuple[Any, int, float]:
    """Returns (state, next step, seconds trained so far) from the newest checkpoint.

    Without a checkpoint: (`state`, 0, 0.0).

    Args:
      mngr: the run's manager.
      state: a state of the right structure, shapes and shardings (e.g. a fresh one).
      seed: the run's seed; the checkpoint's sampler state must belong to it.

    Raises:
      ValueError: the checkpoint's sampler state belongs to another seed.
    """
    if mngr.latest_step() is None:
        return state, 0, 0.0
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
    logging.info("Resumed from step %d.", start)
    return state, start, float(sampler.get("seconds", 0.0))


def available_steps(workdir: str | os.PathLike) -> list[int]:
    """The checkpoint steps a run holds, oldest first ([] if none)."""
    directory = pathlib.Path(workdir) / runs.CHECKPOINT_DIR
    if not directory.is_dir():
        return []
    with manager(workdir, read_only=True) as mngr:
        return sorted(mngr.all_steps())


def restore_params(workdir: str | os.PathLike, step: int | None = None):
    """Returns (model config, params, step) of the newest (or given) checkpoint in `workdir`.

    Raises:
      FileNotFoundError: not a run, no checkpoint, or no checkpoint at `step` (the message
        lists the available steps).
    """
    config = runs.load_config(workdir)
    tokenizer = runs.load_tokenizer(workdir, config)
    model_cfg = transformer.TransformerConfig.from_config(config.model, tokenizer.vocab_size)
    abstract = jax.eval_shape(lambda: transformer.init_params(model_cfg, jax.random.key(0)))
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    steps = available_steps(workdir)
    if not steps:
        raise FileNotFoundError(f"{workdir} has no checkpoint.")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise FileNotFoundError(
            f"{workdir} has no checkpoint at step {step}; it has steps "
            f"{', '.join(map(str, steps))}."
        )
    with manager(workdir, read_only=True) as mngr:
        restored = mngr.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item={"params": abstract},
                    restore_args=jax.tree_util.tree_map(
                        lambda _: ocp.ArrayRestoreArgs(sharding=device), {"params": abstract}
                    ),
                    partial_restore=True,
                )
            ),
        )
    return model_cfg, restored["state"]["params"], step
