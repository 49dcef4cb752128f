"""sweep.py: a sweep expands to exactly its declared runs, skips finished ones, gathers results."""

import csv
import json
import pathlib
import sys

import pytest

import sweep

REPO = pathlib.Path(__file__).resolve().parents[1]


def _write_sweep(tmp_path, body: str) -> pathlib.Path:
    path = tmp_path / "my_sweep.py"
    path.write_text(f"def get_sweep():\n    return {body}\n")
    return path


_SWEEP = """{
    "name": "s",
    "config": "configs/default.py",
    "fixed": {"dataset": "pydocs", "train.steps": 2, "model.context_length": 16},
    "axes": {"size": ["test", "20K"], "tokenizer": ["bytes", "bpe:300"],
             "data.train_bytes": [0, 4096]},
}"""


def test_expand_is_the_exact_product_of_the_axes(tmp_path):
    runs = sweep.expand(sweep.load_sweep(_write_sweep(tmp_path, _SWEEP)))
    assert len(runs) == 2 * 2 * 2
    assert len({r.name for r in runs}) == 8
    combos = {(r.values["size"], r.values["tokenizer"], r.values["data.train_bytes"]) for r in runs}
    assert combos == {
        (s, t, b) for s in ("test", "20K") for t in ("bytes", "bpe:300") for b in (0, 4096)
    }
    first = runs[0]
    assert first.name == "size=test+tokenizer=bytes+train_bytes=0"
    assert first.config_arg == "configs/default.py:dataset=pydocs,size=test,tokenizer=bytes"
    assert first.overrides == {"train.steps": 2, "model.context_length": 16, "data.train_bytes": 0}
    assert first.steps == 2
    cmd = first.command(pathlib.Path("runs/s") / first.name)
    assert cmd[:3] == ["python", "train.py", f"--config={first.config_arg}"]
    assert "--config.data.train_bytes=0" in cmd and cmd[-1] == f"--workdir=runs/s/{first.name}"


def test_print_mode_prints_one_command_per_run(tmp_path, capsys):
    assert sweep.main(["--sweep", str(_write_sweep(tmp_path, _SWEEP)), "--mode=print"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 8 and all(line.startswith("python train.py ") for line in lines)
    # the tokenizer value holds a colon: the printed command must survive a shell
    assert any(
        "'--config=configs/default.py:dataset=pydocs,size=test,tokenizer=bpe:300'" in x
        or "tokenizer=bpe:300" in x
        for x in lines
    )


@pytest.mark.parametrize(
    "body, message",
    [
        ('{"name": "s", "config": "c.py", "axes": {"size": []}}', "non-empty list"),
        ('{"name": "s", "config": "c.py", "axes": {"size": ["a", "a"]}}', "repeats"),
        ('{"name": "s", "config": "c.py:size=1", "axes": {}}', "without ':arg'"),
        ('{"name": "s", "config": "c.py", "axes": {}, "colour": 1}', "unknown sweep keys"),
        ('{"name": "s", "config": "c.py", "fixed": {"a": 1}, "axes": {"a": [2]}}', "both"),
        ('{"config": "c.py", "axes": {}}', "lacks 'name'"),
    ],
)
def test_bad_sweeps_are_refused_with_the_reason(tmp_path, body, message):
    with pytest.raises(ValueError, match=message):
        sweep.load_sweep(_write_sweep(tmp_path, body))


def test_local_skips_complete_runs_and_resumes_partial_ones(tmp_path, monkeypatch):
    spec = sweep.load_sweep(_write_sweep(tmp_path, _SWEEP))
    runs = sweep.expand(spec)
    root = tmp_path / "runs"
    done, partial = root / "s" / runs[0].name, root / "s" / runs[1].name
    done.mkdir(parents=True)
    (done / "results.json").write_text(json.dumps({"step": 2, "num_params": 7}))
    (done / "config.json").write_text(
        json.dumps({"tokenizer": "bytes", "model": {"context_length": 16}})
    )
    partial.mkdir(parents=True)
    (partial / "results.json").write_text(json.dumps({"step": 1}))  # fewer steps than declared
    calls = []
    monkeypatch.setattr(sweep.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    assert sweep.run_local(spec, root, "python") == 0
    workdirs = [c[-1] for c in calls]
    assert f"--workdir={done}" not in workdirs
    assert f"--workdir={partial}" in workdirs
    assert len(calls) == 7
    assert sweep.run_status(done, runs[0]) == "complete"
    assert sweep.run_status(partial, runs[1]) == "partial"
    assert sweep.run_status(root / "s" / runs[2].name, runs[2]) == "new"


def test_failed_runs_are_reported_and_give_a_non_zero_exit(tmp_path, monkeypatch, capsys):
    path = _write_sweep(tmp_path, _SWEEP)
    monkeypatch.setattr(sweep.subprocess, "call", lambda cmd: 1)
    assert sweep.main(["--sweep", str(path), "--mode=local", "--root", str(tmp_path)]) == 1
    assert "8 run(s) failed" in capsys.readouterr().out


def test_real_sweep_trains_gathers_and_then_skips(tmp_path, monkeypatch):
    body = """{
        "name": "tiny",
        "config": "configs/default.py",
        "fixed": {"size": "test", "model.context_length": 16, "train.batch_size": 4,
                  "train.steps": 2, "train.eval_max_bytes": 256, "train.progress": False},
        "axes": {"data.train_bytes": [0, 2048]},
    }"""
    path = _write_sweep(tmp_path, body)
    monkeypatch.chdir(REPO)
    root = tmp_path / "runs"
    args = ["--sweep", str(path), "--mode=local", "--root", str(root), "--python", sys.executable]
    assert sweep.main(args) == 0
    with open(root / "tiny" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["complete", "complete"]
    assert [int(r["step"]) for r in rows] == [2, 2]
    assert int(rows[1]["train_bytes"]) == 2048 and int(rows[0]["train_bytes"]) > 2048
    assert all(float(r["test_bits_per_byte"]) > 0 for r in rows)
    calls = []
    monkeypatch.setattr(sweep.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    assert sweep.main(args) == 0
    assert calls == []  # both complete: nothing runs again


@pytest.mark.parametrize("name, count", [("scaling", 10), ("tokenizers", 8), ("context", 1)])
def test_shipped_sweeps_expand_to_valid_configs(name, count):
    from configs import default

    runs = sweep.expand(sweep.load_sweep(REPO / "configs" / "sweeps" / f"{name}.py"))
    assert len(runs) == count
    for run in runs:
        config = default.get_config(run.config_arg.split(":", 1)[1])
        for key, value in run.overrides.items():  # a misspelt field fails on the locked config
            section, field = key.split(".")
            config[section][field] = value
        assert config.train.steps == run.steps == 400
