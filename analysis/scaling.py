r"""Scaling fits: compression rate against parameter count, with the model's own bytes counted.

  python -m analysis.scaling --csv=runs/scaling/results.csv --out_dir=docs \
      --dataset_sizes=500000,1e7,1e8,1e9

The raw rate (compressed / raw, held-out log-loss in bytes per byte) of models of N parameters is
fitted, per training-set size, by the power law

    rate(N) = a * N^-alpha + c

(scipy's `curve_fit`, standard errors from its covariance). Coding a dataset of D bytes also costs
the model itself, 2 bytes per parameter (the paper's accounting), so the adjusted rate is

    adjusted(N, D) = rate(N) + 2 N / D,

which has one minimum, at N* = (alpha * a * D / 2)^(1 / (1 + alpha)): the optimal model size for D
bytes (the paper's Figure 2: "the larger the dataset, the more parameters we can afford"). Its
uncertainty comes from drawing the fitted parameters from their covariance, in the fit's own
coordinates (N scaled by its geometric mean), and taking the 16th and 84th percentiles of N*
(N* can peak near the fitted alpha, so the point estimate may sit at the interval's top). An N*
outside the measured sizes is an extrapolation, and marked so.

Writes OUT/PREFIX_points.csv (every measured point with its adjusted rate per D),
OUT/PREFIX_fits.csv (a, alpha, c with standard errors, N* with its interval, per training-set size
and D) and OUT/PREFIX.png (log-log, one panel per training-set size, a curve per D).
"""

import csv
import dataclasses
import math
import pathlib
from collections.abc import Sequence

import numpy as np

import runs
from analysis import plots

BYTES_PER_PARAM = 2  # the paper's cost of one parameter in the adjusted rate


def power_law(n, a, alpha, c):
    """a * n^-alpha + c."""
    return a * np.power(np.asarray(n, np.float64), -alpha) + c


@dataclasses.dataclass(frozen=True)
class PowerLawFit:
    """rate(N) = a * N^-alpha + c, fitted as amp * (N / n0)^-alpha + c.

    The fit's own coordinates (amp, alpha, c) are where the least-squares surface is close to
    Gaussian; a = amp * n0^alpha is not (it is exponential in alpha), so `native_cov` holds the
    covariance of (amp, alpha, c) and `cov` that of (a, alpha, c) derived from it.
    """

    a: float
    alpha: float
    c: float
    n0: float
    native_cov: np.ndarray  # 3x3, order (amp, alpha, c)
    num_points: int
    rms_residual: float

    @property
    def amp(self) -> float:
        return self.a * self.n0**-self.alpha

    @property
    def cov(self) -> np.ndarray:
        """Covariance of (a, alpha, c), propagated from `native_cov` to first order."""
        scale = self.n0**self.alpha
        jac = np.array([[scale, self.amp * scale * math.log(self.n0), 0.0], [0, 1, 0], [0, 0, 1]])
        return jac @ self.native_cov @ jac.T

    @property
    def stderr(self) -> tuple[float, float, float]:
        return tuple(float(x) for x in np.sqrt(np.clip(np.diag(self.cov), 0, None)))

    def __call__(self, n):
        return power_law(n, self.a, self.alpha, self.c)

    def adjusted(self, n, dataset_bytes: float):
        """The adjusted rate rate(N) + 2N/D."""
        return self(n) + BYTES_PER_PARAM * np.asarray(n, np.float64) / dataset_bytes

    def optimal_size(self, dataset_bytes: float) -> float:
        """N* minimising the adjusted rate for D bytes (see the module docstring)."""
        return optimal_size(self.a, self.alpha, dataset_bytes)

    def optimal_size_interval(
        self, dataset_bytes: float, draws: int = 4000, seed: int = 0
    ) -> tuple[float, float]:
        """16th and 84th percentiles of N* over parameters drawn from the fit's covariance."""
        rng = np.random.default_rng(seed)
        mean = [self.amp, self.alpha, self.c]
        theta = rng.multivariate_normal(mean, self.native_cov, draws, "ignore")
        ok = (theta[:, 0] > 0) & (theta[:, 1] > 0)
        a = theta[ok, 0] * np.power(self.n0, theta[ok, 1])
        values = optimal_size(a, theta[ok, 1], dataset_bytes)
        if values.size < draws // 2:  # the fit does not pin the optimum down
            return math.nan, math.nan
        lo, hi = np.percentile(values, [16, 84])
        return float(lo), float(hi)


