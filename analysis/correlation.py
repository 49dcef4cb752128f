r"""Compression against capability: a least-squares line, Pearson r and its Fisher-z interval.

Pure functions over arrays, plus loaders for the two sources of points:
  * addition runs (`train_addition.py`): every eval line of a run is one checkpoint, with its
    held-out bits per byte (compression) and exact-match answer accuracy (capability);
  * Huang et al. 2024's published (model, average benchmark score, average BPC) table, as a CSV
    with columns `model,average_benchmark_score,average_bpc` ('#' lines are comments).

  python -m analysis.correlation --runs=runs/addition-25K,runs/addition-200K \
      --min_accuracy=0,0.5 --out=docs/addition_correlation.png
  python -m analysis.correlation --huang=data/huang2024_compression_intelligence.csv \
      --out=docs/huang2024_correlation.png

`--points_csv=FILE` writes the addition points it fitted (one row per checkpoint); `--points=FILE`
reads such a file instead of run directories, so a published fit can be recomputed without the
runs:
  python -m analysis.correlation --points=docs/addition_points.csv --min_accuracy=0,0.5

The interval is the usual Fisher transform: z = atanh(r) is close to normal with standard error
1 / sqrt(n - 3), so the interval is tanh(z -+ q / sqrt(n - 3)) with q the normal quantile. It
assumes independent points; checkpoints along one run are not, so read it as a rough guide there.

The plot draws the line only over the data's range (and, for accuracies, within [0, 1]), and not
at all where the relation is curved: where a cubic removes at least half of the line's squared
residual and an F-test gives p < 0.01 (`curvature`); the legend says so and gives Spearman's rho.
"""

import csv
import dataclasses
import json
import math
import pathlib
import statistics
from collections.abc import Iterable, Sequence

import numpy as np

from analysis import plots

HUANG_COLUMNS = ("model", "average_benchmark_score", "average_bpc")
# One addition checkpoint per row (`load_run_points`, `write_points_csv`, `load_points_csv`).
POINT_COLUMNS = (
    "run", "size", "num_layers", "width", "step", "bits_per_byte", "answer_accuracy",
    "excess_nats",
)  # fmt: skip
_POINT_TYPES = {"num_layers": int, "width": int, "step": int, "bits_per_byte": float,
                "answer_accuracy": float, "excess_nats": float}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Correlation:
    """A fit of y = slope * x + intercept with Pearson r and its confidence interval."""

    n: int
    r: float
    ci_low: float
    ci_high: float
    confidence: float
    slope: float
    intercept: float
    rmse: float


def _as_pair(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"x and y must be 1-D of equal length, got {x.shape} and {y.shape}.")
    if len(x) < 2:
        raise ValueError(f"Need at least 2 points, got {len(x)}.")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("x and y must be finite.")
    return x, y


def fit_line(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares (slope, intercept) of y on x.

    Raises:
      ValueError: bad shapes, fewer than 2 points, or all x equal.
    """
    x, y = _as_pair(x, y)
    dx = x - x.mean()
    sxx = float(dx @ dx)
    if sxx == 0.0:
        raise ValueError("All x are equal: the slope is undefined.")
    slope = float(dx @ (y - y.mean())) / sxx
    return slope, float(y.mean() - slope * x.mean())


def pearson_r(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation coefficient of x and y.

    Raises:
      ValueError: bad shapes, fewer than 2 points, or a constant variable.
    """
    x, y = _as_pair(x, y)
    dx, dy = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(dx @ dx) * float(dy @ dy))
    if denom == 0.0:
        raise ValueError("A constant variable has no correlation.")
    return max(-1.0, min(1.0, float(dx @ dy) / denom))


