r"""Exact lossless compression with a language model: one we trained, or a pretrained one on disk.

  python compress.py compress --model=RUN_DIR INPUT OUTPUT
  python compress.py decompress --model=RUN_DIR INPUT OUTPUT
  cat INPUT | python compress.py compress --model=RUN_DIR - - > OUTPUT
  python compress.py compress --model=hf:PATH INPUT OUTPUT      # e.g. Llama 2 7B on disk
  python compress.py compress --model=online:200K INPUT OUTPUT  # learns as it codes, no weights
  python compress.py compress --model=online:RUN_DIR INPUT OUTPUT  # starts from a run, learns on

RUN_DIR is a training run's workdir (train.py); PATH a Hugging Face model directory (config.json,
*.safetensors, tokenizer.json or tokenizer.model; models/pretrained.py lists the architectures;
compressors/model_names.py reads the names; compressors/lm_stream.py is the library). A
pretrained model codes each chunk's tokens (data/pretrained_tokenizers.py: UTF-8 text, else Latin-1,
else the tokenizer's byte tokens; a chunk with more tokens than `--chunk_size` + 1, or than the
context, is coded as byte tokens, or stored raw by a tokenizer without them) on the float path,
under the whole vocabulary (`--top_k=0`, the default) or the paper's top-k tables. Chunks are 2048
bytes by default (the paper's), at most the context.

Any bytes work: text, images, audio, binary, empty files. Input is read and output written one group
of `--lanes` chunks at a time, so files larger than memory stream through. A chunk the model would
not make shorter is stored as it is, so no file grows by more than a few bytes per chunk. Output
files appear only when complete (`--force` to replace one that exists, never the input; a FIFO or
a device such as /dev/null is written into, as standard output is); on any error, Ctrl-C or
SIGTERM the command prints one line, exits non-zero and leaves no output file behind. With `-` the
input is read from standard input (spooled to a temporary file) and the output written to standard
output, the summary then going to standard error; decompressing to standard output writes data
before the final checksum can be checked, so a mismatch found at the end exits with status 1 and
says so.

Streams of the float path (`--noportable`, and every hf: model) decode exactly only where the
model's floats are the same as the encoder's: the same run and checkpoint, jax version, kind of
device, CPU instruction set and numerics flags (models/numerics.py). The stream records them and
decompression refuses a mismatch up front, naming it. See models/lm_coder.py for how encoder and
decoder share their tables."""

import json
import sys

from absl import app, flags

import allocator
import cli
import paths

if __name__ == "__main__":  # the command, not a module importing it: before JAX's threads allocate
    allocator.keep_freed_memory()  # 1.5x faster online coding on a CPU
from coding import container  # noqa: E402
from compressors import lm_stream  # noqa: E402
from models import numerics  # noqa: E402


def _rate(s: dict) -> str:
    steady = s.get("steady_mb_per_s")
    later = f" ({steady:.3f} after the first group, which compiles)" if steady else ""
    return f"{s['mb_per_s']:.3f} MB/s{later}"


def _summary(mode: str, s: dict, input_path: str, output_path: str) -> str:
    if mode == "decompress":
        return f"{output_path}: {s['raw_bytes']:,} bytes, {_rate(s)}, verified"
    if not s["raw_bytes"]:
        return f"{input_path}: empty, {s['compressed_bytes']:,} bytes of container"
    raw = f", {s['raw_chunks']} of {s['num_chunks']} chunks stored raw" if s["raw_chunks"] else ""
    # The ideal code length is the float model's log-loss only on the float path; on the
    # portable one it is that of the integer model's tables.
    ideal = "integer tables' ideal" if s.get("path") == "integer" else "model's log-loss"
    return (
        f"{input_path}: {s['raw_bytes']:,} -> {s['compressed_bytes']:,} bytes, ratio "
        f"{s['ratio']:.4f}, {s['bits_per_byte']:.4f} bits/byte ({ideal} "
        f"{s['ideal_bits'] / s['raw_bytes']:.4f}){raw}, {_rate(s)}"
    )