def optimal_size(a, alpha, dataset_bytes: float):
    """argmin over N of a*N^-alpha + 2N/D: (alpha * a * D / 2)^(1 / (1 + alpha))."""
    a, alpha = np.asarray(a, np.float64), np.asarray(alpha, np.float64)
    return np.power(alpha * a * dataset_bytes / BYTES_PER_PARAM, 1.0 / (1.0 + alpha))


def fit_power_law(
    num_params: Sequence[float], rates: Sequence[float], sigma: Sequence[float] | None = None
) -> PowerLawFit:
    """Least-squares fit of rate(N) = a * N^-alpha + c (a > 0, alpha in (0, 4], 0 <= c < min).

    N is scaled by its geometric mean inside the fit, which keeps the problem well conditioned.
    Without `sigma`, the covariance is scaled by the residuals (scipy's default).

    Raises:
      ValueError: fewer than four points (three parameters need at least one degree of freedom),
        or non-positive sizes or rates.
    """
    from scipy import optimize

    n = np.asarray(num_params, np.float64)
    y = np.asarray(rates, np.float64)
    if n.shape != y.shape or n.ndim != 1:
        raise ValueError("num_params and rates must be 1-D and of equal length.")
    if len(n) < 4:
        raise ValueError(f"A three-parameter fit needs at least 4 points, got {len(n)}.")
    if np.any(n <= 0) or np.any(y <= 0):
        raise ValueError("Sizes and rates must be positive.")
    n0 = float(np.exp(np.mean(np.log(n))))
    x = n / n0

    def f(x, amp, alpha, c):
        return amp * np.power(x, -alpha) + c

    # Start from a straight line in log-log space with c at half the smallest rate.
    c0 = 0.5 * y.min()
    slope = np.polyfit(np.log(x), np.log(np.maximum(y - c0, 1e-12)), 1)[0]
    p0 = [max(float(np.exp(np.mean(np.log(y - c0)))), 1e-6), min(max(-slope, 0.05), 3.0), c0]
    upper_c = float(y.min()) * (1 - 1e-9)
    params, cov = optimize.curve_fit(
        f,
        x,
        y,
        p0=p0,
        sigma=None if sigma is None else np.asarray(sigma, np.float64),
        absolute_sigma=sigma is not None,
        bounds=([1e-12, 1e-6, 0.0], [np.inf, 4.0, upper_c]),
        maxfev=20_000,
    )
    amp, alpha, c = (float(v) for v in params)
    a = amp * n0**alpha  # a * N^-alpha = amp * (N / n0)^-alpha
    residual = y - power_law(n, a, alpha, c)
    rms = float(np.sqrt(np.mean(residual**2)))
    return PowerLawFit(a, alpha, c, n0, np.asarray(cov, np.float64), len(n), rms)


OVERFIT_TOLERANCE = 0.02  # a larger model this much worse than the best marks overfitting


def _fit_group(n: np.ndarray, rate: np.ndarray) -> tuple[PowerLawFit | None, str]:
    """Fits a group's points, or says why not: a power law falls with N, so where the raw rate
    rises again (larger models overfitting small data) only the points up to the best model are
    fitted, and none when fewer than four remain."""
    best = int(np.argmin(rate))
    used = len(n)
    if rate[-1] > rate[best] * (1 + OVERFIT_TOLERANCE):
        used = best + 1
        why = f"rate rises past {n[best]:,.0f} params (overfitting)"
        if used < 4:
            return None, f"not fitted: {why}, {used} points before it"
    else:
        why = ""
    if used < 4:
        return None, f"not fitted: {used} points (a 3-parameter fit needs 4)"
    fit = fit_power_law(n[:used], rate[:used])
    return fit, f"fitted on {used} points" + (f"; {why}" if why else "")


def read_complete_rows(path: str | pathlib.Path, columns: Sequence[str] = ()) -> list[dict]:
    """The rows of a sweep's results.csv whose `status` is complete (all rows without one).

    Raises:
      FileNotFoundError: no such file.
      ValueError: the file lacks one of `columns`, or holds no complete run.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: pass a sweep's results.csv "
            "(python sweep.py --sweep=FILE --mode=gather writes it)."
        )
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path} has no column {', '.join(missing)}: is it a sweep's results.csv?"
            )
        rows = [r for r in reader if r.get("status", "complete") == "complete"]
    if not rows:
        raise ValueError(
            f"{path} has no complete runs: finish the sweep's runs "
            "(python sweep.py --sweep=FILE --mode=local), then gather again."
        )
    return rows


def _group_label(row: dict) -> str:
    train_bytes = int(float(row["train_bytes"]))
    tokenizer = row.get("tokenizer_name") or "bytes"
    return f"train {train_bytes:,} B" + ("" if tokenizer == "bytes" else f", {tokenizer}")


def format_bytes(d: float) -> str:
    """A byte count in decimal units: 500000 -> '500 kB', 1e7 -> '10 MB', 1e9 -> '1 GB'."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if d >= scale:
            return f"{d / scale:.3g} {unit}"
    return f"{d:.3g} B"


