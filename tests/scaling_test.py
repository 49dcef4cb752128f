"""Scaling fits: known curves are recovered, the optimum is the true minimum, files are written."""

import csv

import numpy as np
import pytest

from analysis import scaling


def _points(a, alpha, c, noise, num=10, seed=0):
    rng = np.random.default_rng(seed)
    n = np.geomspace(2e4, 1e8, num)
    y = scaling.power_law(n, a, alpha, c)
    return n, y * (1 + noise * rng.standard_normal(num))


@pytest.mark.parametrize("a, alpha, c", [(3.0, 0.3, 0.15), (40.0, 0.5, 0.1), (1.2, 0.12, 0.05)])
def test_fit_recovers_known_parameters_from_noisy_points(a, alpha, c):
    n, y = _points(a, alpha, c, noise=0.002)
    fit = scaling.fit_power_law(n, y)
    a_err, alpha_err, c_err = fit.stderr
    for true, got, err in ((a, fit.a, a_err), (alpha, fit.alpha, alpha_err), (c, fit.c, c_err)):
        assert abs(got - true) < 4 * err + 1e-9, (true, got, err)
    assert abs(fit.alpha - alpha) / alpha < 0.1
    assert fit.rms_residual < 0.01 * y.mean()


def test_fit_is_exact_without_noise_and_errors_shrink_with_noise():
    n, y = _points(3.0, 0.3, 0.15, noise=0.0)
    fit = scaling.fit_power_law(n, y)
    np.testing.assert_allclose([fit.a, fit.alpha, fit.c], [3.0, 0.3, 0.15], rtol=1e-4)
    noisy = scaling.fit_power_law(*_points(3.0, 0.3, 0.15, noise=0.01))
    quiet = scaling.fit_power_law(*_points(3.0, 0.3, 0.15, noise=0.001))
    assert quiet.stderr[1] < noisy.stderr[1]


def test_optimal_size_is_the_minimum_of_the_adjusted_rate():
    fit = scaling.fit_power_law(*_points(3.0, 0.3, 0.15, noise=0.0))
    for d in (1e7, 1e8, 1e9):
        grid = np.geomspace(1e3, 1e10, 200_001)
        brute = grid[np.argmin(fit.adjusted(grid, d))]
        assert abs(np.log(fit.optimal_size(d) / brute)) < 1e-3
    # the larger the dataset, the more parameters it affords
    sizes = [fit.optimal_size(d) for d in (1e7, 1e8, 1e9)]
    assert sizes == sorted(sizes)
    lo, hi = fit.optimal_size_interval(1e8)
    assert lo <= hi


def test_fit_refuses_too_few_or_bad_points():
    with pytest.raises(ValueError, match="at least 4"):
        scaling.fit_power_law([1e4, 1e5, 1e6], [0.5, 0.4, 0.3])
    with pytest.raises(ValueError, match="positive"):
        scaling.fit_power_law([1e4, 1e5, 1e6, 0], [0.5, 0.4, 0.3, 0.2])


def test_analyse_writes_points_fits_and_plot_per_training_size(tmp_path):
    rows = []
    for train_bytes, a in ((0, 3.0), (65536, 2.0)):
        for n in (21_312, 66_944, 231_936, 856_832, 3_286_272):
            bpb = 8 * scaling.power_law(n, a, 0.3, 0.15)
            rows.append(
                {
                    "run": f"{train_bytes}-{n}",
                    "status": "complete",
                    "num_params": n,
                    "train_bytes": train_bytes or 450_000,
                    "tokenizer_name": "bytes",
                    "test_bits_per_byte": bpb,
                }
            )
    rows.append(
        {
            "run": "unfinished",
            "status": "partial",
            "num_params": "",
            "train_bytes": "",
            "tokenizer_name": "",
            "test_bits_per_byte": "",
        }
    )
    path = tmp_path / "results.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    fits = scaling.analyse(path, tmp_path / "out", [1e6, 1e8])
    assert len(fits) == 4  # 2 training sizes x 2 dataset sizes
    assert {f["group"] for f in fits} == {"train 450,000 B", "train 65,536 B"}
    for f in fits:
        assert abs(f["alpha"] - 0.3) < 1e-3
    assert (tmp_path / "out" / "scaling.png").stat().st_size > 10_000
    with open(tmp_path / "out" / "scaling_points.csv") as f:
        assert len(list(csv.DictReader(f))) == 10 * 2
    with open(tmp_path / "out" / "scaling_fits.csv") as f:
        assert len(list(csv.DictReader(f))) == 4


