"""The analyses' command lines: absl flags only when run, --help, one-line errors; the gallery doc.

Each command runs as `python -m analysis.NAME` in a subprocess, as a user runs it.
"""

import codecs
import importlib
import os
import pathlib
import subprocess
import sys

import pytest
from absl import flags

from compressors import generative

ROOT = pathlib.Path(__file__).parents[1]
FLAGS_OF = {
    "scaling": ["--csv", "--out_dir", "--dataset_sizes", "--prefix", "--[no]verbose"],
    "context": ["--runs", "--datasets", "--lengths", "--bytes", "--workdir", "--out_dir"],
    "tokenizers": ["--csv", "--out_dir", "--dataset_sizes", "--prefix", "--[no]verbose"],
    "correlation": ["--runs", "--huang", "--out", "--min_step", "--min_accuracy", "--json"],
    "curves": ["--out", "--title", "--[no]verbose"],
}


def _run(module: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"analysis.{module}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LMC_VERBOSE": "", **(env or {})},
    )


def test_importing_the_analyses_defines_no_flags():
    for name in FLAGS_OF:
        importlib.import_module(f"analysis.{name}")
    owners = flags.FLAGS.flags_by_module_dict()
    assert not [m for m in owners if "analysis" in m]
    assert "verbose" not in flags.FLAGS and "csv" not in flags.FLAGS


@pytest.mark.parametrize("module", sorted(FLAGS_OF))
def test_help_lists_the_modules_own_flags(module):
    result = _run(module, "--help")
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split("\nflags:\n", 1)[1]
    for flag in FLAGS_OF[module]:
        assert f"  {flag}:" in listed, flag
    assert "--logtostderr" not in listed  # absl's own flags stay under --helpfull
    summary = importlib.import_module(f"analysis.{module}").__doc__.splitlines()[0]
    assert result.stdout.splitlines()[0] == summary  # the module's docstring comes first


def _one_line(result: subprocess.CompletedProcess, status: int, prefix: str) -> str:
    assert result.returncode == status, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(prefix), lines[0]
    return lines[0]


def test_missing_or_unfinished_csv_ends_in_one_line(tmp_path):
    line = _one_line(
        _run("scaling", f"--csv={tmp_path}/nope.csv", f"--out_dir={tmp_path}"),
        1,
        "analysis.scaling:",
    )
    assert "nope.csv not found" in line and "sweep.py" in line
    partial = tmp_path / "partial.csv"
    partial.write_text(
        "run,status,tokenizer_name,num_params,tokens_seen,test_bits_per_byte\na,partial,,,,\n"
    )
    line = _one_line(
        _run("tokenizers", f"--csv={partial}", f"--out_dir={tmp_path}"), 1, "analysis.tokenizers:"
    )
    assert "no complete runs" in line
    line = _one_line(_run("scaling", f"--out_dir={tmp_path}"), 2, "analysis.scaling:")
    assert "--csv is required" in line


def test_run_directory_errors_end_in_one_line(tmp_path):
    missing = tmp_path / "missing"
    line = _one_line(_run("correlation", f"--runs={missing}"), 1, "analysis.correlation:")
    assert "not a train_addition.py run" in line
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    line = _one_line(
        _run("curves", str(tmp_path), f"--out={tmp_path}/c.png"), 1, "analysis.curves:"
    )
    assert "no eval lines" in line
    # the old argparse form, runs separated by spaces, is refused with the new form named
    line = _one_line(_run("correlation", "--runs", "a", "b"), 2, "analysis.correlation:")
    assert "--runs=a,b" in line


def test_verbose_shows_the_traceback(tmp_path):
    args = (f"--csv={tmp_path}/nope.csv", f"--out_dir={tmp_path}")
    for result in (
        _run("scaling", *args, "--verbose"),
        _run("scaling", *args, env={"LMC_VERBOSE": "1"}),
    ):
        assert result.returncode == 1
        assert "Traceback" in result.stderr and "FileNotFoundError" in result.stderr


def test_correlation_command_writes_the_huang_fit(tmp_path):
    out = tmp_path / "h.png"
    csv = ROOT / "data" / "huang2024_compression_intelligence.csv"
    result = _run("correlation", f"--huang={csv}", f"--out={out}", f"--json={tmp_path}/h.json")
    assert result.returncode == 0, result.stderr
    assert "Pearson r = -0.9307" in result.stdout and out.stat().st_size > 10_000


def test_printable_escapes_every_control_byte_and_round_trips():
    data = bytes(range(256)) + b"a\\b\nc\td\re"
    text = generative.printable(data)
    assert text.isascii() and all(c == "\n" or 32 <= ord(c) < 127 for c in text)
    assert codecs.escape_decode(text.encode())[0] == data
    assert generative.printable(b"x\x00y\\") == "x\\x00y\\\\"


def test_gallery_doc_is_text():
    text = (ROOT / "docs" / "gallery.md").read_bytes().decode("utf-8")
    control = [hex(ord(c)) for c in text if (ord(c) < 32 and c != "\n") or 127 <= ord(c) < 160]
    assert not control
    assert "\ufffd" not in text  # no bytes lost to replacement characters either