def _average_ranks(v: np.ndarray) -> np.ndarray:
    """Ranks 1..n of v, ties given the mean of the ranks they span."""
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(1, len(v) + 1)
    for value in np.unique(v):
        tied = v == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson r of the tie-averaged ranks): how monotone y is in x."""
    x, y = _as_pair(x, y)
    return pearson_r(_average_ranks(x), _average_ranks(y))


def fisher_interval(r: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Confidence interval for a Pearson r from n independent points (Fisher z transform).

    Raises:
      ValueError: n < 4 (the standard error needs n - 3 > 0), |r| > 1 or confidence not in (0, 1).
    """
    if n < 4:
        raise ValueError(f"The Fisher interval needs n >= 4 points, got {n}.")
    if not -1.0 <= r <= 1.0:
        raise ValueError(f"r must lie in [-1, 1], got {r}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}.")
    if abs(r) == 1.0:
        return r, r
    quantile = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    z, half = math.atanh(r), quantile / math.sqrt(n - 3)
    return math.tanh(z - half), math.tanh(z + half)


def correlate(x: Sequence[float], y: Sequence[float], confidence: float = 0.95) -> Correlation:
    """Fits y on x and returns the line, its RMSE, Pearson r and r's confidence interval."""
    x, y = _as_pair(x, y)
    slope, intercept = fit_line(x, y)
    r = pearson_r(x, y)
    lo, hi = fisher_interval(r, len(x), confidence)
    rmse = float(np.sqrt(np.mean((y - (slope * x + intercept)) ** 2)))
    return Correlation(len(x), r, lo, hi, confidence, slope, intercept, rmse)


CURVED_FRACTION = 0.5  # a cubic removing this much of a line's squared residual is a curve
CURVED_P_VALUE = 0.01


