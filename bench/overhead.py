r"""Where a compressed file's bytes go beyond the model's log-loss: quantisation, coder, container.

  python bench/overhead.py --run=RUN_DIR --datasets=pydocs:heldout,images,audio,random \
      --chunks=16 --lanes=16

For each dataset, `--chunks` chunks of the run's context are coded five ways: the float path
with one 256-symbol table per byte (`low_bits=0`), with each byte as two nibbles (`low_bits=4`),
with a bfloat16 or an int8 KV cache, and the portable integer path. Per chunk, in bytes:

* quantisation: the quantised tables' ideal code length minus the float model's log-loss;
* coder: the range coder's payload minus the quantised tables' ideal code length;
* container: compress.py's per-chunk metadata (its bit-packed lengths, each group's two crc32s),
  besides a fixed header (reported once) and a 36-byte trailer;

and the whole file's excess over the log-loss, in percent, without the fixed header.
"""

import io
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

_RUN = flags.DEFINE_string("run", None, "A train.py run directory.", required=True)
_DATASETS = flags.DEFINE_list("datasets", ["pydocs:heldout", "images", "audio", "random"], "")
_CHUNKS = flags.DEFINE_integer("chunks", 16, "Chunks per dataset.")
_LANES = flags.DEFINE_integer("lanes", 16, "Chunks coded together.")
_PATHS = flags.DEFINE_list("paths", [], "Coding paths to measure (default all).")
_OUT = flags.DEFINE_string("out", "", "Append JSON lines here too.")

PATHS = {  # the coder's shape options, and whether the model's integer twin codes
    "float, 1 table": ({"low_bits": 0}, False),
    "float, 2 nibbles": ({"low_bits": 4}, False),
    "float, bf16 cache": ({"kv_dtype": "bfloat16"}, False),
    "float, int8 cache": ({"kv_dtype": "int8"}, False),
    "integer (portable)": ({}, True),
}


def measure(model, chunks: list[bytes], path: str) -> dict:
    """Per-chunk overheads of one coding path over `chunks` (see the module docstring), for a
    `models.coding_model.CodingModel`."""
    from coding import container
    from models import lm_coder

    options, portable = PATHS[path]
    model = model.exact() if portable else model
    size = model.net.context_length
    shape = lm_coder.CoderShape(_LANES.value, size, **options)
    coder = lm_coder.LMCoder(model.net, model.params, shape)
    coded = list(coder.encode_chunks(chunks))
    file = io.BytesIO()
    writer = container.ContainerWriter(file, bytes(300), size, sum(map(len, chunks)), shape.lanes)
    for first in range(0, len(chunks), shape.lanes):
        group = coded[first : first + shape.lanes]
        writer.write_group([c.payload for c in group], b"".join(chunks[first : first + len(group)]))
    writer.finish(bytes(32))
    header = len(writer.header.encode())
    payload = sum(len(c.payload) for c in coded)
    table_bits = sum(c.table_bits for c in coded)
    return {
        "path": path,
        "chunks": len(chunks),
        "model_bits": sum(c.bits for c in coded),
        "table_bits": table_bits,
        "payload_bytes": payload,
        "file_bytes": writer.bytes_written,
        "header_bytes": header,
        "coder_bytes_per_chunk": (payload - table_bits / 8) / len(chunks),
        "container_bytes_per_chunk": (writer.bytes_written - header - 36 - payload) / len(chunks),
    }


def main(argv):
    del argv
    from compressors import language_model, model_names
    from data import sources

    lm = language_model.LanguageModelCompressor(_RUN.value)
    model = model_names.load(_RUN.value)
    size = lm.model_cfg.context_length
    rows = []
    for dataset in _DATASETS.value:
        chunks = list(sources.get_source(dataset).chunks(_CHUNKS.value, size))
        log_loss_bits = float(lm.log_loss(chunks, size).sum())
        for path in _PATHS.value or PATHS:
            row = {"dataset": dataset, **measure(model, chunks, path)}
            n = row["chunks"]
            row["log_loss_bits"] = log_loss_bits
            row["quantisation_bytes_per_chunk"] = (row["table_bits"] - log_loss_bits) / 8 / n
            row["file_excess_percent"] = 100 * (
                (row["file_bytes"] - row["header_bytes"]) / (log_loss_bits / 8) - 1
            )
            row["log_loss_bits_per_byte"] = log_loss_bits / sum(map(len, chunks))
            rows.append(row)
            print(json.dumps(row), flush=True)
            if _OUT.value:
                with open(_OUT.value, "a") as f:
                    f.write(json.dumps(row) + "\n")
    print(f"\n{'dataset':16} {'path':20} {'bpb':>6} {'quant.':>7} {'coder':>6} {'cont.':>6} "
          f"{'file vs log-loss':>17}   (bytes per chunk of {size})")  # fmt: skip
    for r in rows:
        print(
            f"{r['dataset']:16} {r['path']:20} {r['log_loss_bits_per_byte']:6.3f} "
            f"{r['quantisation_bytes_per_chunk']:7.2f} {r['coder_bytes_per_chunk']:6.2f} "
            f"{r['container_bytes_per_chunk']:6.2f} {r['file_excess_percent']:+16.2f}%"
        )
    print(f"Fixed header: {rows[0]['header_bytes']} bytes (with a 300-byte description).")


if __name__ == "__main__":
    app.run(main)