def _format_size(d: float) -> str:
    """'10 MB (enwik7)' for the enwik sizes, '500 kB' otherwise."""
    names = {1e7: "enwik7", 1e8: "enwik8", 1e9: "enwik9"}
    return format_bytes(d) + (f" ({names[d]})" if d in names else "")


def analyse(
    csv_path: str | pathlib.Path,
    out_dir: str | pathlib.Path,
    dataset_sizes: Sequence[float],
    prefix: str = "scaling",
    rate_key: str = "test_bits_per_byte",
) -> list[dict]:
    """Fits every training-set group of a sweep's results.csv; writes points, fits and a plot.

    Returns the fit rows (one per group and dataset size).
    """
    rows = read_complete_rows(csv_path, ("num_params", "train_bytes", rate_key))
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(_group_label(row), []).append(row)

    points, fits, plotted = [], [], []
    for label, members in groups.items():
        members.sort(key=lambda r: int(r["num_params"]))
        n = np.array([int(r["num_params"]) for r in members], np.float64)
        rate = np.array([float(r[rate_key]) / 8 for r in members])
        fit, note = _fit_group(n, rate)
        for r, ni, ri in zip(members, n, rate, strict=True):
            for d in dataset_sizes:
                points.append(
                    {
                        "group": label,
                        "run": r["run"],
                        "num_params": int(ni),
                        "dataset_bytes": d,
                        "raw_rate": ri,
                        "adjusted_rate": ri + BYTES_PER_PARAM * ni / d,
                    }
                )
        nan = math.nan
        a_err, alpha_err, c_err = fit.stderr if fit else (nan, nan, nan)
        for d in dataset_sizes:
            adjusted = rate + BYTES_PER_PARAM * n / d
            best = int(np.argmin(adjusted))
            n_opt = float(fit.optimal_size(d)) if fit else nan
            lo, hi = fit.optimal_size_interval(d) if fit else (nan, nan)
            fits.append(
                {
                    "group": label,
                    "dataset_bytes": d,
                    "fit": note,
                    "a": fit.a if fit else nan,
                    "a_stderr": a_err,
                    "alpha": fit.alpha if fit else nan,
                    "alpha_stderr": alpha_err,
                    "c": fit.c if fit else nan,
                    "c_stderr": c_err,
                    "rms_residual": fit.rms_residual if fit else nan,
                    "num_points": fit.num_points if fit else 0,
                    "optimal_params": n_opt,
                    "optimal_params_p16": lo,
                    "optimal_params_p84": hi,
                    "adjusted_rate_at_optimum": float(fit.adjusted(n_opt, d)) if fit else nan,
                    "extrapolated": bool(fit) and not (n.min() <= n_opt <= n.max()),
                    "best_measured_params": int(n[best]),
                    "best_measured_adjusted_rate": float(adjusted[best]),
                }
            )
        plotted.append((label, n, rate, fit, note))

    runs.write_csv(out_dir / f"{prefix}_points.csv", points, float_format=".6g")
    runs.write_csv(out_dir / f"{prefix}_fits.csv", fits, float_format=".6g")
    _plot(plotted, dataset_sizes, out_dir / f"{prefix}.png")
    return fits