def curvature(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """How curved y(x) is: the share of a straight line's squared residual a cubic removes.

    Returns:
      (fraction, p): 1 - SS_cubic / SS_line in [0, 1], and the p-value of the F-test for the
      two extra terms (small p: the cubic's gain is not noise). Fewer than 6 points, or a line
      that fits exactly, give (0, 1).

    Raises:
      ValueError: bad shapes or non-finite values.
    """
    from scipy import stats

    x, y = _as_pair(x, y)
    if len(x) < 6 or x.std() == 0:
        return 0.0, 1.0
    z = (x - x.mean()) / x.std()  # conditioning
    ss = [float(np.sum((y - np.polyval(np.polyfit(z, y, d), z)) ** 2)) for d in (1, 3)]
    if ss[0] <= 1e-12 * max(1.0, float(y @ y)):
        return 0.0, 1.0
    fraction = max(0.0, 1.0 - ss[1] / ss[0])
    if ss[1] == 0.0:
        return fraction, 0.0
    f_stat = ((ss[0] - ss[1]) / 2) / (ss[1] / (len(x) - 4))
    return fraction, float(stats.f.sf(f_stat, 2, len(x) - 4))


def is_curved(x: Sequence[float], y: Sequence[float]) -> bool:
    """Whether a cubic fits clearly and significantly better than a line (see `curvature`)."""
    fraction, p = curvature(x, y)
    return fraction >= CURVED_FRACTION and p < CURVED_P_VALUE


def line_segment(
    fit: Correlation, x_range: tuple[float, float], y_limits: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """End points of the fitted line over `x_range`, cut where it leaves `y_limits`.

    Returns:
      (xs, ys), two points each, or None when no part of the line lies within `y_limits`.
    """
    lo, hi = x_range
    if y_limits is not None and fit.slope != 0.0:
        # x where the line crosses each limit; keep the part of [lo, hi] between them
        a, b = sorted((y - fit.intercept) / fit.slope for y in y_limits)
        lo, hi = max(lo, a), min(hi, b)
    elif y_limits is not None and not y_limits[0] <= fit.intercept <= y_limits[1]:
        return None
    if lo > hi:
        return None
    xs = np.array([lo, hi])
    return xs, fit.slope * xs + fit.intercept


def load_huang_csv(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Reads (model, average_benchmark_score, average_bpc) rows; '#' lines are comments.

    Returns:
      {'model': str array, 'average_benchmark_score': float array, 'average_bpc': float array}.

    Raises:
      ValueError: the header is not `HUANG_COLUMNS` or the file holds no data rows.
    """
    lines = [ln for ln in pathlib.Path(path).read_text().splitlines() if not ln.startswith("#")]
    rows = list(csv.DictReader(ln for ln in lines if ln.strip()))
    header = tuple(csv.reader([next(ln for ln in lines if ln.strip())]).__next__())
    if header[: len(HUANG_COLUMNS)] != HUANG_COLUMNS:
        raise ValueError(f"{path}: expected columns {HUANG_COLUMNS}, got {header}.")
    if not rows:
        raise ValueError(
            f"{path} holds no data rows: the published values were not available to this "
            "project (see the file's comments), so there is nothing to fit."
        )
    return {
        "model": np.array([r["model"] for r in rows]),
        "average_benchmark_score": np.array([float(r["average_benchmark_score"]) for r in rows]),
        "average_bpc": np.array([float(r["average_bpc"]) for r in rows]),
    }


def load_run_points(workdirs: Iterable[str | pathlib.Path], min_step: int = 1) -> list[dict]:
    """One point per eval line of each addition run directory.

    Returns:
      dicts with run, size, num_layers, width, step, bits_per_byte, answer_accuracy, excess_nats.

    Raises:
      FileNotFoundError: a directory has no metrics.jsonl or config.json.
    """
    points = []
    for workdir in map(pathlib.Path, workdirs):
        for name in ("config.json", "metrics.jsonl"):
            if not (workdir / name).is_file():
                raise FileNotFoundError(
                    f"{workdir} is not a train_addition.py run: "
                    + (f"it has no {name}." if workdir.is_dir() else "no such directory.")
                )
        config = json.loads((workdir / "config.json").read_text())
        for line in (workdir / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            if "eval_bits_per_byte" not in record or record["step"] < min_step:
                continue
            points.append(
                {
                    "run": workdir.name,
                    "size": config.get("size", ""),
                    "num_layers": config["model"]["num_layers"],
                    "width": config["model"]["width"],
                    "step": record["step"],
                    "bits_per_byte": record["eval_bits_per_byte"],
                    "answer_accuracy": record["answer_accuracy"],
                    "excess_nats": record["excess_nats"],
                }
            )
    return points


def write_points_csv(points: Sequence[dict], path: str | pathlib.Path) -> None:
    """Writes addition points (`load_run_points`) as a CSV with `POINT_COLUMNS`, floats at full
    precision so that a fit of the file equals the fit of the runs."""
    import runs

    runs.write_csv(path, points, POINT_COLUMNS)


def load_points_csv(path: str | pathlib.Path) -> list[dict]:
    """Reads a CSV written by `write_points_csv`.

    Raises:
      FileNotFoundError: no such file; ValueError: missing columns or a value that does not parse
        (naming the row).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no points file {path}.")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in POINT_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path} lacks the columns {', '.join(missing)}.")
        points = []
        for i, row in enumerate(reader, start=2):
            try:
                points.append({c: _POINT_TYPES.get(c, str)(row[c]) for c in POINT_COLUMNS})
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path}, line {i}: {e}") from None
    return points


def plot(
    ax,
    x,
    y,
    fit: Correlation,
    groups=None,
    xlabel="",
    ylabel="",
    title="",
    y_limits=None,
    colors: dict | None = None,
) -> bool:
    """Scatter of (x, y) coloured by `groups` if given, with the fitted line and r in the legend.

    `colors` maps a group to its colour, so that a run keeps one colour across panels that show
    different subsets of the runs (default: matplotlib's cycle in first-seen order).

    The line is drawn only over the data's x range, and within `y_limits` (e.g. (0, 1) for an
    accuracy). Where the relation is curved (`is_curved`) no line is drawn and the legend says so,
    with Spearman's rho beside r.

    Returns:
      Whether the line was drawn.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    groups = np.asarray(groups) if groups is not None else np.full(len(x), "")
    for g in dict.fromkeys(groups):  # keeps first-seen order
        mask = groups == g
        color = (colors or {}).get(g)
        ax.scatter(x[mask], y[mask], s=18, label=g or None, alpha=0.8, color=color)
    stats = f"r = {fit.r:.3f} [{fit.ci_low:.3f}, {fit.ci_high:.3f}], n = {fit.n}"
    segment = None if is_curved(x, y) else line_segment(fit, (x.min(), x.max()), y_limits)
    if segment is not None:
        ax.plot(*segment, "k--", lw=1, label=f"linear fit: {stats}")
    else:
        rho = spearman_rho(x, y)
        label = f"curved: no line drawn\n{stats}\nSpearman's rank rho = {rho:.3f}"
        ax.plot([], [], " ", label=label)
    plots.finish_axes(ax, xlabel, ylabel, title, fontsize=7)
    return segment is not None


def _describe(name: str, fit: Correlation) -> str:
    pct = round(100 * fit.confidence)
    return (
        f"{name}: n = {fit.n}, Pearson r = {fit.r:.4f} ({pct}% CI {fit.ci_low:.4f} to "
        f"{fit.ci_high:.4f}), fit y = {fit.slope:.4f} x + {fit.intercept:.4f}, "
        f"RMSE {fit.rmse:.4f}"
    )


def analyse(
    run_dirs: Sequence[str] = (),
    huang_csv: str | None = None,
    out: str | None = None,
    min_step: int = 1,
    min_accuracies: Sequence[float] = (),
    json_path: str | None = None,
    points_in: str | None = None,
    points_out: str | None = None,
) -> tuple[dict[str, Correlation], list[str]]:
    """Fits addition runs and/or Huang et al.'s rows; writes the plot and JSON if asked.

    Args:
      run_dirs: train_addition.py run directories; every eval line is a point.
      huang_csv: Huang et al. 2024's table (see `load_huang_csv`).
      out: PNG to write, a panel per fit.
      min_step: eval lines before this step are left out.
      min_accuracies: one more fit (and panel) each, of the points above that accuracy.
      json_path: where to write the fits as JSON.
      points_in: a CSV of addition points (`write_points_csv`) to fit instead of `run_dirs`.
      points_out: where to write the addition points fitted, as CSV.

    Returns:
      The fits by name, and lines of text describing them.

    Raises:
      ValueError: nothing to fit, or too few points; FileNotFoundError: a missing run or CSV.
    """
    if run_dirs and points_in:
        raise ValueError("give addition runs or a points file, not both.")
    if not run_dirs and not points_in and not huang_csv:
        raise ValueError("nothing to do: pass --runs=RUN,RUN,..., --points=CSV and/or --huang=CSV.")
    panels, results, lines = [], {}, []
    if run_dirs or points_in:
        if points_in:
            source = str(points_in)
            points = [p for p in load_points_csv(points_in) if p["step"] >= min_step]
        else:
            source = ", ".join(map(str, run_dirs))
            points = load_run_points(run_dirs, min_step)
        if len(points) < 4:
            raise ValueError(
                f"{len(points)} eval lines at step >= {min_step} in "
                f"{source}: a fit needs 4; train longer or lower --min_step."
            )
        if points_out:
            write_points_csv(points, points_out)
            lines.append(f"Wrote {points_out} ({len(points)} points)")
        x = [p["bits_per_byte"] for p in points]
        y = [p["answer_accuracy"] for p in points]
        groups = [p["run"] for p in points]
        fit = correlate(x, y)
        results["addition_all"] = fit
        lines.append(_describe("addition, all checkpoints (accuracy on bits per byte)", fit))
        lines.append(f"  Spearman rank correlation {spearman_rho(x, y):.4f}")
        panels.append((x, y, fit, groups, "all", (0.0, 1.0)))
        for threshold in min_accuracies:
            keep = [i for i, v in enumerate(y) if v > threshold]
            if len(keep) < 4:
                raise ValueError(
                    f"--min_accuracy={threshold:g} keeps {len(keep)} points: a fit needs 4."
                )
            sub = [[seq[i] for i in keep] for seq in (x, y, groups)]
            fit = correlate(sub[0], sub[1])
            results[f"addition_accuracy_above_{threshold:g}"] = fit
            lines.append(_describe(f"addition, accuracy > {threshold:g}", fit))
            panels.append((*sub[:2], fit, sub[2], f"accuracy > {threshold:g}", (0.0, 1.0)))
    if huang_csv:
        data = load_huang_csv(huang_csv)
        fit = correlate(data["average_bpc"], data["average_benchmark_score"])
        results["huang2024"] = fit
        lines.append(_describe("Huang et al. 2024 (average score on average BPC)", fit))
        panels.append(
            (data["average_bpc"], data["average_benchmark_score"], fit, None,
             "Huang et al. 2024", None)
        )  # fmt: skip
    if json_path:
        payload = {k: dataclasses.asdict(v) for k, v in results.items()}
        pathlib.Path(json_path).write_text(json.dumps(payload, indent=2) + "\n")
    if out:
        _plot_panels(panels, out)
        lines.append(f"Wrote {out}")
    return results, lines


def _plot_panels(panels: list[tuple], out: str) -> None:
    plt = plots.pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    names = dict.fromkeys(g for panel in panels for g in (panel[3] or []))
    colors = {name: f"C{i}" for i, name in enumerate(names)}  # one colour per run everywhere
    for ax, (x, y, fit, groups, title, y_limits) in zip(axes[0], panels, strict=True):
        if y_limits is None:  # Huang et al.'s table
            xlabel, ylabel = "average bits per character", "average benchmark score"
        else:
            xlabel, ylabel = "held-out bits per byte", "answer exact match"
        plot(ax, x, y, fit, groups, xlabel, ylabel, title, y_limits, colors)
    plots.save(fig, out)


def main(argv: list[str]) -> None:
    from absl import app, flags

    import cli

    cli.no_arguments(argv, "give several runs as one comma list, --runs=a,b")
    FLAGS = flags.FLAGS  # noqa: N806
    if not FLAGS.runs and not FLAGS.points and not FLAGS.huang:
        raise app.UsageError(
            "nothing to do: pass --runs=RUN,RUN,..., --points=CSV and/or --huang=CSV"
        )
    thresholds = cli.numbers(FLAGS.min_accuracy, "min_accuracy", float, "0,0.5")
    _, lines = analyse(
        FLAGS.runs,
        FLAGS.huang,
        FLAGS.out,
        FLAGS.min_step,
        thresholds,
        FLAGS.json,
        points_in=FLAGS.points,
        points_out=FLAGS.points_csv,
    )
    print("\n".join(lines))


def _define_flags() -> None:
    """The command line's flags: defined only when run as a script, never on import."""
    from absl import flags

    flags.DEFINE_list("runs", [], "Addition run directories (train_addition.py), comma-separated.")
    flags.DEFINE_string("huang", None, "CSV of Huang et al. 2024 (model, score, BPC).")
    flags.DEFINE_string("out", None, "PNG to write, a panel per fit.")
    flags.DEFINE_integer("min_step", 1, "Leave out eval lines before this step.")
    flags.DEFINE_list(
        "min_accuracy",
        [],
        "Also fit only the points above each of these accuracies (where the ability has "
        "emerged), e.g. 0,0.5; one extra panel each.",
    )
    flags.DEFINE_string("json", None, "Write the fits as JSON here.")
    flags.DEFINE_string(
        "points", None, "CSV of addition points (as --points_csv writes) to fit instead of --runs."
    )
    flags.DEFINE_string("points_csv", None, "Write the addition points fitted as CSV here.")


if __name__ == "__main__":
    import cli

    cli.run(main, define_flags=_define_flags)
