"""What several coder tests share: counting the coder's compiled calls, and what XLA allocates
for a group (the figure `LMCoder.memory_bytes` must cover)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from models import lm_coder


def count_calls(monkeypatch, name):
    """Counts calls of one of lm_coder's compiled programs."""
    calls, program = [], getattr(lm_coder, name)

    def counted(*args, **kwargs):
        calls.append(args[5] if len(args) > 5 else None)  # _block_jit: the first step
        return program(*args, **kwargs)

    monkeypatch.setattr(lm_coder, name, counted)
    return calls


def xla_bytes(coder):
    """What XLA allocates for a group (arguments, outputs and temporaries of the last block's
    program, parameters left out): the figure `memory_bytes` must cover."""
    lanes, length = coder.shape.lanes, coder.shape.chunk_tokens
    lane = jax.ShapeDtypeStruct((lanes,), jnp.int32)
    data = jax.ShapeDtypeStruct((lanes, coder.capacity_bytes), jnp.uint8)
    start = functools.partial(lm_coder._start_jit, net=coder.net, shape=coder.shape)
    carry = jax.eval_shape(lambda d, n, s: start(coder.params, d, n, s), data, lane, lane)
    first, last = coder.blocks()[-1]
    program = lm_coder._block_jit.lower(
        coder.params, carry, jax.ShapeDtypeStruct((lanes, length), jnp.int32), lane,
        jax.ShapeDtypeStruct((lanes,), bool), first, last, net=coder.net, shape=coder.shape,
    ).compile().memory_analysis()  # fmt: skip
    params = sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(coder.params))
    used = program.argument_size_in_bytes + program.output_size_in_bytes
    return used + program.temp_size_in_bytes - params
