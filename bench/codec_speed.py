r"""Compress and decompress speed of compress.py beside xz, zstd and brotli, on the same bytes.

  python bench/codec_speed.py --run=RUN_DIR [--bytes=N] [--input=FILE] [--out=FILE.jsonl]

RUN_DIR is a train.py run: `./run.sh` trains runs/demo-pydocs-200K; for a quick check
`python train.py --config=configs/default.py:size=test --workdir=/tmp/t` trains a tiny one in
seconds. The input is the pydocs held-out split (the last 10% of the corpus, 49,350 bytes, which
train.py never trains on), or `--input`; `--bytes` takes the first N bytes of either.

Rows, each with compressed bytes, ratio, bits per byte, compress and decompress MB/s and a check
that decompression gave back the input exactly:

* `portable` and `float`: compress.py's default path and its `--noportable` one, each direction its
  own process (`python compress.py compress|decompress --model=RUN IN OUT`), as a user runs it,
  with `--lanes` chunks coded together and JAX's persistent compilation cache off, so every process
  compiles its own programs. MB/s is the rate of the groups after the first, timed by the command
  itself (its `--json` summary's `steady_mb_per_s`); start-up (Python, JAX, loading the model,
  compiling, and coding the first group, `--lanes` chunks of the model's context) is the rest of
  the command's wall time, reported apart. The input must hold more than one group (and a last
  group of shorter chunks compiles programs of its own, inside the rate: use long inputs).
* `xz -9`, `zstd -19`, `brotli -q 11`: the command-line tool where it is on PATH (its start-up,
  measured on a 1-byte file, is milliseconds), else Python's module (`lzma` preset 9, `zstandard`
  level 19, `brotli` quality 11: no start-up); the row's `via` says which, and a row whose tool and
  module are both missing says so instead of failing.

The reference is the model's log-loss pass over the same bytes (compressors.language_model, in this
process: chunks of its context, 16 lanes), timed on its second call, after compiling; it writes no
bytes, so its size is the ideal code length. Each timing is the least of `--repeats` runs. Ratios,
which hold on a noisy machine: portable compress time / log-loss time, and portable decompress time
/ float decompress time, per byte (from the MB/s, so net of start-up).
"""

import json
import lzma
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from bench.timing import best_time  # noqa: E402

_RUN = flags.DEFINE_string("run", None, "A train.py run directory.", required=True)
_BYTES = flags.DEFINE_integer("bytes", 0, "Bytes of input (0: all of the split or --input).")
_INPUT = flags.DEFINE_string("input", "", "A file to code instead of the pydocs held-out split.")
_LANES = flags.DEFINE_integer("lanes", 64, "compress.py's --lanes (64: its default on a CPU).")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Runs of each timing; the least is kept.")
_OUT = flags.DEFINE_string("out", "", "Append the JSON record here too.")

COMPRESS_PY = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "compress.py"
)


def _zstd_module():
    import zstandard

    return (
        lambda d: zstandard.ZstdCompressor(level=19).compress(d),
        lambda d: zstandard.ZstdDecompressor().decompress(d),
    )


def _brotli_module():
    import brotli

    return lambda d: brotli.compress(d, quality=11), brotli.decompress


# name -> (tool's compress argv, its decompress argv, () -> the Python module's functions).
CLASSICAL = {
    "xz -9": (
        ["xz", "-9", "-c"],
        ["xz", "-d", "-c"],
        lambda: (lambda d: lzma.compress(d, preset=9), lzma.decompress),
    ),
    "zstd -19": (["zstd", "-19", "-q", "-c"], ["zstd", "-d", "-q", "-c"], _zstd_module),
    "brotli -q 11": (["brotli", "-q", "11", "-c"], ["brotli", "-d", "-c"], _brotli_module),
}


def heldout_bytes(num_bytes: int = 0) -> bytes:
    """The first `num_bytes` (0: all) of the pydocs held-out split (valid + test, as train.py
    splits it).

    Raises:
      ValueError: the split holds fewer bytes.
    """
    from data import corpus

    data = corpus.load_corpus(corpus.DEFAULT_CORPUS)
    train, _, _ = corpus.split(data)
    heldout = data[len(train) :]
    if num_bytes > len(heldout):
        raise ValueError(f"--bytes={num_bytes}: the held-out split has {len(heldout):,} bytes.")
    return bytes(heldout[: num_bytes or len(heldout)])


def _run_command(argv: list[str], data: bytes | None = None, env=None) -> bytes:
    """Runs `argv` (stdin `data`), returns its standard output; a failure raises with its stderr."""
    p = subprocess.run(argv, input=data, capture_output=True, env=env, check=False)
    if p.returncode:
        tail = p.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"{' '.join(argv[:3])}... exited {p.returncode}: {tail[0]}")
    return p.stdout


