r"""Compile and run time of the integer model's parallel pass at several query-block sizes.

  python bench/query_blocks.py [--size=200K] [--context=2048] [--rows=4] \
      [--query_blocks=2048,512,256,64] [--max_query_blocks=8] [--layers=N] [--out=FILE.jsonl]

`integer.tables` attends in blocks of about `query_block` queries, each against only the keys it
can see (at most `integer.MAX_QUERY_BLOCKS` blocks, or `--max_query_blocks` here). For each
`--query_blocks` value this lowers and compiles the pass for `--rows` random chunks of
`--context` bytes through a model of the preset `--size` with freshly initialised weights
(timing does not depend on what was learnt; `--layers` overrides its depth, to see how compile
time grows with it), then times the compiled pass (best of `--repeats`) and checks that its
tables equal those of the first value, bit for bit. Prints one JSON line per value and a table.
"""

import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from bench.timing import best_time  # noqa: E402
from configs import default  # noqa: E402
from models import integer, transformer  # noqa: E402

FLAGS = flags.FLAGS


def measure(
    size: str,
    context: int,
    rows: int,
    query_blocks: list[int],
    repeats: int = 2,
    layers: int | None = None,
):
    """One dict per query-block size: layers, blocks, compile_seconds, seconds, same_tables."""
    config = default.get_config(f"size={size}")
    cfg = transformer.TransformerConfig.from_config(config.model, vocab_size=256)
    cfg = dataclasses.replace(cfg, context_length=context, num_layers=layers or cfg.num_layers)
    params = integer.quantize_params(cfg, transformer.init_params(cfg, jax.random.key(0)))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (rows, context)), jnp.int32)
    first, out = None, []
    for block in query_blocks:
        start = time.perf_counter()
        compiled = (
            jax.jit(integer.tables, static_argnames="query_block")
            .lower(params, tokens, query_block=block)
            .compile()
        )
        compile_seconds = time.perf_counter() - start
        jax.block_until_ready(compiled(params, tokens))  # a first call, untimed
        seconds, tables = best_time(
            lambda c=compiled: c(params, tokens).block_until_ready(), repeats
        )
        tables = np.asarray(tables)
        first = tables if first is None else first
        out.append({
            "size": size, "layers": cfg.num_layers, "context": context, "rows": rows,
            "query_block": block,
            "blocks": len(integer._query_blocks(context, block)),
            "compile_seconds": compile_seconds, "seconds": seconds,
            "same_tables": bool(np.array_equal(tables, first)),
            "device": jax.devices()[0].device_kind,
        })  # fmt: skip
    return out


def main(argv):
    import cli

    cli.no_arguments(argv)
    blocks = cli.numbers(FLAGS.query_blocks, "query_blocks", int, "2048,64")
    if FLAGS.max_query_blocks is not None:
        integer.MAX_QUERY_BLOCKS = FLAGS.max_query_blocks  # read when `tables` is traced
    if FLAGS.context < 1 or FLAGS.rows < 1 or FLAGS.repeats < 1 or min(blocks, default=0) < 1:
        raise ValueError("--context, --rows, --repeats and --query_blocks take integers >= 1.")
    rows = measure(FLAGS.size, FLAGS.context, FLAGS.rows, blocks, FLAGS.repeats, FLAGS.layers)
    lines = [json.dumps(row) for row in rows]
    if FLAGS.out:
        with open(FLAGS.out, "a") as f:
            f.write("".join(line + "\n" for line in lines))
    print("\n".join(lines))
    print("\n| layers | query block | blocks | compile s | run s | same tables |")
    print("|--:|--:|--:|--:|--:|:-:|")
    for r in rows:
        same = "yes" if r["same_tables"] else "NO"
        print(f"| {r['layers']} | {r['query_block']} | {r['blocks']} | "
              f"{r['compile_seconds']:.2f} | {r['seconds']:.2f} | {same} |")  # fmt: skip


def _define_flags():
    flags.DEFINE_string("size", "200K", "Model preset (configs/default.py).")
    flags.DEFINE_integer("context", 2048, "Chunk length in bytes (the model's context).")
    flags.DEFINE_integer("rows", 4, "Chunks in one call of the pass.")
    flags.DEFINE_list(
        "query_blocks", ["2048", "64"], "Query-block sizes; the first is the reference."
    )
    flags.DEFINE_integer("max_query_blocks", None, "Overrides the model's cap on blocks.", 1)
    flags.DEFINE_integer("layers", None, "Overrides the preset's number of layers.", 1)
    flags.DEFINE_integer("repeats", 2, "Timed calls of each compiled pass (the least is kept).")
    flags.DEFINE_string("out", "", "Append the JSON lines to this file too.")


if __name__ == "__main__":
    import cli

    cli.run(main, define_flags=_define_flags)