def test_overfitting_groups_are_fitted_only_below_the_best_model_or_not_at_all():
    n = np.geomspace(2e4, 3e6, 7)
    rising = scaling.power_law(n, 3.0, 0.3, 0.15)
    rising[-2:] *= [1.2, 1.5]  # the two largest models overfit
    fit, note = scaling._fit_group(n, rising)
    assert fit is not None and fit.num_points == 5 and "overfitting" in note
    assert abs(fit.alpha - 0.3) < 1e-3
    early = scaling.power_law(n, 3.0, 0.3, 0.15)
    early[2:] = early[1] * np.linspace(1.05, 2.0, 5)  # best at the second size
    fit, note = scaling._fit_group(n, early)
    assert fit is None and note.startswith("not fitted") and "2 points" in note


def test_tokenizer_table_charges_the_larger_vocabularies(tmp_path):
    from analysis import tokenizers

    path = tmp_path / "results.csv"
    header = "run,status,tokenizer_name,num_params,tokens_seen,bytes_per_token,test_bits_per_byte\n"
    path.write_text(
        header
        + "b,complete,bytes,231936,1000,1.0,2.0\n"
        + "k,complete,bpe:1000,327424,1000,2.5,1.8\n"
        + "p,partial,bpe:2000,,,,\n"
    )
    rows = tokenizers.table(path, [1e6])
    assert [r["tokenizer"] for r in rows] == ["bytes", "bpe:1000"]
    assert [r["vocab_size"] for r in rows] == [256, 1000]
    assert rows[1]["bytes_seen"] == 2500
    assert rows[0]["adjusted_rate_D=1e+06"] == pytest.approx(2.0 / 8 + 2 * 231936 / 1e6)
    assert rows[1]["adjusted_rate_D=1e+06"] == pytest.approx(1.8 / 8 + 2 * 327424 / 1e6)
    tokenizers.plot(rows, [1e6], tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 5_000


def test_results_csv_errors_name_the_problem_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found: pass a sweep's results.csv"):
        scaling.read_complete_rows(tmp_path / "missing.csv")
    partial = tmp_path / "partial.csv"
    partial.write_text("run,status,num_params,train_bytes,test_bits_per_byte\na,partial,,,\n")
    with pytest.raises(ValueError, match="no complete runs: finish the sweep's runs"):
        scaling.analyse(partial, tmp_path / "out", [1e7])
    with pytest.raises(ValueError, match="no column tokens_seen"):
        scaling.read_complete_rows(partial, ("num_params", "tokens_seen"))
    assert scaling.parse_sizes(["5e5", "1e9"]) == [500_000.0, 1e9]
    for bad in (["1e7", "x"], ["-1"], []):
        with pytest.raises(ValueError, match="comma list of positive numbers"):
            scaling.parse_sizes(bad)


def test_dataset_sizes_are_labelled_in_bytes():
    assert [scaling.format_bytes(d) for d in (5e5, 1e7, 1e9, 2048, 12)] == [
        "500 kB",
        "10 MB",
        "1 GB",
        "2.05 kB",
        "12 B",
    ]
    assert scaling._format_size(1e8) == "100 MB (enwik8)"


def test_tokenizer_plot_flags_the_adjusted_curves_that_lie_on_the_raw_rate():
    from analysis import tokenizers

    rows = [{"num_params": 2_000_000, "raw_rate": 0.25}, {"num_params": 250_000, "raw_rate": 0.2}]
    assert tokenizers._near_raw(rows, 1e9)  # 2N/D = 0.004 at most, under 2% of the raw rate
    assert not tokenizers._near_raw(rows, 1e7)  # 0.4 for the larger model
