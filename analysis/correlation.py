"""Compression against capability: a least-squares line, Pearson r and its Fisher-z interval.

Pure functions over arrays, plus loaders for the two sources of points:
  * addition runs (`train_addition.py`): every eval line of a run is one checkpoint, with its
    held-out bits per byte (compression) and exact-match answer accuracy (capability);
  * Huang et al. 2024's published (model, average benchmark score, average BPC) table, as a CSV
    with columns `model,average_benchmark_score,average_bpc` ('#' lines are comments).

  python -m analysis.correlation --runs runs/addition-* --out docs/addition_correlation.png
  python -m analysis.correlation --huang data/huang2024_compression_intelligence.csv

The interval is the usual Fisher transform: z = atanh(r) is close to normal with standard error
1 / sqrt(n - 3), so the interval is tanh(z -+ q / sqrt(n - 3)) with q the normal quantile. It
assumes independent points; checkpoints along one run are not, so read it as a rough guide there.
"""

import argparse
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


def plot(ax, x, y, fit: Correlation, groups=None, xlabel="", ylabel="", title=""):
    """Scatter of (x, y) coloured by `groups` if given, with the fitted line and r in the legend."""
    x, y = np.asarray(x), np.asarray(y)
    groups = np.asarray(groups) if groups is not None else np.full(len(x), "")
    for g in dict.fromkeys(groups):  # keeps first-seen order
        mask = groups == g
        ax.scatter(x[mask], y[mask], s=18, label=g or None, alpha=0.8)
    xs = np.linspace(x.min(), x.max(), 2)
    ax.plot(
        xs,
        fit.slope * xs + fit.intercept,
        "k--",
        lw=1,
        label=f"fit: r = {fit.r:.3f} [{fit.ci_low:.3f}, {fit.ci_high:.3f}], n = {fit.n}",
    )
    plots.finish_axes(ax, xlabel, ylabel, title, fontsize=7)


def _describe(name: str, fit: Correlation) -> str:
    pct = round(100 * fit.confidence)
    return (
        f"{name}: n = {fit.n}, Pearson r = {fit.r:.4f} ({pct}% CI {fit.ci_low:.4f} to "
        f"{fit.ci_high:.4f}), fit y = {fit.slope:.4f} x + {fit.intercept:.4f}, "
        f"RMSE {fit.rmse:.4f}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="*", default=[], help="addition run directories")
    parser.add_argument("--huang", help="CSV of Huang et al. 2024 (model, score, BPC)")
    parser.add_argument("--out", help="PNG to write")
    parser.add_argument("--min_step", type=int, default=1, help="skip eval lines before this step")
    parser.add_argument(
        "--min_accuracy",
        type=float,
        nargs="*",
        default=[],
        help="also fit only the points above each of these accuracies (where the ability has "
        "emerged); one extra panel each",
    )
    parser.add_argument("--json", help="write the fits as JSON here")
    args = parser.parse_args(argv)
    if not args.runs and not args.huang:
        parser.error("nothing to do: pass --runs and/or --huang")

    panels, results = [], {}
    if args.runs:
        points = load_run_points(args.runs, args.min_step)
        x = [p["bits_per_byte"] for p in points]
        y = [p["answer_accuracy"] for p in points]
        groups = [p["run"] for p in points]
        fit = correlate(x, y)
        results["addition_all"] = fit
        print(_describe("addition, all checkpoints (accuracy on bits per byte)", fit))
        print(f"  Spearman rank correlation {spearman_rho(x, y):.4f}")
        panels.append((x, y, fit, groups, "held-out bits per byte", "answer exact match", "all"))
        for threshold in args.min_accuracy:
            keep = [i for i, v in enumerate(y) if v > threshold]
            sub = [[seq[i] for i in keep] for seq in (x, y, groups)]
            fit = correlate(sub[0], sub[1])
            results[f"addition_accuracy_above_{threshold:g}"] = fit
            print(_describe(f"addition, accuracy > {threshold:g}", fit))
            title = f"accuracy > {threshold:g}"
            panels.append((*sub[:2], fit, sub[2], "held-out bits per byte", "", title))
    if args.huang:
        data = load_huang_csv(args.huang)
        fit = correlate(data["average_bpc"], data["average_benchmark_score"])
        results["huang2024"] = fit
        print(_describe("Huang et al. 2024 (average score on average BPC)", fit))
        panels.append(
            (data["average_bpc"], data["average_benchmark_score"], fit, None, "average BPC",
             "average benchmark score", "Huang et al. 2024")
        )  # fmt: skip
    if args.json:
        payload = {k: dataclasses.asdict(v) for k, v in results.items()}
        pathlib.Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    if args.out:
        plt = plots.pyplot()
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
        for ax, (x, y, fit, groups, xlabel, ylabel, title) in zip(axes[0], panels, strict=True):
            plot(ax, x, y, fit, groups, xlabel, ylabel, title)
        plots.save(fig, args.out)
        print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
