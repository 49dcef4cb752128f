import json
import logging
import math
import pathlib

import jax
import numpy as np
import pytest

import train_addition
from configs import addition as addition_config
from data import addition
from models import transformer


def _brute_force_position_entropy(tokens: np.ndarray) -> np.ndarray:
    """H(x_t | x_<t) in nats for every position of equally likely rows, by exact counting."""
    num = len(tokens)
    keys = np.zeros(num, np.int64)  # prefix x_<=t as one base-14 integer (exact up to 16 tokens)
    entropies = [0.0]  # H of the empty prefix
    for t in range(tokens.shape[1]):
        keys = keys * addition.VOCAB_SIZE + tokens[:, t]
        counts = np.unique(keys, return_counts=True)[1] / num
        entropies.append(float(-np.sum(counts * np.log(counts))))
    # H(X_t | X_<t) = H(X_<=t) - H(X_<t); position 0 ('s') is not predicted.
    out = np.diff(entropies)
    out[0] = 0.0
    return out


@pytest.mark.parametrize("num_digits", [1, 2, 3])
def test_floor_matches_brute_force_enumeration(num_digits):
    lo, hi = 10 ** (num_digits - 1), 10**num_digits
    a, b = np.meshgrid(np.arange(lo, hi), np.arange(lo, hi), indexing="ij")
    tokens = addition.encode(a.ravel(), b.ravel(), num_digits)  # every (a, b) exactly once
    expected = _brute_force_position_entropy(tokens)
    np.testing.assert_allclose(addition.position_entropy_nats(num_digits), expected, atol=1e-9)
    assert addition.floor_nats_per_token(num_digits) == pytest.approx(expected[1:].mean(), 1e-12)


def test_floor_of_eight_digits_is_the_entropy_of_two_uniform_operands():
    # log(9e7) nats per operand, spread over the 28 predicted tokens.
    assert addition.floor_nats_per_token(8) == pytest.approx(2 * math.log(9e7) / 28, rel=1e-12)
    assert addition.floor_nats_per_token() == pytest.approx(1.3082371591638957, rel=1e-12)


def test_floor_cli_prints_nats_per_token(capsys):
    addition.main(["--floor"])
    out = capsys.readouterr().out
    assert "1.308237 nats per predicted token" in out
    assert "  19   c0 0.000000" in out and "   1   a1 2.197225" in out


def test_batch_format_is_exact():
    rows = addition.sample_batch(512, seed=3, step=7)
    assert rows.dtype == np.int32 and rows.shape == (512, 29)
    assert addition.VOCAB == "0123456789se+=" and addition.VOCAB_SIZE == 14
    np.testing.assert_array_equal(rows[:, 0], 10)  # s
    np.testing.assert_array_equal(rows[:, 9], 12)  # +
    np.testing.assert_array_equal(rows[:, 18], 13)  # =
    np.testing.assert_array_equal(rows[:, 28], 11)  # e
    digits = np.delete(rows, [0, 9, 18, 28], axis=1)
    assert digits.min() >= 0 and digits.max() <= 9
    a, b, c = addition.decode(rows)
    assert (a >= 10_000_000).all() and (a <= 99_999_999).all()
    assert (b >= 10_000_000).all() and (b <= 99_999_999).all()
    np.testing.assert_array_equal(c, a + b)
    texts = addition.to_text(rows)
    assert texts == [f"s{x}+{y}={x + y:09d}e" for x, y in zip(a, b, strict=True)]
    assert addition.answer_positions(8) == slice(19, 28)


def test_batches_are_seeded_and_splits_disjoint():
    np.testing.assert_array_equal(
        addition.sample_batch(64, 0, 5), addition.sample_batch(64, 0, 5, split="train")
    )
    assert not np.array_equal(addition.sample_batch(64, 0, 5), addition.sample_batch(64, 0, 6))
    assert not np.array_equal(
        addition.sample_batch(64, 0, 5), addition.sample_batch(64, 0, 5, split="eval")
    )
    stream = addition.batches(8, seed=1, start_step=4)
    np.testing.assert_array_equal(next(stream), addition.sample_batch(8, 1, 4))
    np.testing.assert_array_equal(next(stream), addition.sample_batch(8, 1, 5))
    with pytest.raises(ValueError, match="split"):
        addition.sample_batch(8, 0, 0, split="valid")


def test_operand_digits_follow_the_generator_table():
    rows = addition.sample_batch(20_000, seed=0, step=0, num_digits=3)
    a, b, _ = addition.decode(rows, 3)
    for x in (a, b):
        counts = np.bincount(x - 100, minlength=900)
        assert counts.min() > 0  # every 3-digit number occurs
        # 900 equally likely values: the counts' chi-square is about 899 +- 42.
        chi2 = ((counts - len(x) / 900) ** 2 / (len(x) / 900)).sum()
        assert 899 - 6 * 42 < chi2 < 899 + 6 * 42


def test_bad_operands_and_rows_fail_loudly():
    with pytest.raises(ValueError, match=r"a must lie in \[10, 99\]"):
        addition.encode(np.array([5]), np.array([10]), 2)
    rows = addition.encode(np.array([12]), np.array([34]), 2)
    bad = rows.copy()
    bad[0, 3] = addition.EQUALS  # '+' replaced
    with pytest.raises(ValueError, match="s a \\+ b = c e"):
        addition.decode(bad, 2)
    with pytest.raises(ValueError, match="num_digits"):
        addition.sequence_length(0)


