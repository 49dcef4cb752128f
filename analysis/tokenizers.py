r"""Tokenizer comparison: raw and adjusted rates of one model size on bytes and on BPE vocabularies.

  python -m analysis.tokenizers --csv=runs/tokenizers/results.csv --out_dir=docs \
      --dataset_sizes=500000,1e7,1e9

Reads a sweep's results.csv (sweep.py) whose runs differ by `tokenizer`, and writes
OUT/PREFIX.csv (tokenizer, vocabulary, parameters, bytes per token, raw rate, adjusted rate per D)
and OUT/PREFIX.png (rates against vocabulary size). Rates are per original byte; the parameter
count includes the larger embedding and output layers, so the adjusted rate charges for them.
"""

import pathlib
from collections.abc import Sequence

import runs
from analysis import plots, scaling


def vocab_size(tokenizer: str) -> int:
    """256 for `bytes`, N for `bpe:N`."""
    return 256 if tokenizer == "bytes" else int(tokenizer.split(":")[1])


def table(csv_path: str | pathlib.Path, dataset_sizes: Sequence[float]) -> list[dict]:
    """One row per complete run, by model size (the `size` column, if any), then vocabulary."""
    runs = scaling.read_complete_rows(
        csv_path, ("tokenizer_name", "num_params", "tokens_seen", "test_bits_per_byte")
    )
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
    """Rates against vocabulary size: a column per model size, one legend above them.

    Top: every rate on a log axis. Where D is large the model's cost 2N/D is tiny and an
    adjusted curve lies on the raw one, so the raw rate is a thick grey band under thin marked
    curves and the legend says how far such a curve stays from it. Bottom: the raw rate and
    those near it on a linear axis, where they separate.
    """
    from matplotlib.lines import Line2D

    plt = plots.pyplot()
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    fig, axes = plt.subplots(
        2, len(sizes), figsize=(5.4 * len(sizes), 6.6), squeeze=False, sharex=True,
        sharey="row", gridspec_kw={"height_ratios": (3, 2)},
    )  # fmt: skip
    near = [_near_raw(rows, d) for d in dataset_sizes]
    for i, size in enumerate(sizes):
        mine = [r for r in rows if r["size"] == size]
        vocab = [r["vocab_size"] for r in mine]
        for ax, zoom in ((axes[0, i], False), (axes[1, i], True)):
            ax.plot(vocab, [r["raw_rate"] for r in mine], "-", color="0.55", lw=6, alpha=0.45)
            ax.plot(vocab, [r["raw_rate"] for r in mine], "o", color="k", mfc="none", ms=10)
            for j, d in enumerate(dataset_sizes):
                if zoom and not near[j]:
                    continue
                color, marker, ls = _STYLES[j % len(_STYLES)]
                adjusted = [r[f"adjusted_rate_D={d:g}"] for r in mine]
                ax.plot(vocab, adjusted, color=color, marker=marker, ls=ls, lw=1.3, ms=5)
        title = f"model {size}" if size else ""
        _axes(axes[0, i], vocab, title, "rate (per original byte)" if i == 0 else "", log=True)
        _axes(axes[1, i], vocab, "", "rate, zoomed (linear axis)" if i == 0 else "", log=False)
        axes[0, i].set_xlabel("")
    handles = [
        Line2D([], [], color="0.55", lw=6, alpha=0.45, marker="o", mec="k", mfc="none", ms=10,
               label="raw rate (compressed / raw)"),
    ]  # fmt: skip
    for j, d in enumerate(dataset_sizes):
        color, marker, ls = _STYLES[j % len(_STYLES)]
        label = f"adjusted, D = {scaling.format_bytes(d)}"
        if near[j]:
            cost = max(scaling.BYTES_PER_PARAM * r["num_params"] / d for r in rows)
            label += f" (on the raw rate: +{cost:.3f} at most)"
        handles.append(Line2D([], [], color=color, marker=marker, ls=ls, label=label))
    fig.legend(
        handles=handles,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=2,
        fontsize=9,
        title="adjusted rate = raw rate + 2N / D: the model's N parameters, 2 bytes each, "
        "charged to a dataset of D bytes",
        title_fontsize=9,
        frameon=False,
    )
    plots.save(fig, path)


# colour, marker, line style of the adjusted curves, one per D
_STYLES = (
    ("tab:blue", "s", "--"),
    ("tab:orange", "^", "-."),
    ("tab:green", "D", ":"),
    ("tab:red", "v", (0, (5, 1))),
)


def _near_raw(rows: list[dict], dataset_bytes: float) -> bool:
    """Whether the model's cost 2N/D stays under 2% of the raw rate (the curves overlap)."""
    return all(
        scaling.BYTES_PER_PARAM * r["num_params"] / dataset_bytes < 0.02 * r["raw_rate"]
        for r in rows
    )


def _axes(ax, vocab: list[int], title: str, ylabel: str, log: bool) -> None:
    import matplotlib.ticker

    ax.set_xscale("log")
    ax.set_xticks(vocab, [f"{v:,}" for v in vocab])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    if log:
        ax.set_yscale("log")
        plots.plain_log_ticks(ax.yaxis, subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0))
    else:
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.tick_params(labelsize=9)
    plots.finish_axes(ax, "vocabulary size (256 = bytes)", ylabel, title)


def main(argv: list[str]) -> None:
    from absl import flags

    import cli

    cli.no_arguments(argv)
    FLAGS = flags.FLAGS  # noqa: N806
    sizes = scaling.parse_sizes(FLAGS.dataset_sizes)
    rows = table(FLAGS.csv, sizes)
    out = pathlib.Path(FLAGS.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs.write_csv(out / f"{FLAGS.prefix}.csv", rows, float_format=".6g")
    plot(rows, sizes, out / f"{FLAGS.prefix}.png")
    print(report(rows))


def report(rows: list[dict]) -> str:
    """One line of text per row of `table`."""
    lines = []
    for row in rows:
        extra = "  ".join(
            f"adjusted D = {scaling.format_bytes(float(k.split('_D=')[1]))}: {v:.4f}"
            for k, v in row.items()
            if k.startswith("adjusted")
        )
        lines.append(
            f"{row['size']:5s} {row['tokenizer']:9s} {row['num_params']:>9,} params  "
            f"{row['test_bits_per_byte']:.3f} bits/byte  raw {row['raw_rate']:.4f}  {extra}"
        )
    return "\n".join(lines)


def _define_flags() -> None:
    """The command line's flags: defined only when run as a script, never on import."""
    from absl import flags

    flags.DEFINE_string(
        "csv", None, "Required: the tokenizer sweep's results.csv (sweep.py --mode=gather)."
    )
    flags.DEFINE_string("out_dir", None, "Required: where PREFIX.csv and PREFIX.png go.")
    flags.DEFINE_string("prefix", "tokenizers", "File name prefix of the outputs.")
    flags.DEFINE_list("dataset_sizes", ["1e7", "1e9"], "D in bytes for the adjusted rates.")
    flags.mark_flags_as_required(["csv", "out_dir"])


if __name__ == "__main__":
    import cli

    cli.run(main, define_flags=_define_flags)