def _row(name: str, via: str, data: bytes, packed: bytes, out: bytes, times: dict) -> dict:
    """One row: sizes, round-trip check, and MB/s net of start-up: `times[d + '_mb_per_s']` where
    given (the command's own), else bytes / (time - start-up)."""
    row = {"codec": name, "via": via, "raw_bytes": len(data), "compressed_bytes": len(packed)}
    row["ratio"] = len(packed) / len(data)
    row["bits_per_byte"] = 8 * len(packed) / len(data)
    row["exact"] = out == data
    for d in ("compress", "decompress"):
        total, startup = times[d], times[f"{d}_startup"]
        net = total - startup  # <= 0: start-up's noise swamped the work (too few bytes)
        row |= {f"{d}_seconds": total, f"{d}_startup_seconds": startup, f"{d}_net_seconds": net}
        rate = len(data) / 1e6 / net if net > 0 else None
        row[f"{d}_mb_per_s"] = times.get(f"{d}_mb_per_s", rate)
    return row


def model_row(
    run: str,
    path: str,
    data: bytes,
    work: str,
    lanes: int = 64,
    repeats: int = 1,
    compile_cache: str = "",
) -> dict:
    """Compresses and decompresses `data` with compress.py, each direction its own process.

    Args:
      run: the train.py run directory.
      path: 'portable' (compress.py's default) or 'float' (`--noportable`).
      data: the input bytes.
      work: a scratch directory.
      lanes: compress.py's `--lanes`: chunks coded together, and the start-up's chunks.
      repeats: runs of each command; the least time is kept.
      compile_cache: the processes' persistent compilation cache ($LMC_COMPILE_CACHE); '' (what
        the benchmark measures): none, each process compiles its own programs. A test passes
        its session's cache, where the timings do not matter.

    Returns:
      The row (see `_row`): MB/s of the groups after the first, as the command timed them; the
      rest of its wall time is its start-up.

    Raises:
      ValueError: `data` fits in one group.
    """
    import runs

    group_bytes = lanes * runs.load_config(run).model.context_length
    if len(data) <= group_bytes:
        raise ValueError(
            f"{len(data):,} bytes fit in one group of {lanes} x {group_bytes // lanes:,} bytes: "
            "give more bytes (--bytes, --input) or fewer --lanes."
        )
    env = dict(os.environ, LMC_COMPILE_CACHE=compile_cache)
    common = [f"--model={run}", "--noprogress", "--force"]
    extra = [f"--lanes={lanes}"] + (["--noportable"] if path == "float" else [])
    src, packed, out, stats = (
        os.path.join(work, f"{path}.{e}") for e in ("in", "lmc", "out", "json")
    )
    with open(src, "wb") as f:
        f.write(data)
    commands = {
        "compress": [sys.executable, COMPRESS_PY, "compress", *common, *extra, src, packed],
        "decompress": [sys.executable, COMPRESS_PY, "decompress", *common, packed, out],
    }
    times = {}
    for direction, argv in commands.items():

        def once(argv=argv):
            _run_command([*argv, f"--json={stats}"], env=env)
            with open(stats) as f:
                return json.load(f)

        runs_ = [best_time(once) for _ in range(max(1, repeats))]  # (wall, its summary) each
        wall, summary = max(runs_, key=lambda r: r[1]["steady_mb_per_s"])  # the fastest
        times[direction] = wall
        times[f"{direction}_startup"] = wall - (summary["seconds"] - summary["first_group_seconds"])
        times[f"{direction}_mb_per_s"] = summary["steady_mb_per_s"]
    with open(packed, "rb") as f, open(out, "rb") as g:
        return _row(path, f"compress.py {' '.join(extra)}".strip(), data, f.read(), g.read(), times)


def classical_row(name: str, data: bytes, repeats: int = 1) -> dict:
    """Codes `data` with one of `CLASSICAL`: its tool on PATH, else its Python module."""
    compress_argv, decompress_argv, module = CLASSICAL[name]
    if shutil.which(compress_argv[0]):
        via = f"{shutil.which(compress_argv[0])} (command line)"

        def compress(d):
            return _run_command(compress_argv, d)

        def decompress(d):
            return _run_command(decompress_argv, d)
    else:
        try:
            compress, decompress = module()
        except ImportError:
            return {
                "codec": name,
                "via": None,
                "missing": f"no {compress_argv[0]} on PATH, no module",
            }
        via = "Python module"
    times = {}
    times["compress"], packed = best_time(lambda: compress(data), repeats)
    times["decompress"], out = best_time(lambda: decompress(packed), repeats)
    if via == "Python module":
        times["compress_startup"] = times["decompress_startup"] = 0.0
    else:
        times["compress_startup"], one = best_time(lambda: compress(data[:1]), repeats)
        times["decompress_startup"], _ = best_time(lambda: decompress(one), repeats)
    return _row(name, via, data, packed, out, times)