@pytest.mark.parametrize("size", [s for s in addition_config.PRESETS if s != "test"])
def test_size_presets_match_their_names(size):
    config = addition_config.get_config(f"size={size}")
    model_cfg = transformer.TransformerConfig.from_config(config.model, config.data.vocab_size)
    shapes = jax.eval_shape(lambda: transformer.init_params(model_cfg, jax.random.key(0)))
    measured = transformer.num_params(shapes)
    assert measured == transformer.closed_form_num_params(model_cfg)
    nominal = float(size[:-1]) * {"K": 1e3, "M": 1e6}[size[-1]]
    assert abs(math.log(measured / nominal)) < math.log(1.05), (size, measured)


def test_evaluate_matches_a_direct_numpy_computation():
    config = addition_config.get_config("size=test,digits=2")
    model_cfg = transformer.TransformerConfig.from_config(config.model, config.data.vocab_size)
    model = transformer.Transformer(model_cfg)
    params = transformer.init_params(model_cfg, jax.random.key(1))
    rows = addition.sample_batch(64, seed=0, step=0, num_digits=2, split="eval")
    got = train_addition.evaluate(
        train_addition.make_eval_fn(model, 2), params, rows, batch_size=32, num_digits=2
    )
    log_probs = np.asarray(jax.jit(model.apply)({"params": params}, rows), np.float64)
    nll = -np.take_along_axis(log_probs, rows[..., None], axis=-1)[..., 0]  # [64, 11]
    floor = addition.position_entropy_nats(2)
    row_loss = nll[:, 1:].mean(axis=1)
    assert got["loss"] == pytest.approx(row_loss.mean(), rel=1e-6)
    assert got["excess_nats"] == pytest.approx(row_loss.mean() - floor[1:].mean(), rel=1e-5)
    assert got["loss_stderr"] == pytest.approx(row_loss.std(ddof=1) / 8, rel=1e-4)
    np.testing.assert_allclose(got["excess_per_position"], (nll.mean(0) - floor)[1:], rtol=1e-5)
    exact = (log_probs.argmax(-1) == rows)[:, addition.answer_positions(2)].all(axis=1).mean()
    assert got["answer_accuracy"] == exact
    # Whole sequences per character, the certain leading 's' (position 0) at 0 bits.
    whole = nll[:, 1:].sum(1).mean() / math.log(2) / 11
    assert got["bits_per_byte"] == pytest.approx(whole, rel=1e-6)
    with pytest.raises(ValueError, match="multiple of batch"):
        train_addition.evaluate(None, params, rows[:40], batch_size=32, num_digits=2)


def _smoke_config(steps=20):
    config = addition_config.get_config("size=test,digits=2")
    config.train.steps = steps
    config.train.eval_samples = 512
    config.train.test_samples = 512
    config.train.eval_batch_size = 256
    config.optim.peak_lr = 1e-2
    return config


def test_train_smoke_writes_excess_metrics_and_resumes(tmp_path, caplog):
    config = _smoke_config(steps=30)
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        metrics = train_addition.train(config, tmp_path)
    compiles = [r for r in caplog.records if "Compiling jit(train_step)" in r.getMessage()]
    assert len(compiles) == 1  # the step never recompiled
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in lines if "excess_nats" in m]
    assert [m["step"] for m in evals] == [10, 20, 30]
    floor = addition.floor_nats_per_token(2)
    for m in evals:
        assert len(m["excess_per_position"]) == 10  # 11 tokens, all but 's' predicted
        assert m["excess_nats"] == pytest.approx(m["eval_loss"] - floor)
        assert np.mean(m["excess_per_position"]) == pytest.approx(m["excess_nats"])
        assert 0.0 <= m["answer_accuracy"] <= 1.0 and m["loss_stderr"] > 0.0
    losses = [m["loss"] for m in lines if "grad_norm" in m]
    assert losses[-1] < losses[0] - 0.3  # starts near log(14) = 2.64
    assert evals[-1]["excess_nats"] < evals[0]["excess_nats"]
    assert metrics["test_excess_nats"] == pytest.approx(metrics["test_loss"] - floor)
    assert metrics["floor_nats"] == pytest.approx(floor)
    assert lines[-1]["test_samples"] == 512 and "test_answer_accuracy" in lines[-1]

    resumed = train_addition.train(config, tmp_path)  # nothing left to train
    assert resumed["step"] == 30
    assert resumed["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-6)

    other = _smoke_config(steps=30)
    other.model.width = 32
    with pytest.raises(ValueError, match="another model"):
        train_addition.train(other, tmp_path)


def test_train_rejects_inconsistent_config(tmp_path):
    config = _smoke_config()
    config.model.context_length = 29  # the 2-digit task has 11 tokens
    with pytest.raises(ValueError, match="context_length must be 11"):
        train_addition.train(config, tmp_path)
    config = _smoke_config()
    config.data.vocab_size = 256
    with pytest.raises(ValueError, match="vocab_size must be 14"):
        train_addition.train(config, pathlib.Path(tmp_path) / "v")
