"""Training curves of addition runs: excess over the entropy floor, accuracy, excess per position.

  python -m analysis.curves runs/addition-200K --out=docs/addition_training.png

Reads the run's metrics.jsonl (train_addition.py); plots held-out excess (nats per predicted
token, log scale) against step with the target (1 percent of the floor), the answers'
exact-match accuracy, and a heat map of the excess per position over training.
"""

import pathlib

import numpy as np

import runs
from analysis import plots

_CURVES = ("step", "excess_nats", "answer_accuracy", "excess_per_position")  # per eval line


def load_evals(workdir: str | pathlib.Path) -> dict[str, np.ndarray]:
    """The eval lines of a run as arrays: step, excess_nats, answer_accuracy, excess_per_position
    [num_evals, positions], and floor_nats (eval_loss - excess_nats of the last eval line).

    Raises:
      FileNotFoundError: the run has no metrics.jsonl.
      ValueError: the run has no eval lines.
    """
    path = pathlib.Path(workdir, "metrics.jsonl")
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: give a train_addition.py run directory"
            + ("." if pathlib.Path(workdir).is_dir() else f" ({workdir} does not exist).")
        )
    evals = [r for r in runs.read_jsonl(path) if "excess_per_position" in r]
    if not evals:
        raise ValueError(
            f"{workdir} has no eval lines in metrics.jsonl (lines with excess_per_position): "
            "is it a train_addition.py run, trained past its first eval (train.eval_every)?"
        )
    curves = {k: np.array([r[k] for r in evals]) for k in _CURVES}
    return {**curves, "floor_nats": float(evals[-1]["eval_loss"] - evals[-1]["excess_nats"])}


def plot_run(workdir: str | pathlib.Path, out: str | pathlib.Path, title: str = "") -> None:
    """Writes the two-panel training-curve PNG of one addition run to `out`."""
    plt = plots.pyplot()
    ev = load_evals(workdir)
    fig, (ax, heat) = plt.subplots(1, 2, figsize=(12, 4.2))
    ax.semilogy(ev["step"], np.maximum(ev["excess_nats"], 1e-5), "o-", ms=3, label="excess")
    target = 0.01 * ev["floor_nats"]
    ax.axhline(target, color="r", ls="--", lw=1, label=f"1% of floor ({target:.4f})")
    ax.set_xlabel("step")
    ax.set_ylabel("held-out loss - entropy floor (nats / token)")
    ax.grid(alpha=0.3, which="both")
    acc = ax.twinx()
    acc.plot(ev["step"], ev["answer_accuracy"], "g.-", label="answer exact match")
    acc.set_ylabel("answer exact match", color="g")
    acc.set_ylim(0, 1)
    lines = ax.get_legend_handles_labels()[0] + acc.get_legend_handles_labels()[0]
    ax.legend(lines, [x.get_label() for x in lines], fontsize=8, loc="center right")
    ax.set_title(title or pathlib.Path(workdir).name)

    per_position = np.maximum(ev["excess_per_position"].T, 1e-4)  # [positions, evals]
    image = heat.imshow(
        np.log10(per_position), aspect="auto", origin="lower", cmap="viridis",
        extent=(ev["step"][0], ev["step"][-1], 0.5, per_position.shape[0] + 0.5),
    )  # fmt: skip
    heat.set_xlabel("step")
    heat.set_ylabel("predicted position (1 = first digit of a)")
    heat.set_title("log10 excess per position (nats)")
    fig.colorbar(image, ax=heat)
    plots.save(fig, out)


def main(argv: list[str]) -> None:
    from absl import app, flags

    if len(argv) != 2:
        raise app.UsageError("give one addition run directory: python -m analysis.curves RUN_DIR")
    out = flags.FLAGS.out
    plot_run(argv[1], out, flags.FLAGS.title)
    print(f"Wrote {out}")


def _define_flags() -> None:
    """The command line's flags: defined only when run as a script, never on import."""
    from absl import flags

    flags.DEFINE_string("out", None, "Required: the PNG to write.")
    flags.DEFINE_string("title", "", "Title of the left panel (default: the run's name).")
    flags.mark_flag_as_required("out")


if __name__ == "__main__":
    import cli

    cli.run(main, define_flags=_define_flags)
