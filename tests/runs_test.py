"""Tests for runs.py: the summary of run directories names each run's real architecture."""

import json

import runs
from configs import addition, default


def _run_dir(tmp_path, name, config):
    workdir = tmp_path / name
    workdir.mkdir()
    (workdir / runs.CONFIG_FILE).write_text(json.dumps(config.to_dict()))
    return workdir


def test_size_is_the_preset_only_when_the_model_is_exactly_it(tmp_path):
    config = default.get_config("size=test")
    plain = _run_dir(tmp_path, "plain", config)
    with config.unlocked():
        config.model.width = 48
    _run_dir(tmp_path, "wider", config)
    with config.unlocked():
        config.model.mlp_ratio = 2
        config.model.context_length = 128
    odd = _run_dir(tmp_path, "odd", config)
    add = addition.get_config("size=25K,digits=4")
    _run_dir(tmp_path, "add", add)
    with add.unlocked():
        add.model.num_heads = 4
    _run_dir(tmp_path, "add_heads", add)
    sizes = {w.name: runs.summary(w)["size"] for w in runs.find_runs([tmp_path])}
    assert sizes == {
        "plain": "test",
        "wider": "2x48 h2 ctx64",
        "odd": "2x48 h2 ctx128 mlp2",
        "add": "25K",
        "add_heads": "2x32 h4 ctx17",
    }
    table = runs.format_summary([runs.summary(w) for w in (plain, odd)])
    header, first, second = table.splitlines()
    assert first.split()[1] == "test" and second.split()[1:6] == "2x48 h2 ctx128 mlp2 0/300".split()
    assert header.index(" size ") + 5 == first.index(" test ") + 5 == second.index(" mlp2 ") + 5
