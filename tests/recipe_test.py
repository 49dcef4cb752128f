"""training.recipe: a resume keeps the recipe it was trained with, unless asked to extend."""

import dataclasses
import json

import pytest

import runs
import train
from configs import addition, default
from models import transformer
from training import recipe


def _config(steps=5, **overrides):
    config = default.get_config("size=test")
    config.train.steps = steps
    config.train.batch_size = 4
    config.model.context_length = 32
    config.train.log_every = 5
    config.train.eval_every = 5
    config.train.checkpoint_every = 5
    config.train.eval_max_bytes = 512
    config.train.progress = False
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    return config


def _now(config) -> dict:
    return json.loads(config.to_json())


def test_older_run_defaults_are_the_models_defaults():
    fields = dataclasses.fields(transformer.TransformerConfig)
    expected = {f.name: f.default for f in fields if f.name != "vocab_size"}
    assert recipe.OLDER_RUN_DEFAULTS["model"] == expected


def test_operational_fields_may_change_and_recipe_fields_may_not():
    saved = _now(_config())
    operational = _config(
        **{"train.log_every": 1, "train.eval_every": 1, "train.checkpoint_every": 1,
           "train.keep_checkpoints": 7, "train.progress": True, "train.extend": True,
           "wandb.mode": "offline", "data.cache_dir": "/elsewhere"}
    )  # fmt: skip
    operational.distributed = True
    assert recipe.changes(saved, _now(operational)) == {}
    for key, value in [
        ("optim.peak_lr", 0.02),
        ("optim.warmup_steps", 3),
        ("train.batch_size", 8),
        ("train.eval_max_bytes", 256),
        ("model.width", 64),
        ("data.train_bytes", 4096),
    ]:
        now = _config(**{key: value})
        assert list(recipe.changes(saved, _now(now))) == [key], key
    now = _now(_config(steps=6))
    now["seed"], now["tokenizer"] = 1, "bpe:300"
    assert recipe.differences(saved, now) == [
        "seed: 0 -> 1",
        "tokenizer: 'bytes' -> 'bpe:300'",
        "train.steps: 5 -> 6",
    ]
    # An allow-list: a field no list knows about is part of the recipe.
    now["train"]["new_option"] = 3
    assert "train.new_option" in recipe.changes({**saved, "train": {**saved["train"],
                                                 "new_option": 2}}, now)  # fmt: skip


def test_fields_an_older_run_lacks_mean_what_they_meant_then():
    saved = _now(_config())
    del saved["model"]["positions"], saved["data"]["train_bytes"]
    assert recipe.changes(saved, _now(_config())) == {}
    changed = recipe.changes(saved, _now(_config(**{"model.positions": "sinusoidal"})))
    assert changed == {"model.positions": ["rotary", "sinusoidal"]}
    assert recipe.changes(saved, _now(_config(**{"data.train_bytes": 9}))) == {
        "data.train_bytes": [None, 9]
    }
    saved["model"]["dtype"] = "bfloat16"  # 'auto' resolves to the run's own dtype
    assert recipe.changes(saved, _now(_config(**{"model.dtype": "auto"}))) == {}


def test_extend_may_raise_steps_and_change_the_optimiser_only():
    assert recipe.extend_refusal({"train.steps": [5, 10], "optim.peak_lr": [0.01, 0.001]}) is None
    assert "only raises train.steps" in recipe.extend_refusal({"train.steps": [10, 5]})
    assert "cannot change model.width" in recipe.extend_refusal({"model.width": [32, 64]})
    assert "cannot change optim.name" in recipe.extend_refusal({"optim.name": ["adamw", "x"]})


def test_train_extend_is_an_operational_field_of_both_configs():
    for config in (default.get_config("size=test"), addition.get_config("size=test")):
        assert config.train.extend is False
    assert recipe.is_operational("train.extend")


def test_a_run_that_trained_nothing_may_start_over_under_another_recipe(tmp_path):
    (tmp_path / runs.CONFIG_FILE).write_text(_config().to_json())
    assert recipe.check_resume(tmp_path, _config(**{"model.width": 64})) == {}
    (tmp_path / runs.RESULTS_FILE).write_text(json.dumps({"step": 5}))
    with pytest.raises(ValueError, match=r"model.width: 32 -> 64"):
        recipe.check_resume(tmp_path, _config(**{"model.width": 64}))


def test_resume_refuses_another_recipe_and_extend_records_the_change(tmp_path):
    first = train.train(_config(steps=5), tmp_path)
    saved = (tmp_path / runs.CONFIG_FILE).read_text()

    # Raising the steps of a finished run: refused, naming the field and the way out.
    with pytest.raises(ValueError) as info:
        train.train(_config(steps=10), tmp_path)
    message = str(info.value)
    assert "\n" not in message and "train.steps: 5 -> 10" in message
    assert "--config.train.extend=True" in message and "schedule" in message
    # A new learning rate on a partial run: refused too; config.json is left as it was.
    (tmp_path / runs.RESULTS_FILE).unlink()
    with pytest.raises(ValueError, match=r"optim.peak_lr: 0.01 -> 0.02"):
        train.train(_config(steps=5, **{"optim.peak_lr": 0.02}), tmp_path)
    with pytest.raises(ValueError, match=r"train.extend cannot change model.width"):
        train.train(_config(steps=10, **{"model.width": 64, "train.extend": True}), tmp_path)
    assert (tmp_path / runs.CONFIG_FILE).read_text() == saved

    # Operational settings change freely (the partial run resumes at its last step).
    again = train.train(
        _config(steps=5, **{"train.log_every": 1, "train.progress": True}), tmp_path
    )
    assert again["step"] == 5 and again["test_bits_per_byte"] == first["test_bits_per_byte"]
    assert json.loads((tmp_path / runs.CONFIG_FILE).read_text())["train"]["log_every"] == 1

    # Extending: trains on to the new length and says so in config.json and metrics.jsonl.
    extended = train.train(_config(steps=10, **{"train.extend": True}), tmp_path)
    assert extended["step"] == 10
    written = json.loads((tmp_path / runs.CONFIG_FILE).read_text())
    assert written["train"]["steps"] == 10
    (entry,) = written["history"]
    assert entry["step"] == 5 and entry["changes"] == {"train.steps": [5, 10]}
    lines = runs.read_jsonl(tmp_path / runs.METRICS_FILE)
    assert {"step": 5, "config_changes": {"train.steps": [5, 10]}} in lines
    assert [r["step"] for r in lines if "loss" in r] == [5, 10]
    # The recorded config is what the run is now: running it again changes nothing.
    assert train.train(_config(steps=10), tmp_path) == extended
    assert len(json.loads((tmp_path / runs.CONFIG_FILE).read_text())["history"]) == 1
    with pytest.raises(ValueError, match=r"train.extend only raises train.steps \(10 -> 8\)"):
        train.train(_config(steps=8, **{"train.extend": True}), tmp_path)
