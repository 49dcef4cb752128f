import gzip
import json
import logging
import lzma
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import runs
import train
from configs import default
from data import batches, corpus
from training import checkpoints, loop

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(steps=20, **overrides):
    config = default.get_config("size=test")
    config.train.steps = steps
    config.train.log_every = 5
    config.train.eval_every = 10
    config.train.checkpoint_every = 10
    config.train.eval_max_bytes = 4096
    config.train.progress = False
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    return config


def _metrics(workdir):
    return runs.read_jsonl(pathlib.Path(workdir) / runs.METRICS_FILE)


def test_loss_falls_on_real_text_without_recompiling(tmp_path, enwik5_path, caplog):
    config = _config(steps=60, **{"data.path": str(enwik5_path)})
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        metrics = train.train(config, tmp_path)
    losses = [m["loss"] for m in _metrics(tmp_path) if "loss" in m]
    assert losses[0] > 4.5  # about ln(256) = 5.55 at the start
    assert losses[-1] < losses[0] - 1.5
    assert metrics["eval_bits_per_byte"] < 5.0
    # The step compiled once and never again (a changed shape or dtype would recompile).
    compiles = [r for r in caplog.records if "Compiling jit(train_step)" in r.getMessage()]
    assert len(compiles) == 1
    saved = json.loads((tmp_path / runs.CONFIG_FILE).read_text())
    assert saved["data"]["name"] == f"file:{enwik5_path}"  # not the default corpus's name
    assert metrics["num_params"] == 41_792
    evals = [m for m in _metrics(tmp_path) if "eval_bits_per_byte" in m]
    assert [m["step"] for m in evals] == [10, 20, 30, 40, 50, 60]


def test_classical_figures_count_containers_per_window_and_once():
    data = corpus.pydocs_bytes()[:1000]  # windows of 256, 256, 256 and 232 bytes
    out = train.classical_bits_per_byte(data, 256)
    windows = [data[i : i + 256] for i in range(0, 1000, 256)]
    for name, compress in (
        ("gzip", lambda b: gzip.compress(b, 9, mtime=0)),
        ("lzma", lzma.compress),
    ):
        per_window = sum(len(compress(w)) for w in windows)
        header = len(compress(b"\0"))  # the reference's container measure: 21 bytes for gzip
        assert out[f"{name}_bits_per_byte"] == 8 * len(compress(data)) / 1000
        assert out[f"{name}_chunked_bits_per_byte"] == 8 * per_window / 1000
        assert (
            out[f"{name}_chunked_header_once_bits_per_byte"] == 8 * (per_window - 3 * header) / 1000
        )
    gap = out["gzip_chunked_bits_per_byte"] - out["gzip_chunked_header_once_bits_per_byte"]
    assert gap == pytest.approx(8 * 3 * 21 / 1000)


