"""The pieces of a training step: optimiser, mesh, state, the jitted step, host batches."""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from models import transformer


def make_optimizer(optim: ml_collections.ConfigDict, total_steps: int):
    """Returns the optax transformation for `config.optim`.

    'adamw': linear warmup to `peak_lr`, cosine decay to `final_lr_fraction * peak_lr`, global
    gradient clipping, decoupled weight decay on matrices only. 'adam_constant': the reference
    code's plain Adam at a constant `peak_lr` (use 1e-4 to match it).

    Raises:
      ValueError: an unknown optimiser name.
    """
    if optim.name == "adam_constant":
        return optax.adam(optim.peak_lr, b1=optim.b1, b2=optim.b2)
    if optim.name != "adamw":
        raise ValueError(f"optim.name must be 'adamw' or 'adam_constant', got {optim.name!r}.")
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optim.peak_lr,
        warmup_steps=max(1, min(optim.warmup_steps, total_steps - 1)),
        decay_steps=max(2, total_steps),
        end_value=optim.peak_lr * optim.final_lr_fraction,
    )
    decay_mask = lambda params: jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)  # noqa: E731
    return optax.chain(
        optax.clip_by_global_norm(optim.grad_clip_norm),
        optax.adamw(
            schedule, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay, mask=decay_mask
        ),
    )


def make_mesh() -> jax.sharding.Mesh:
    """A one-axis ('data') mesh over all devices: the batch is split, parameters replicated."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))


def init_state(model_cfg: transformer.TransformerConfig, tx, seed: int, mesh) -> dict[str, Any]:
    """Fresh training state {step, params, opt_state}, replicated over the mesh."""

    def init():
        params = transformer.init_params(model_cfg, jax.random.key(seed))
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

    return jax.jit(init, out_shardings=NamedSharding(mesh, P()))()


def make_train_step(model, tx, mesh, loss_mask: np.ndarray | None = None):
    """Returns the jitted `train_step(state, tokens) -> (state, metrics)`.

    The batch [batch, length] is split over the mesh's 'data' axis and `state` is donated.

    Args:
      model: a `transformer.Transformer`.
      tx: the optax transformation.
      mesh: from `make_mesh`.
      loss_mask: optional [length] weights of the positions in the loss (e.g. 0 for positions
        whose token is certain); None averages over every position.

    Returns:
      The step; metrics are the mean loss in nats per counted token and the gradient norm.
    """
    replicated = NamedSharding(mesh, P())

    def loss_fn(params, tokens):
        nll = transformer.token_nll(model.apply({"params": params}, tokens), tokens)
        if loss_mask is None:
            return nll.sum(axis=-1).sum() / tokens.size
        mask = jnp.asarray(loss_mask, nll.dtype)
        return (nll * mask).sum(axis=-1).sum() / (mask.sum() * tokens.shape[0])

    def train_step(state, tokens):
        loss, grads = jax.value_and_grad(loss_fn)(state["params"], tokens)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

    return jax.jit(
        train_step,
        in_shardings=(replicated, NamedSharding(mesh, P("data"))),
        out_shardings=replicated,
        donate_argnums=0,
    )


def host_rows(rows: np.ndarray) -> np.ndarray:
    """This process's share of a global batch that every process generated identically."""
    per_host = len(rows) // jax.process_count()
    start = jax.process_index() * per_host
    return rows[start : start + per_host]


def to_global(rows: np.ndarray, mesh) -> jax.Array:
    """The global batch split over the mesh's 'data' axis from a batch every process holds."""
    sharding = NamedSharding(mesh, P("data"))
    return jax.make_array_from_process_local_data(sharding, host_rows(rows))
