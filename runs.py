"""A training run's directory: its saved config and orbax checkpoints.

Shared by train.py (which writes runs) and the tools that use trained models (compress.py).
"""

import json
import os
import pathlib

import jax
import ml_collections
import orbax.checkpoint as ocp

from data import tokenizers
from models import transformer

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"  # trained tokenizers (bpe:N) live with their run


def load_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """Returns the config a run in `workdir` was trained with."""
    path = pathlib.Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{workdir} is not a training run: it has no {CONFIG_FILE}.")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def load_tokenizer(workdir: str | os.PathLike, config: ml_collections.ConfigDict | None = None):
    """Returns the tokenizer a run was trained with (a trained BPE is read from the run)."""
    config = config or load_config(workdir)
    return tokenizers.get_tokenizer(
        config.tokenizer, cache_path=pathlib.Path(workdir) / TOKENIZER_FILE
    )


def checkpoint_manager(workdir, keep: int | None = None, read_only=False) -> ocp.CheckpointManager:
    """The run's orbax CheckpointManager over workdir/checkpoints, keeping the newest `keep`."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only
    )
    return ocp.CheckpointManager(pathlib.Path(workdir).absolute() / "checkpoints", options=options)


def restore_params(workdir: str | os.PathLike, step: int | None = None):
    """Returns (model config, params, step) of the newest (or given) checkpoint in `workdir`."""
    config = load_config(workdir)
    tokenizer = load_tokenizer(workdir, config)
    cfg = transformer.TransformerConfig.from_config(config.model, tokenizer.vocab_size)
    abstract = jax.eval_shape(lambda: transformer.init_params(cfg, jax.random.key(0)))
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    with checkpoint_manager(workdir, read_only=True) as mngr:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{workdir} has no checkpoint.")
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
    return cfg, restored["state"]["params"], step
