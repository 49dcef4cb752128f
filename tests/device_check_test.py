"""bench/device_check.py: the accelerator check, run as CI runs it (--small, CPU)."""

import json
import pathlib
import subprocess
import sys

import pytest

from bench import device_parts, device_report

REPO = pathlib.Path(__file__).resolve().parents[1]

KEYS = {
    "device",
    "jax_version",
    "date",
    "command",
    "roundtrip_exact",
    "deterministic",
    "attention_max_abs_diff",
    "train_tokens_per_second",
    "eval_log_loss_mb_per_s",
    "eval_coded_mb_per_s",
    "compress_mb_per_s",
    "decompress_mb_per_s",
    "coder_symbols_per_second",
    "online_exact",
    "online_compress_kb_per_s",
    "online_decompress_kb_per_s",
    "notes",
}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """One --small run in which `attention` is made to fail and `train_test` to hang."""
    out = tmp_path_factory.mktemp("out")
    cmd = [
        sys.executable,
        str(REPO / "bench" / "device_check.py"),
        f"--out={out}",
        "--small",
        "--fail_part=attention",
        "--fail_part=train_test:hang",
        "--budgets=train=4",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return out, json.loads((out / "device_check.json").read_text())


def test_report_has_every_documented_key_and_a_table(small_run):
    out, report = small_run
    assert KEYS <= set(report)
    assert report["mode"].startswith("small")
    table = (out / "device_check.md").read_text()
    assert "| round trip exact, portable (default) | yes |" in table
    assert "NOT comparable to the goals" in table
    assert (out / "device_check.log").stat().st_size > 0


def test_correctness_checks_pass(small_run):
    _, report = small_run
    assert report["roundtrip_exact"] is True
    assert report["deterministic"] is True
    for path in ("portable", "float"):
        rt = report["roundtrip"][path]
        assert rt["exact"] and rt["deterministic"], rt
        compressed = rt["compress"]
        # The model was trained, so the text chunks are coded, and the random one stored raw.
        assert compressed["raw_chunks"] == 1 < compressed["num_chunks"], compressed
        assert compressed["bits_per_byte"] < 8
    assert report["train_step_finite"] is True  # the model part's bf16 steps
    assert report["online_exact"] is True and report["online"]["raw_bytes"] == 1024


def test_forced_failures_are_noted_and_the_rest_still_runs(small_run):
    _, report = small_run
    assert "forced failure" in report["notes"]["attention"]
    assert report["notes"]["train_test"].startswith("timed out")
    assert report["parts"]["train_test"]["status"] == "timed out"
    assert report["attention_max_abs_diff"] is None
    assert report["train_tokens_per_second"] == {"test": None}
    for key in (
        "eval_log_loss_mb_per_s",
        "eval_coded_mb_per_s",
        "compress_mb_per_s",
        "decompress_mb_per_s",
        "compress_float_mb_per_s",
        "decompress_float_mb_per_s",
        "coder_symbols_per_second",
        "online_compress_kb_per_s",
        "online_decompress_kb_per_s",
    ):
        assert report[key] > 0, key
    assert set(report["notes"]) == {"attention", "train_test"}, report["notes"]


def test_kv_roofline_matches_the_closed_form():
    # 3.2M model, bf16 cache (4 layers x 256 wide: 4,096 bytes a position), 2,048-byte chunks in
    # 8 attention blocks of 256 steps, block b reading 256 (b + 1) positions: 256^2 x 36
    # positions, 9.66 GB a chunk; at 3 TB/s, 2,048 bytes / 3.22 ms = 0.636 MB/s.
    values = {
        "chunk_bytes": 2048,
        "kv_positions_read_per_chunk": 256 * 256 * 36,
        "kv_bytes_per_position": 4096,
        "num_layers": 4,
        "width": 256,
    }
    assert device_report._roofline_mb_per_s(values, 3e12) == pytest.approx(0.6358, rel=1e-3)
    float32 = device_report._roofline_mb_per_s(values, 3e12, itemsize=4)
    assert float32 == pytest.approx(0.6358 / 2, rel=1e-3)
    assert device_report._roofline_mb_per_s(values, None) is None


def test_kv_traffic_counts_the_coders_blocks():
    from models import coding_model, transformer

    cfg = transformer.TransformerConfig(num_layers=4, width=256, num_heads=8, dtype="bfloat16")
    traffic = device_parts._kv_traffic(coding_model.FloatTransformer(cfg), 2048)
    blocks = traffic["attention_blocks"]
    block = 2048 // blocks
    assert traffic["kv_positions_read_per_chunk"] == block * block * blocks * (blocks + 1) // 2
    assert traffic["kv_bytes_per_position"] == 2 * 4 * 256 * 2


def test_combine():
    assert device_report._combine([True, True]) is True
    assert device_report._combine([True, None]) is None
    assert device_report._combine([None, False]) is False
    assert device_report._combine([]) is None
