r"""Compression rate against context length, per modality, for language models, gzip and LZMA2.

  python -m analysis.context --runs=runs/context/size=200K --out_dir=docs \
      --datasets=pydocs:heldout,images,random --lengths=64,128,256,512,1024,2048

For every dataset and chunk length L, the same leading bytes (--bytes, rounded down to whole
chunks) are cut into L-byte chunks and each chunk is compressed on its own: the in-context setting
of the paper, where L is all the context a compressor gets. Each model of --runs is rated for the
lengths up to its training context (by its log-loss by default, --coded for the bytes the rANS
coder writes), gzip -9 and LZMA2 with their headers counted per chunk. Image chunks are patches
of 32 rows of L / 32 pixels (data.sources).

Runs `compressors.evaluation.evaluate` for each (dataset, L) with results in --workdir, then writes
OUT/PREFIX.csv (dataset, modality, compressor, chunk_size, raw_rate, ...) and OUT/PREFIX.png (one
panel per dataset, raw rate against L on a log2 axis), and prints the rates as a Markdown table.
"""

import pathlib

import runs
from analysis import plots
from compressors import evaluation
from configs import eval as eval_config

DEFAULT_LENGTHS = (64, 128, 256, 512, 1024, 2048)
FIELDS = (
    "dataset",
    "compressor",
    "chunk_size",
    "num_chunks",
    "raw_bytes",
    "compressed_bytes",
    "raw_rate",
    "bits_per_byte",
    "rate_from",
    "seconds",
)


def study(
    run_dirs: list[str],
    datasets: list[str],
    lengths: list[int],
    total_bytes: int,
    workdir: str | pathlib.Path,
    coded: bool = False,
    progress: bool = True,
) -> list[dict]:
    """Rates gzip, LZMA2 and the models on every (dataset, length); returns one row each.

    Raises:
      FileNotFoundError: a run directory is missing or holds no config.json.
      ValueError: `total_bytes` is less than one chunk of some length.
    """
    for d in run_dirs:
        if not pathlib.Path(d).is_dir():
            raise FileNotFoundError(f"{d}: no such run directory (--runs takes train.py workdirs).")
    configs = {d: runs.load_config(d) for d in run_dirs}
    contexts = {d: c.model.context_length for d, c in configs.items()}
    labels = {"gzip": "gzip -9", "lzma": "LZMA2"}
    labels.update({f"lm:{d}": f"LM {c.size} (ctx {contexts[d]})" for d, c in configs.items()})
    rows = []
    for dataset in datasets:
        for length in lengths:
            if total_bytes < length:
                raise ValueError(f"--bytes={total_bytes} is less than one {length}-byte chunk.")
            models = [f"lm:{d}" for d in run_dirs if length <= contexts[d]]
            config = eval_config.get_config()
            config.dataset = dataset
            config.compressors = ",".join(["gzip", "lzma", *models])
            config.chunk_size = length
            config.num_chunks = total_bytes // length
            config.chunking = "chunked"
            config.progress = progress
            config.workers = 1  # a few dozen KB per call: worker processes would cost more
            config.lm.coded = coded
            config.lm.log_loss = True
            config.lm.chunks_per_device = max(1, 8192 // length)
            for record in evaluation.evaluate(config, workdir):
                rows.append(
                    {
                        **{k: record.get(k) for k in FIELDS},
                        "modality": _modality(dataset),
                        "compressor": labels[record["compressor"]],
                        "bits_per_byte": 8 * record["raw_rate"],
                    }
                )
    return rows


def _modality(dataset: str) -> str:
    name = dataset.split(":")[0]
    return {"images": "image", "imagenet": "image", "audio": "audio", "librispeech": "audio"}.get(
        name, "random" if name == "random" else "text"
    )


def write_csv(rows: list[dict], path: pathlib.Path) -> None:
    fields = ["dataset", "modality", *[f for f in FIELDS if f != "dataset"]]
    runs.write_csv(path, rows, fields, float_format=".6g")


def markdown_table(rows: list[dict]) -> str:
    """Raw rates as a Markdown table: a row per (dataset, compressor), a column per length."""
    lengths = sorted({r["chunk_size"] for r in rows})
    lines = [
        "| dataset | compressor | " + " | ".join(map(str, lengths)) + " |",
        "|---|---|" + "---:|" * len(lengths),
    ]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == dataset]
        for name in dict.fromkeys(r["compressor"] for r in mine):
            rate = {r["chunk_size"]: r["raw_rate"] for r in mine if r["compressor"] == name}
            cells = [f"{rate[n]:.3f}" if n in rate else "-" for n in lengths]
            lines.append(f"| {dataset} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: pathlib.Path) -> None:
    plt = plots.pyplot()
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    ncols = min(len(datasets), 2)
    nrows = -(-len(datasets) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.8 * nrows), squeeze=False)
    for ax in axes.flat[len(datasets) :]:
        ax.set_visible(False)
    for ax, dataset in zip(axes.flat, datasets, strict=False):
        mine = [r for r in rows if r["dataset"] == dataset]
        for name in dict.fromkeys(r["compressor"] for r in mine):
            points = sorted(
                (r["chunk_size"], r["raw_rate"]) for r in mine if r["compressor"] == name
            )
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, "o-", label=name, lw=1.2, ms=4)
        ax.set_xscale("log", base=2)
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        title = f"{dataset} ({mine[0]['modality']})"
        plots.finish_axes(ax, "context = chunk length (bytes)", "raw compression rate", title)
    plots.save(fig, path)


def main(argv: list[str]) -> None:
    from absl import flags

    import cli

    cli.no_arguments(argv, "give several runs as one comma list, --runs=a,b")
    FLAGS = flags.FLAGS  # noqa: N806
    lengths = cli.numbers(FLAGS.lengths, "lengths", int, "64,256,2048 (bytes)")
    rows = study(FLAGS.runs, FLAGS.datasets, lengths, FLAGS.bytes, FLAGS.workdir, FLAGS.coded)
    out = pathlib.Path(FLAGS.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / f"{FLAGS.prefix}.csv")
    plot(rows, out / f"{FLAGS.prefix}.png")
    print(markdown_table(rows))


def _define_flags() -> None:
    """The command line's flags: defined only when run as a script, never on import."""
    from absl import flags

    flags.DEFINE_list("runs", [], "train.py run directories, comma-separated (none: no models).")
    flags.DEFINE_list("datasets", ["pydocs:heldout", "images", "random"], "eval_compress sources.")
    flags.DEFINE_list("lengths", [str(n) for n in DEFAULT_LENGTHS], "Chunk lengths in bytes.")
    flags.DEFINE_integer("bytes", 49_152, "Bytes rated per (dataset, length).")
    flags.DEFINE_string("workdir", "runs/context_eval", "Where eval_compress keeps its results.")
    flags.DEFINE_string("out_dir", None, "Required: where PREFIX.csv and PREFIX.png go.")
    flags.DEFINE_string("prefix", "context", "File name prefix of the outputs.")
    flags.DEFINE_bool("coded", False, "Rate the models by the bytes the coder writes.")
    flags.mark_flag_as_required("out_dir")


if __name__ == "__main__":
    import cli

    cli.run(main, define_flags=_define_flags)