def main(argv):
    FLAGS = flags.FLAGS  # noqa: N806
    if len(argv) != 4 or argv[1] not in ("compress", "decompress"):
        raise app.UsageError(
            "usage: compress.py compress|decompress --model=RUN_DIR|hf:PATH|online:SIZE|"
            "online:RUN_DIR INPUT OUTPUT"
        )
    mode, input_path, output_path = argv[1:]
    if not FLAGS.model and mode == "compress":
        raise app.UsageError(
            "give the model: --model=RUN_DIR (a training run), hf:PATH or online:SIZE."
        )
    model = FLAGS.model or None  # decompress: an online stream names its model itself
    if FLAGS.json:  # refused before any work: never the input or the output
        if FLAGS.json == "-":
            raise app.UsageError("--json=-: give a file (the summary line goes to the terminal).")
        for name, path in (("INPUT", input_path), ("OUTPUT", output_path)):
            if path != "-" and paths.same_path(FLAGS.json, path):
                raise app.UsageError(f"--json={FLAGS.json} is {name}: give another file.")
        try:
            paths.check_output(FLAGS.json, force=True)
        except (OSError, ValueError) as e:
            raise app.UsageError(f"--json: {e}") from None
    numerics.configure_coding()  # before JAX starts its backend
    cli.quiet_logging()
    common = {"step": FLAGS.step, "progress": FLAGS.progress, "force": FLAGS.force}
    if mode == "compress":
        portable = FLAGS.portable if FLAGS["portable"].present else None  # None: the model's
        s = lm_stream.compress_file(
            model,
            input_path,
            output_path,
            FLAGS.lanes,
            FLAGS.chunk_size,
            portable=portable,
            kv_dtype=FLAGS.kv_cache,
            top_k=FLAGS.top_k,
            dtype=FLAGS.dtype,
            recipe=FLAGS.recipe,
            **common,
        )
    else:
        s = lm_stream.decompress_file(model, input_path, output_path, **common)
    print(
        _summary(mode, s, input_path, output_path),
        file=sys.stderr if output_path == "-" else sys.stdout,
    )
    if FLAGS.json:  # like the output, it appears only complete
        record = {"mode": mode, "input": input_path, "output": output_path, **s}
        with container.atomic_output(FLAGS.json) as f:
            f.write(json.dumps(record).encode())


def _define_flags() -> None:
    flags.DEFINE_string(
        "model",
        None,
        "The model: RUN_DIR, a training run (its newest checkpoint, or --step); hf:PATH, a "
        "pretrained model in the Hugging Face layout; online:SIZE, a model that learns while it "
        "codes (decompress needs no --model for it); online:RUN_DIR, one that starts from a "
        "byte-level run and keeps learning (decompress takes --model=RUN_DIR).",
    )
    cli.retired_flag("workdir", "--model=RUN_DIR")
    flags.DEFINE_string(
        "recipe",
        "",
        "online: models: refine the recipe, key=value,... over segment_bytes, lanes, steps, "
        "replay, learning_rate, b1, b2, seed, order, table_bits, live, mix_learning_rate "
        "(compressors/online.py); recorded in the stream.",
    )
    flags.DEFINE_enum(
        "dtype",
        "",
        ["", "float32", "bfloat16"],
        "The float path's compute dtype ('' = the model's own: a run's, float32 for hf: "
        "models); recorded, and decompress follows the stream.",
    )
    flags.DEFINE_integer(
        "top_k",
        0,
        "The float path: code under the top-k tables with an escape (the paper's k = 100); "
        "0 = the whole vocabulary (smaller files).",
        lower_bound=0,
    )
    flags.DEFINE_integer(
        "lanes",
        lm_stream.DEFAULT_LANES,
        "Chunks coded together (stored in the stream; its decoder needs their memory); "
        "0 chooses from the device's memory (64 on a CPU).",
        lower_bound=0,
    )
    flags.DEFINE_integer(
        "chunk_size", 0, "Bytes per chunk; 0 = the model's context.", lower_bound=0
    )
    flags.DEFINE_integer("step", None, "Checkpoint step to use (default: newest).")
    flags.DEFINE_string(
        "json",
        "",
        "Also write the summary as JSON to this file: sizes, ratio, seconds and MB/s, and with "
        "more than one group those of the first group (which compiles) and of the later ones.",
    )
    flags.DEFINE_bool("progress", True, "Show a progress bar.")
    flags.DEFINE_bool(
        "force",
        False,
        "Replace OUTPUT if it is an existing file (never INPUT; a FIFO or a device such as "
        "/dev/null is written into, like standard output).",
    )
    flags.DEFINE_bool(
        "portable",
        True,
        "Code with the integer-only model: streams decode on any machine (--noportable: the "
        "float model, which decodes only where its floats are the same). Default: on for "
        "training runs; hf: models have the float path only.",
    )
    flags.DEFINE_enum(
        "kv_cache",
        "",
        ["", "float32", "bfloat16", "int8"],
        "--noportable: the KV cache's dtype ('' = the model's compute dtype).",
    )


if __name__ == "__main__":
    cli.run(main, define_flags=_define_flags)