def _plot(groups, dataset_sizes, path: pathlib.Path) -> None:
    """One log-log panel per training-set size; the legend, below the panels, is shared."""
    import textwrap

    from matplotlib.lines import Line2D

    plt = plots.pyplot()
    fig, axes = plt.subplots(1, len(groups), figsize=(5.6 * len(groups), 4.4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    any_fit = any(fit is not None for *_, fit, _ in groups)
    for ax, (label, n, rate, fit, note) in zip(axes[0], groups, strict=True):
        grid = np.geomspace(n.min() / 3, n.max() * 3, 200)
        for i, d in enumerate(dataset_sizes):
            color = colors[i % len(colors)]
            adjusted = rate + BYTES_PER_PARAM * n / d
            if fit is None:  # join the measured points instead
                ax.plot(n, adjusted, "o:", color=color, lw=1)
                continue
            ax.plot(n, adjusted, "o", color=color)
            ax.plot(grid, fit.adjusted(grid, d), "-", color=color, lw=1)
            n_opt = float(fit.optimal_size(d))
            if grid[0] <= n_opt <= grid[-1]:
                ax.plot(n_opt, fit.adjusted(n_opt, d), "*", color=color, ms=14, mec="k")
        if fit is not None:
            ax.plot(grid, fit(grid), "k--", lw=1)
            ax.text(
                0.03,
                0.96,
                rf"raw rate $= {fit.a:.3g}\,N^{{-{fit.alpha:.3f}}} + {fit.c:.3f}$",
                transform=ax.transAxes,
                va="top",
                fontsize=9,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8},
            )
        else:
            ax.text(
                0.5,
                0.97,
                textwrap.fill(f"{note}; points joined", 48),
                transform=ax.transAxes,
                ha="center",
                va="top",
                fontsize=8.5,
                bbox={"facecolor": "white", "edgecolor": "0.7", "alpha": 0.9},
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        plots.plain_log_ticks(ax.yaxis)
        ax.tick_params(labelsize=9)
        title = f"trained on {label.removeprefix('train ').replace(' B', ' bytes', 1)}"
        plots.finish_axes(ax, "parameters N", "adjusted rate = raw rate + 2N / D", title)
    handles = [
        Line2D(
            [], [], color=colors[i % len(colors)], marker="o", lw=1, label=f"D = {_format_size(d)}"
        )
        for i, d in enumerate(dataset_sizes)
    ]
    if any_fit:
        handles += [
            Line2D([], [], color="k", ls="--", lw=1, label=r"raw rate, fitted $a N^{-\alpha} + c$"),
            Line2D([], [], color="0.6", marker="*", ms=12, mec="k", ls="",
                   label="N*: optimal size for that D (minimum of its line)"),
        ]  # fmt: skip
    fig.legend(
        handles=handles,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=min(len(handles), 3),
        fontsize=9,
        title="D: size in bytes of the dataset to compress; dots: measured, lines: fitted",
        title_fontsize=9,
        frameon=False,
    )
    plots.save(fig, path)


def report(fits: list[dict]) -> str:
    """The fit rows as lines of text: best measured size, then the fit and N* per (group, D)."""
    lines = []
    for row in fits:
        head = f"{row['group']:18s} D = {_format_size(row['dataset_bytes']):17s}"
        best = (
            f"best measured {row['best_measured_params']:,} "
            f"(adjusted {row['best_measured_adjusted_rate']:.3f})"
        )
        if math.isnan(row["alpha"]):
            lines.append(f"{head}{best}; {row['fit']}")
            continue
        lines.append(
            f"{head}{best}; alpha={row['alpha']:.3f}+-{row['alpha_stderr']:.3f} "
            f"c={row['c']:.3f}+-{row['c_stderr']:.3f} N*={row['optimal_params']:,.0f} "
            f"[{row['optimal_params_p16']:,.0f}, {row['optimal_params_p84']:,.0f}]"
            f"{' (extrapolated)' if row['extrapolated'] else ''}"
        )
    return "\n".join(lines)


def parse_sizes(values: Sequence[str], flag: str = "--dataset_sizes") -> list[float]:
    """Positive byte counts from strings ('1e7', '500000').

    Raises:
      ValueError: an entry is not a positive number, or there is none.
    """
    try:
        sizes = [float(v) for v in values]
    except ValueError:
        sizes = []
    if not sizes or not all(math.isfinite(d) and d > 0 for d in sizes):
        raise ValueError(
            f"{flag}={','.join(values)}: give dataset sizes in bytes as a comma list of "
            "positive numbers, e.g. 1e7,1e8,1e9."
        )
    return sizes


def main(argv: list[str]) -> None:
    from absl import flags

    import cli

    cli.no_arguments(argv)
    FLAGS = flags.FLAGS  # noqa: N806
    fits = analyse(FLAGS.csv, FLAGS.out_dir, parse_sizes(FLAGS.dataset_sizes), FLAGS.prefix)
    print(report(fits))


def _define_flags() -> None:
    """The command line's flags: defined only when run as a script, never on import."""
    from absl import flags

    flags.DEFINE_string(
        "csv", None, "Required: a sweep's results.csv (python sweep.py ... --mode=gather)."
    )
    flags.DEFINE_string(
        "out_dir", None, "Required: where PREFIX_points.csv, PREFIX_fits.csv, PREFIX.png go."
    )
    flags.DEFINE_string("prefix", "scaling", "File name prefix of the outputs.")
    flags.DEFINE_list(
        "dataset_sizes", ["1e7", "1e8", "1e9"], "D in bytes for the adjusted rates (enwik7/8/9)."
    )
    flags.mark_flags_as_required(["csv", "out_dir"])


if __name__ == "__main__":
    import cli

    cli.run(main, define_flags=_define_flags)
