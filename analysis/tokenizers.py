r"""Tokenizer comparison: raw and adjusted rates of one model size on bytes and on BPE vocabularies.

  python -m analysis.tokenizers --csv=runs/tokenizers/results.csv --out_dir=docs \
      --dataset_sizes=500000,1e7,1e9

Reads a sweep's results.csv (sweep.py) whose runs differ by `tokenizer`, and writes
OUT/PREFIX.csv (tokenizer, vocabulary, parameters, bytes per token, raw rate, adjusted rate per D)
and OUT/PREFIX.png (rates against vocabulary size). Rates are per original byte; the parameter
count includes the larger embedding and output layers, so the adjusted rate charges for them.
"""

import argparse
import csv
import pathlib
from collections.abc import Sequence

import runs
from analysis import plots, scaling


def vocab_size(tokenizer: str) -> int:
    """256 for `bytes`, N for `bpe:N`."""
    return 256 if tokenizer == "bytes" else int(tokenizer.split(":")[1])


def table(csv_path: str | pathlib.Path, dataset_sizes: Sequence[float]) -> list[dict]:
    """One row per complete run, by model size (the `size` column, if any), then vocabulary."""
    with open(csv_path, newline="") as f:
        runs = [r for r in csv.DictReader(f) if r["status"] == "complete"]
    if not runs:
        raise ValueError(f"{csv_path} has no complete runs.")
    rows = []
    runs.sort(key=lambda r: vocab_size(r["tokenizer_name"]))
    order = list(dict.fromkeys(r.get("size", "") for r in runs))
    for r in sorted(runs, key=lambda r: order.index(r.get("size", ""))):
        params = int(r["num_params"])
        raw = float(r["test_bits_per_byte"]) / 8
        bytes_per_token = float(r.get("bytes_per_token") or 1.0)
        row = {
            "size": r.get("size", ""),
            "tokenizer": r["tokenizer_name"],
            "vocab_size": vocab_size(r["tokenizer_name"]),
            "num_params": params,
            "bytes_per_token": bytes_per_token,
            "bytes_seen": int(round(float(r["tokens_seen"]) * bytes_per_token)),
            "test_bits_per_byte": float(r["test_bits_per_byte"]),
            "raw_rate": raw,
        }
        for d in dataset_sizes:
            row[f"adjusted_rate_D={d:g}"] = raw + scaling.BYTES_PER_PARAM * params / d
        rows.append(row)
    return rows


def plot(rows: list[dict], dataset_sizes: Sequence[float], path: pathlib.Path) -> None:
    plt = plots.pyplot()
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.2 * len(sizes), 4.0), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        mine = [r for r in rows if r["size"] == size]
        _panel(ax, mine, dataset_sizes, f"model {size}" if size else "")
    plots.save(fig, path)


def _panel(ax, rows, dataset_sizes, title):
    import matplotlib.ticker

    vocab = [r["vocab_size"] for r in rows]
    ax.plot(vocab, [r["raw_rate"] for r in rows], "ko-", label="raw rate")
    for d in dataset_sizes:
        ax.plot(
            vocab, [r[f"adjusted_rate_D={d:g}"] for r in rows], "o--", label=f"adjusted, D={d:g} B"
        )
    ax.set_title(title, fontsize=10)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(vocab, [str(v) for v in vocab])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    plots.finish_axes(ax, "vocabulary size (256 = bytes)", "compression rate (per original byte)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--csv", required=True, help="the tokenizer sweep's results.csv")
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--prefix", default="tokenizers")
    parser.add_argument("--dataset_sizes", default="1e7,1e9")
    args = parser.parse_args(argv)
    sizes = [float(s) for s in args.dataset_sizes.split(",")]
    rows = table(args.csv, sizes)
    out = pathlib.Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs.write_csv(out / f"{args.prefix}.csv", rows, float_format=".6g")
    plot(rows, sizes, out / f"{args.prefix}.png")
    for row in rows:
        extra = "  ".join(
            f"adjusted {k.split('_D=')[1]} B: {v:.4f}"
            for k, v in row.items()
            if k.startswith("adjusted")
        )
        print(
            f"{row['size']:5s} {row['tokenizer']:9s} {row['num_params']:>9,} params  "
            f"{row['test_bits_per_byte']:.3f} bits/byte  raw {row['raw_rate']:.4f}  {extra}"
        )


if __name__ == "__main__":
    main()