def log_loss_row(run: str, data: bytes, repeats: int = 1) -> dict:
    """The model's log-loss pass over `data` in context-sized chunks, timed warm (after a first
    call that compiles)."""
    from compressors import language_model

    lm = language_model.LanguageModelCompressor(run)
    size = lm.model_cfg.context_length
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    first, _ = best_time(lambda: lm.log_loss(chunks, size))
    warm, bits = best_time(lambda: lm.log_loss(chunks, size), repeats)
    ideal_bytes = float(bits.sum()) / 8
    return {
        "codec": "log-loss (reference)",
        "raw_bytes": len(data),
        "ideal_bytes": ideal_bytes,
        "ratio": ideal_bytes / len(data),
        "bits_per_byte": 8 * ideal_bytes / len(data),
        "first_call_seconds": first,
        "seconds": warm,
        "mb_per_s": len(data) / 1e6 / warm,
        "context_bytes": size,
    }


def benchmark(
    run: str, data: bytes, lanes: int = 64, repeats: int = 1, compile_cache: str = ""
) -> dict:
    """Every row on the same `data`, and the ratios; see the module docstring (`compile_cache`:
    `model_row`'s).

    Raises:
      ValueError: empty data.
      RuntimeError: a command failed.
    """
    if not data:
        raise ValueError("no input bytes: give --bytes > 0 or a non-empty --input.")
    if lanes < 1:
        raise ValueError(f"--lanes={lanes}: give 1 or more.")
    with tempfile.TemporaryDirectory(prefix="codec-speed-") as work:
        rows = [
            model_row(run, p, data, work, lanes, repeats, compile_cache)
            for p in ("portable", "float")
        ]
    rows += [classical_row(name, data, repeats) for name in CLASSICAL]
    reference = log_loss_row(run, data, repeats)
    portable, float_ = rows[0], rows[1]

    def slower(fast, slow):  # time per byte of `slow` / that of `fast`, from their MB/s
        return fast / slow if fast and slow else None

    return {
        "run": os.path.abspath(run),
        "raw_bytes": len(data),
        "startup": "compress.py: its time but the later groups' (its --json); tools: on 1 byte",
        "repeats": repeats,
        "rows": rows,
        "log_loss": reference,
        "ratios": {
            "portable_compress_over_log_loss": slower(
                reference["mb_per_s"], portable["compress_mb_per_s"]
            ),
            "portable_decompress_over_float_decompress": slower(
                float_["decompress_mb_per_s"], portable["decompress_mb_per_s"]
            ),
        },
        "all_exact": all(r.get("exact", True) for r in rows),
    }


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def table(result: dict) -> str:
    """The result as a Markdown table, the ratios below it ('n/a': start-up swamped the work)."""
    lines = [
        "| codec | via | bytes | ratio | bits/byte | compress MB/s | decompress MB/s "
        "| start-up s (c / d) | exact |",
        "|---|---|--:|--:|--:|--:|--:|--:|:-:|",
    ]
    for r in result["rows"]:
        if "missing" in r:
            lines.append(f"| {r['codec']} | missing: {r['missing']} | | | | | | | |")
            continue
        lines.append(
            f"| {r['codec']} | {r['via']} | {r['compressed_bytes']:,} | {r['ratio']:.4f} "
            f"| {r['bits_per_byte']:.3f} | {_fmt(r['compress_mb_per_s'], '.4g')} "
            f"| {_fmt(r['decompress_mb_per_s'], '.4g')} | {r['compress_startup_seconds']:.2f} / "
            f"{r['decompress_startup_seconds']:.2f} | {'yes' if r['exact'] else 'NO'} |"
        )
    ll = result["log_loss"]
    lines.append(
        f"| log-loss (reference) | in process, warm | {ll['ideal_bytes']:,.0f} | {ll['ratio']:.4f} "
        f"| {ll['bits_per_byte']:.3f} | {ll['mb_per_s']:.4g} | | "
        f"{ll['first_call_seconds'] - ll['seconds']:.2f} (compile) | |"
    )
    ratios = result["ratios"]
    lines += [
        "",
        "portable compress time / log-loss time: "
        f"{_fmt(ratios['portable_compress_over_log_loss'], '.1f')}",
        "portable decompress time / float decompress time: "
        f"{_fmt(ratios['portable_decompress_over_float_decompress'], '.2f')}",
    ]
    return "\n".join(lines)


def main(argv):
    del argv
    if _INPUT.value:
        with open(_INPUT.value, "rb") as f:
            data = f.read(_BYTES.value or -1)
    else:
        data = heldout_bytes(_BYTES.value)
    result = benchmark(_RUN.value, data, _LANES.value, _REPEATS.value)
    print(json.dumps(result), flush=True)
    if _OUT.value:
        with open(_OUT.value, "a") as f:
            f.write(json.dumps(result) + "\n")
    print()
    print(table(result))
    if not result["all_exact"]:
        sys.exit("a round trip did not give back its input")


if __name__ == "__main__":
    import cli

    cli.run(main)
