import json
import math
import pathlib

import numpy as np
import pytest

from analysis import correlation, curves


def test_fit_line_recovers_an_exact_line_and_matches_polyfit():
    x = np.array([0.5, 1.0, 2.0, 3.5, 7.0])
    slope, intercept = correlation.fit_line(x, -2.5 * x + 4.0)
    assert slope == pytest.approx(-2.5, abs=1e-12) and intercept == pytest.approx(4.0, abs=1e-12)

    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = 0.7 * x + rng.normal(scale=0.3, size=200)
    np.testing.assert_allclose(correlation.fit_line(x, y), np.polyfit(x, y, 1), rtol=1e-10)


def test_pearson_matches_numpy_corrcoef():
    rng = np.random.default_rng(1)
    for _ in range(5):
        x = rng.normal(size=50)
        y = -0.9 * x + rng.normal(scale=0.5, size=50)
        assert correlation.pearson_r(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    assert correlation.pearson_r([1, 2, 3], [6, 4, 2]) == pytest.approx(-1.0)


def test_spearman_uses_tie_averaged_ranks():
    # x ranks 1, 2, 3, 4; y = [0, 0, 1, 3] has ranks 1.5, 1.5, 3, 4 (two tied at the bottom).
    # Pearson of (1, 2, 3, 4) and (1.5, 1.5, 3, 4): 4.5 / sqrt(5 * 4.5) = 0.9486833.
    assert correlation.spearman_rho([1, 2, 3, 4], [0, 0, 1, 3]) == pytest.approx(0.9486833)
    assert correlation.spearman_rho([1, 2, 3], [1, 8, 27]) == pytest.approx(1.0)


def test_fisher_interval_against_hand_computed_values():
    # r = 0.5, n = 28: z = atanh(0.5) = 0.5493061, se = 1/5, half-width 1.959964 * 0.2 =
    # 0.3919928, so z runs from 0.1573133 to 0.9412989, whose tanh are 0.1560284 and 0.7358185.
    lo, hi = correlation.fisher_interval(0.5, 28)
    assert lo == pytest.approx(0.1560284, abs=1e-6) and hi == pytest.approx(0.7358185, abs=1e-6)
    # r = -0.93, n = 30: z = -1.6583900, se = 1/sqrt(27) = 0.1924501, half-width 0.3771952:
    # tanh(-2.0355853) = -0.9664573 and tanh(-1.2811948) = -0.8568029.
    lo, hi = correlation.fisher_interval(-0.93, 30)
    assert lo == pytest.approx(-0.9664573, abs=1e-6) and hi == pytest.approx(-0.8568029, abs=1e-6)
    # 90% is narrower, and the interval is antisymmetric in r.
    lo90, hi90 = correlation.fisher_interval(-0.93, 30, confidence=0.90)
    assert lo < lo90 < -0.93 < hi90 < hi
    assert correlation.fisher_interval(0.93, 30) == pytest.approx((-hi, -lo))
    assert correlation.fisher_interval(1.0, 10) == (1.0, 1.0)


def test_correlate_reports_line_r_interval_and_rmse():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    y = np.array([0.9, 0.8, 0.75, 0.5, 0.45, 0.2])
    fit = correlation.correlate(x, y)
    slope, intercept = np.polyfit(x, y, 1)
    assert fit.n == 6 and fit.confidence == 0.95
    assert fit.slope == pytest.approx(slope) and fit.intercept == pytest.approx(intercept)
    assert fit.r == pytest.approx(np.corrcoef(x, y)[0, 1])
    residual = y - (slope * x + intercept)
    assert fit.rmse == pytest.approx(math.sqrt(np.mean(residual**2)))
    assert (fit.ci_low, fit.ci_high) == pytest.approx(correlation.fisher_interval(fit.r, 6))


def test_bad_inputs_fail_loudly():
    with pytest.raises(ValueError, match="n >= 4"):
        correlation.fisher_interval(0.5, 3)
    with pytest.raises(ValueError, match="equal length"):
        correlation.correlate([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="constant"):
        correlation.pearson_r([1, 2, 3, 4], [5, 5, 5, 5])
    with pytest.raises(ValueError, match="All x are equal"):
        correlation.fit_line([2, 2, 2], [1, 2, 3])


def test_huang_loader_reads_rows_and_refuses_bad_files(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text(
        "# a comment\nmodel,average_benchmark_score,average_bpc\nm1,0.5,0.6\nm2,0.4,0.7\n"
    )
    data = correlation.load_huang_csv(path)
    assert list(data["model"]) == ["m1", "m2"]
    np.testing.assert_allclose(data["average_bpc"], [0.6, 0.7])
    np.testing.assert_allclose(data["average_benchmark_score"], [0.5, 0.4])

    path.write_text("# only a comment\nmodel,average_benchmark_score,average_bpc\n")
    with pytest.raises(ValueError, match="no data rows"):
        correlation.load_huang_csv(path)
    path.write_text("name,score\nm1,0.5\n")
    with pytest.raises(ValueError, match="expected columns"):
        correlation.load_huang_csv(path)


def test_shipped_huang_rows_reproduce_the_papers_fit():
    # Huang et al. 2024 (arXiv v2), Figure 1: 19 general-purpose models, Pearson -0.931, RMSE 3.1
    # points; the shipped rows are their Appendix B tables (see the CSV's header).
    shipped = correlation.pathlib.Path(__file__).parents[1] / "data"
    data = correlation.load_huang_csv(shipped / "huang2024_compression_intelligence.csv")
    assert len(data["model"]) == 19
    fit = correlation.correlate(data["average_bpc"], data["average_benchmark_score"])
    assert round(fit.r, 3) == -0.931
    assert abs(fit.rmse - 3.1) < 0.05


def _fake_run(path, accuracies, bits):
    path.mkdir()
    (path / "config.json").write_text(
        json.dumps({"size": "x", "model": {"num_layers": 2, "width": 32}})
    )
    lines = [{"step": 5, "loss": 2.0, "grad_norm": 1.0}]
    for i, (acc, bpb) in enumerate(zip(accuracies, bits, strict=True)):
        lines.append(
            {"step": 10 * (i + 1), "answer_accuracy": acc, "eval_bits_per_byte": bpb,
             "excess_nats": bpb - 1.0}
        )  # fmt: skip
    (path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_run_points_fits_plot_and_json(tmp_path):
    _fake_run(tmp_path / "a", [0.0, 0.2, 0.5], [2.5, 2.2, 2.0])
    _fake_run(tmp_path / "b", [0.1, 0.7, 0.9], [2.4, 1.95, 1.9])
    points = correlation.load_run_points([tmp_path / "a", tmp_path / "b"])
    assert [(p["run"], p["step"]) for p in points][:2] == [("a", 10), ("a", 20)]
    assert len(points) == 6 and points[-1]["answer_accuracy"] == 0.9

    out, js = tmp_path / "c.png", tmp_path / "c.json"
    runs = [str(tmp_path / "a"), str(tmp_path / "b")]
    _, lines = correlation.analyse(runs, out=str(out), min_accuracies=[0.05, 0.15], json_path=js)
    assert out.stat().st_size > 1000
    fits = json.loads(js.read_text())
    x = [2.5, 2.2, 2.0, 2.4, 1.95, 1.9]
    y = [0.0, 0.2, 0.5, 0.1, 0.7, 0.9]
    assert fits["addition_all"]["r"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert fits["addition_accuracy_above_0.05"]["n"] == 5
    assert fits["addition_accuracy_above_0.15"]["n"] == 4
    assert "Pearson r" in lines[0] and lines[-1] == f"Wrote {out}"
    with pytest.raises(ValueError, match="a fit needs 4"):
        correlation.analyse(runs, min_step=25)
    with pytest.raises(FileNotFoundError, match="not a train_addition.py run: no such directory"):
        correlation.analyse([str(tmp_path / "missing")])


def test_points_csv_reproduces_the_runs_fit(tmp_path):
    _fake_run(tmp_path / "a", [0.0, 0.2, 0.5], [2.5, 2.2, 2.0])
    _fake_run(tmp_path / "b", [0.1, 0.7, 0.9], [2.4, 1.95, 1.9])
    runs = [str(tmp_path / "a"), str(tmp_path / "b")]
    csv_path = tmp_path / "points.csv"
    fits, lines = correlation.analyse(runs, min_accuracies=[0.05], points_out=csv_path)
    assert f"Wrote {csv_path} (6 points)" in lines
    points = correlation.load_points_csv(csv_path)
    assert points == correlation.load_run_points(runs)
    again, _ = correlation.analyse(points_in=csv_path, min_accuracies=[0.05])
    assert again == fits  # every figure, to the last bit
    late, _ = correlation.analyse(points_in=csv_path, min_step=20)
    assert late["addition_all"].n == 4
    with pytest.raises(ValueError, match="not both"):
        correlation.analyse(runs, points_in=csv_path)
    csv_path.write_text("run,step\na,1\n")
    with pytest.raises(ValueError, match="lacks the columns size, num_layers"):
        correlation.load_points_csv(csv_path)
    correlation.write_points_csv(points, csv_path)
    csv_path.write_text(csv_path.read_text().replace("2.5", "two and a half"))
    with pytest.raises(ValueError, match="line 2"):
        correlation.load_points_csv(csv_path)
    with pytest.raises(FileNotFoundError, match="no points file"):
        correlation.load_points_csv(tmp_path / "missing.csv")


def test_shipped_addition_points_give_the_documented_fits():
    # docs/addition.md's table is computed from this file; a change to either must show here.
    shipped = pathlib.Path(__file__).resolve().parents[1] / "docs" / "addition_points.csv"
    fits, _ = correlation.analyse(points_in=shipped, min_accuracies=[0, 0.5])
    documented = {  # n, r, slope, rmse as the report prints them
        "addition_all": (52, -0.795, -0.831, 0.230),
        "addition_accuracy_above_0": (35, -0.892, -2.663, 0.161),
        "addition_accuracy_above_0.5": (18, -0.994, -5.588, 0.015),
    }
    for name, (n, r, slope, rmse) in documented.items():
        fit = fits[name]
        assert (fit.n, round(fit.r, 3), round(fit.slope, 3), round(fit.rmse, 3)) == (
            n,
            r,
            slope,
            rmse,
        ), name


def test_training_curve_plot_reads_eval_lines(tmp_path):
    # analysis/curves.py shares this file: both read train_addition's metrics.jsonl.
    run = tmp_path / "r"
    run.mkdir()
    lines = [
        {"step": s, "eval_loss": 1.3 + e, "excess_nats": e, "answer_accuracy": a,
         "excess_per_position": [e] * 10}
        for s, e, a in [(10, 0.5, 0.0), (20, 0.05, 0.6), (30, 0.001, 0.99)]
    ]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    ev = curves.load_evals(run)
    np.testing.assert_array_equal(ev["step"], [10, 20, 30])
    assert ev["excess_per_position"].shape == (3, 10)
    assert ev["floor_nats"] == pytest.approx(1.3)
    curves.plot_run(run, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
    with pytest.raises(ValueError, match="no eval lines"):
        curves.load_evals(run)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        curves.load_evals(tmp_path / "missing")


def _bent(num=40, seed=0):
    """Accuracy against bits per byte as in the addition runs: flat at 0, then a steep rise."""
    rng = np.random.default_rng(seed)
    x = np.linspace(1.82, 2.8, num)
    y = np.clip(np.exp(-12 * (x - 1.82)) + 0.01 * rng.standard_normal(num), 0, 1)
    return x, y


def test_curvature_tells_a_bent_relation_from_a_noisy_line():
    rng = np.random.default_rng(1)
    x = np.linspace(1.82, 1.91, 30)
    y = 1 - 5.5 * (x - 1.82) + 0.012 * rng.standard_normal(30)
    assert not correlation.is_curved(x, y)
    assert correlation.is_curved(*_bent())
    fraction, p = correlation.curvature(x, x**3)  # exactly a cubic: all of the residual removed
    assert fraction == pytest.approx(1.0) and p < 1e-6
    assert correlation.curvature([1, 2, 3], [1, 4, 9]) == (0.0, 1.0)  # too few points to tell


def test_fitted_line_stays_within_the_data_and_the_accuracy_range():
    x, y = _bent()
    fit = correlation.correlate(x, y)
    xs, ys = correlation.line_segment(fit, (x.min(), x.max()), (0.0, 1.0))
    assert x.min() <= xs[0] < xs[1] <= x.max()
    assert ys.min() >= -1e-12 and ys.max() <= 1 + 1e-12
    assert ys.min() == pytest.approx(0.0)  # the unclipped line would go below 0 in range
    assert fit.slope * x.max() + fit.intercept < 0
    flat = correlation.Correlation(4, 0.0, 0, 0, 0.95, 0.0, 2.0, 0.0)
    assert correlation.line_segment(flat, (0, 1), (0, 1)) is None  # entirely out of range


def test_plot_draws_a_clipped_line_or_none_where_curved_and_labels_every_panel():
    plt = correlation.plots.pyplot()
    fig, (bent_ax, straight_ax) = plt.subplots(1, 2)
    x, y = _bent()
    drawn = correlation.plot(
        bent_ax, x, y, correlation.correlate(x, y), ylabel="acc", y_limits=(0, 1)
    )
    assert not drawn and not [ln for ln in bent_ax.lines if len(ln.get_xdata())]
    assert "curved: no line drawn" in bent_ax.get_legend().get_texts()[0].get_text()
    xs = np.linspace(1.82, 1.91, 30)
    ys = 1.04 - 5.5 * (xs - 1.82) + 0.01 * np.random.default_rng(2).standard_normal(30)
    fit = correlation.correlate(xs, ys)
    assert correlation.plot(straight_ax, xs, ys, fit, ylabel="acc", y_limits=(0, 1))
    (line,) = [ln for ln in straight_ax.lines if len(ln.get_xdata())]
    assert xs.min() <= min(line.get_xdata()) and max(line.get_xdata()) <= xs.max()
    assert max(line.get_ydata()) == pytest.approx(1.0)  # the fit passes 1 near the left end:
    assert min(line.get_xdata()) > xs.min()  # cut there
    assert bent_ax.get_ylabel() == straight_ax.get_ylabel() == "acc"
    plt.close(fig)
