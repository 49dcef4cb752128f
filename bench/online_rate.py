r"""Online compression's rate and speed on one file, beside xz -9, zstd -19 and brotli.

  python bench/online_rate.py --input=FILE [--model=online:200K] [--recipe=k=v,...] \
      [--out=online.json] [--plot=online.png] [--decompress]

Compresses FILE with compress.py's library (`compressors.lm_stream`) in this process, recording
the stream's size after every group (the learning curve), and optionally decompresses it back
and checks the bytes. Prints one JSON line: sizes, bits per byte, the classical tools' sizes on
the same bytes, KB/s each way (compilation included: one run is one command), and writes the
curve as JSON and, with --plot, as a PNG (bits per byte of each stretch of the file against
bytes seen, with the classical tools' whole-file rates as lines).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import allocator  # noqa: E402

allocator.keep_freed_memory()  # as compress.py does, before JAX is imported

_INPUT = flags.DEFINE_string("input", None, "The file to compress.", required=True)
_MODEL = flags.DEFINE_string("model", "online:200K", "An online:SIZE model.")
_RECIPE = flags.DEFINE_string("recipe", "", "compress.py's --recipe.")
_OUT = flags.DEFINE_string("out", "", "Write the result and the curve here (JSON).")
_PLOT = flags.DEFINE_string("plot", "", "Write the learning curve here (PNG).")
_DECOMPRESS = flags.DEFINE_bool("decompress", False, "Decompress too, timed, and compare.")

TOOLS = {  # name: command reading standard input, writing standard output
    "xz -9": ["xz", "-9", "-c"],
    "zstd -19": ["zstd", "-19", "-c", "-q"],
    "brotli -q 11": ["brotli", "-q", "11", "-c"],
}


def classical_sizes(data: bytes) -> dict:
    """Each tool's output size on `data` (None where the tool is not installed)."""
    sizes = {}
    for name, argv in TOOLS.items():
        if shutil.which(argv[0]) is None:
            sizes[name] = None
            continue
        sizes[name] = len(subprocess.run(argv, input=data, capture_output=True, check=True).stdout)
    return sizes


def plot(curve: list[tuple[int, int]], classical: dict, path: str) -> None:
    """Bits per byte of each tenth of the file against bytes seen, and the tools' rates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    total = curve[-1][0]
    xs, ys, last = [], [], (0, 0)
    for seen, written in curve:
        if seen - last[0] >= total / 20 or seen == total:
            xs.append(seen / 1e3)
            ys.append(8 * (written - last[1]) / (seen - last[0]))
            last = (seen, written)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(xs, ys, marker="o", label="online model: bits/byte of each stretch")
    styles = zip(("tab:orange", "tab:green", "tab:red"), ("--", ":", "-."), strict=False)
    for (name, size), (color, style) in zip(classical.items(), styles, strict=False):
        if size:
            rate = 8 * size / total
            ax.axhline(rate, color=color, linestyle=style, label=f"{name} (whole file)")
    ax.set_xlabel("KB seen")
    ax.set_ylabel("bits per byte")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv):
    del argv
    from compressors import lm_stream

    data = open(_INPUT.value, "rb").read()
    work = tempfile.mkdtemp()
    packed, restored = os.path.join(work, "f.lmc"), os.path.join(work, "f.out")
    curve: list[tuple[int, int]] = []
    start = time.perf_counter()
    s = lm_stream.compress_file(
        _MODEL.value, _INPUT.value, packed, recipe=_RECIPE.value, trace=curve, force=True
    )
    compress_s = time.perf_counter() - start
    result = {
        "input": os.path.basename(_INPUT.value),
        "raw_bytes": len(data),
        "model": _MODEL.value,
        "recipe": _RECIPE.value,
        "compressed_bytes": s["compressed_bytes"],
        "bits_per_byte": s["bits_per_byte"],
        "compress_kb_per_s": len(data) / 1e3 / compress_s,
        "classical": classical_sizes(data),
    }
    if _DECOMPRESS.value:
        start = time.perf_counter()
        lm_stream.decompress_file(None, packed, restored, force=True)
        result["decompress_kb_per_s"] = len(data) / 1e3 / (time.perf_counter() - start)
        result["exact"] = open(restored, "rb").read() == data
    shutil.rmtree(work)
    print(json.dumps(result), flush=True)
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump({**result, "curve": curve}, f)
    if _PLOT.value:
        plot(curve, result["classical"], _PLOT.value)


if __name__ == "__main__":
    app.run(main)
