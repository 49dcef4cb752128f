"""Every entry point, as a new user meets it: --help, one-line errors, runs from anywhere."""

import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
ENTRY_POINTS = {
    "train.py": ["--workdir", "--config"],
    "train_addition.py": ["--workdir", "--config"],
    "compress.py": ["--model", "--lanes", "--force"],
    "eval_compress.py": ["--workdir", "--config", "--all"],
    "sample.py": ["--compressor", "--prompt_file", "--output"],
    "sweep.py": ["--sweep", "--mode", "--slurm"],
    "runs.py": ["--verbose"],
}


def _run(*args, cwd):
    return subprocess.run(
        [sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("script", sorted(ENTRY_POINTS))
def test_help_lists_the_entry_points_own_flags(script, tmp_path):
    result = _run(REPO / script, "--help", cwd=tmp_path)  # from another directory
    assert result.returncode == 0, result.stderr
    for flag in ENTRY_POINTS[script]:
        name = flag.removeprefix("--")
        assert f"--{name}" in result.stdout or f"--[no]{name}" in result.stdout, (script, flag)


def _one_line(result, status: int, *fragments: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == status, result.stderr[-2000:]
    assert len(lines) == 1, lines  # no traceback
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def test_train_errors_are_one_line(tmp_path):
    workdir = tmp_path / "run"
    base = [REPO / "train.py", f"--workdir={workdir}"]
    _one_line(
        _run(
            *base, "--config=configs/default.py:size=test", "--config.train.stepz=10", cwd=tmp_path
        ),
        2,
        'no such config field: stepz. Did you mean "steps"',
    )
    _one_line(
        _run(*base, "--config=configs/default.py:size=tiny", cwd=tmp_path),
        2,
        "Unknown size 'tiny'",
    )
    _one_line(
        _run(
            *base,
            "--config=configs/default.py:size=test",
            "--config.data.path=/no/file",
            cwd=tmp_path,
        ),
        1,
        "No such file: /no/file",
    )
    _one_line(_run(REPO / "train.py", cwd=tmp_path), 2, "--workdir is required")
    assert not workdir.exists()  # a failed start leaves nothing behind


@pytest.mark.parametrize(
    "override, status, fragment",
    [
        ("--config.optim.peak_lr=inf", 1, "optim.peak_lr=inf: must be a number in (0, inf)"),
        ("--config.train.batch_size=1000000000", 1, "train.batch_size=1000000000: training"),
        ("--config.model.num_layers=100000000", 1, "model.num_layers=100000000: training"),
        ("--config.optim.peak_lr=1e30", 1, "Loss is"),  # NaN or inf after a step or two
    ],
)
def test_configs_that_cannot_train_end_in_one_line_and_leave_no_directory(
    tmp_path, override, status, fragment
):
    workdir = tmp_path / "run"
    args = [REPO / "train.py", "--config=configs/default.py:size=test", f"--workdir={workdir}"]
    args += ["--config.train.log_every=1", "--config.train.progress=False", override]
    _one_line(_run(*args, cwd=tmp_path), status, fragment)
    assert not workdir.exists()


def test_compress_errors_are_one_line(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.write_bytes(b"hello")
    base = [REPO / "compress.py", "compress", "--noprogress"]
    _one_line(
        _run(*base, f"--model={tmp_path}/nope", src, out, cwd=tmp_path), 1, "not a training run"
    )
    _one_line(_run(*base, "--model=x", tmp_path / "missing", out, cwd=tmp_path), 1, "no input file")
    _one_line(
        _run(*base, "--model=x", src, tmp_path / "no/dir/out", cwd=tmp_path), 1, "no directory"
    )
    # The flag it replaced names its replacement.
    _one_line(_run(*base, "--workdir=x", src, out, cwd=tmp_path), 2, "--workdir is now --model")
    assert not out.exists()


def test_sample_errors_are_one_line(tmp_path):
    base = [REPO / "sample.py", f"--output={tmp_path}/out"]
    _one_line(
        _run(*base, "--prompt_file=/no/such", cwd=tmp_path), 1, "Prompt file '/no/such' not found"
    )
    flac = tmp_path / "speech.flac"
    flac.write_bytes(b"fLaC\x00\x00\x00\x22" + bytes(40))
    _one_line(
        _run(*base, f"--prompt_file={flac}", "--mode=audio", cwd=tmp_path),
        1,
        "is not a PCM WAV file",
        "ffmpeg",
    )
    assert not (tmp_path / "out").exists()


def test_runs_summary_and_its_errors(tmp_path):
    _one_line(_run(REPO / "runs.py", tmp_path / "nope", cwd=tmp_path), 1, "no run directory")
    result = _run(REPO / "runs.py", tmp_path, cwd=tmp_path)
    assert result.returncode == 0 and "No runs found" in result.stdout


def test_a_ctrl_c_that_python_only_reports_still_stops_the_command(tmp_path):
    # A KeyboardInterrupt raised in a garbage-collection callback (where JAX's runs) is only
    # reported by Python, which then goes on: the command must stop there, in one line.
    script = (
        "import gc, cli\n"
        "def main(argv):\n"
        "    def callback(phase, info):\n"
        "        raise KeyboardInterrupt\n"
        "    gc.callbacks.append(callback)\n"
        "    gc.collect()\n"
        "    print('ran to the end')\n"
        "cli.run(main)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert "ran to the end" not in result.stdout
    _one_line(result, 130, "interrupted")