def test_resume_continues_with_identical_state(tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    train.train(_config(steps=20), straight)

    interrupted = tmp_path / "interrupted"
    real_sample = batches.sample_windows

    def crash_at_15(tokens, batch_size, seq_len, seed, step):
        if step == 15:
            raise KeyboardInterrupt("simulated crash")
        return real_sample(tokens, batch_size, seq_len, seed, step)

    monkeypatch.setattr(batches, "sample_windows", crash_at_15)
    with pytest.raises(KeyboardInterrupt):
        train.train(_config(steps=20), interrupted)
    monkeypatch.setattr(batches, "sample_windows", real_sample)
    assert checkpoints.restore_params(interrupted)[2] == 10

    resumed = train.train(_config(steps=20), interrupted)
    assert resumed["step"] == 20
    _, params_a, step_a = checkpoints.restore_params(straight)
    _, params_b, step_b = checkpoints.restore_params(interrupted)
    assert step_a == step_b == 20
    for a, b in zip(
        jax.tree_util.tree_leaves(params_a), jax.tree_util.tree_leaves(params_b), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_resume_refuses_another_model(tmp_path):
    train.train(_config(steps=5), tmp_path)
    with pytest.raises(ValueError, match="another model.*width"):
        train.train(_config(steps=5, **{"model.width": 64}), tmp_path)


def test_train_bytes_limits_the_data_and_is_part_of_the_run(tmp_path):
    metrics = train.train(_config(steps=2, **{"data.train_bytes": 3000}), tmp_path)
    assert metrics["train_bytes"] == 3000
    saved = json.loads((tmp_path / runs.RESULTS_FILE).read_text())
    assert saved["step"] == 2 and saved["train_bytes"] == 3000
    with pytest.raises(ValueError, match="another model or data.*train_bytes"):
        train.train(_config(steps=4, **{"data.train_bytes": 6000}), tmp_path)
    with pytest.raises(ValueError, match="outside"):
        train.train(_config(steps=2, **{"data.train_bytes": 10**9}), tmp_path / "big")
    assert not (tmp_path / "big" / runs.CONFIG_FILE).exists()


def test_non_finite_loss_stops_with_step(tmp_path):
    config = _config(steps=20, **{"optim.peak_lr": 1e30, "optim.warmup_steps": 1})
    with pytest.raises(loop.NonFiniteLossError, match=r"at step \d+"):
        train.train(config, tmp_path)


def test_wandb_offline_never_blocks(tmp_path):
    # Without the wandb package (or network) training goes on and logs a warning.
    metrics = train.train(_config(steps=5, **{"wandb.mode": "offline"}), tmp_path)
    assert metrics["step"] == 5


def test_cli_rejects_misspelt_override(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            "--config=configs/default.py:size=test",
            "--config.train.stepz=3",
            f"--workdir={tmp_path}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "stepz" in result.stderr


_MULTI_DEVICE = """
import jax, numpy as np
from jax.sharding import AxisType
from configs import default
from models import transformer
from training import steps
assert jax.device_count() == 4, jax.devices()
config = default.get_config("size=test")
model_cfg = transformer.TransformerConfig.from_config(config.model, 256)
model = transformer.Transformer(model_cfg)
tx = steps.make_optimizer(config.optim, 10)
tokens = np.random.default_rng(0).integers(0, 256, (16, 64)).astype(np.int32)
results = []
for devices in (jax.devices()[:1], jax.devices()):
    mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,), devices=devices)
    step = steps.make_train_step(model, tx, mesh)
    params = transformer.init_params(model_cfg, jax.random.key(0))
    state = {"step": np.int32(0), "params": params, "opt_state": tx.init(params)}
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    for _ in range(3):
        state, metrics = step(state, jax.device_put(tokens, sharding))
    results.append((jax.device_get(state["params"]), float(metrics["loss"])))
(p1, l1), (p4, l4) = results
assert abs(l1 - l4) < 1e-5, (l1, l4)
for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p4)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
print("OK", l1, l4)
"""


def test_four_devices_match_one():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    result = subprocess.run(
        [sys.executable, "-c", _MULTI_DEVICE],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("OK")


def test_an_older_run_without_new_model_fields_resumes(tmp_path):
    train.train(_config(steps=5), tmp_path)
    saved = json.loads((tmp_path / runs.CONFIG_FILE).read_text())
    del saved["model"]["positions"]  # written before `positions` existed
    (tmp_path / runs.CONFIG_FILE).write_text(json.dumps(saved))
    (tmp_path / runs.RESULTS_FILE).unlink()
    # Going on past the 5 steps it was trained for is an extension, said explicitly.
    assert train.train(_config(steps=10, **{"train.extend": True}), tmp_path)["step"] == 10


@pytest.mark.parametrize(
    "override, message",
    [
        ({"train.batch_size": 0}, r"train.batch_size=0: must be an integer >= 1"),
        ({"train.log_every": 0}, r"train.log_every=0: must be an integer >= 1"),
        ({"train.steps": -5}, r"train.steps=-5: must be an integer >= 1"),
        ({"optim.peak_lr": 0.0}, r"optim.peak_lr=0.0: must be a number in \(0, inf\)"),
        ({"model.num_heads": 3}, r"model.width=32 must split into model.num_heads=3"),
        ({"data.valid_fraction": 1.5}, r"data.valid_fraction=1.5: must be a number in \(0, 1\)"),
    ],
)
def test_numeric_fields_are_checked_before_anything_compiles(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        train.train(_config(steps=5, **override), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_rerunning_a_complete_run_leaves_it_alone(tmp_path):
    first = train.train(_config(steps=5), tmp_path)
    results = (tmp_path / runs.RESULTS_FILE).read_bytes()
    lines = (tmp_path / runs.METRICS_FILE).read_bytes()
    again = train.train(_config(steps=5), tmp_path)
    assert again == json.loads(results) and again["loss"] == first["loss"]
    assert (tmp_path / runs.RESULTS_FILE).read_bytes() == results  # not a degraded copy
    assert (tmp_path / runs.METRICS_FILE).read_bytes() == lines
