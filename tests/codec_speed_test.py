"""The codec benchmark codes the same bytes every way and checks each round trip."""

import os
import sys

import pytest

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
)

import codec_speed  # noqa: E402

ROW_KEYS = {
    "codec",
    "via",
    "raw_bytes",
    "compressed_bytes",
    "ratio",
    "bits_per_byte",
    "exact",
    "compress_seconds",
    "compress_startup_seconds",
    "compress_net_seconds",
    "compress_mb_per_s",
    "decompress_seconds",
    "decompress_startup_seconds",
    "decompress_net_seconds",
    "decompress_mb_per_s",
}


def test_every_codec_round_trips_the_same_bytes(tiny_run):
    data = codec_speed.heldout_bytes(3000)
    # compress.py's processes share the test session's compilation cache (the benchmark's own
    # runs have none): the later ones load what the first compiled instead of compiling again.
    cache = os.environ.get("LMC_COMPILE_CACHE", "")
    result = codec_speed.benchmark(tiny_run, data, lanes=4, compile_cache=cache)
    assert result["raw_bytes"] == 3000 and result["all_exact"]
    codecs = [r["codec"] for r in result["rows"]]
    assert codecs == ["portable", "float", *codec_speed.CLASSICAL]
    for row in result["rows"]:
        if "missing" in row:  # a tool and its module both absent: said, not failed
            continue
        assert ROW_KEYS <= row.keys(), row["codec"]
        assert row["exact"] and row["raw_bytes"] == 3000, row["codec"]
        assert row["bits_per_byte"] == pytest.approx(8 * row["compressed_bytes"] / 3000)
    assert [r["via"] for r in result["rows"][:2]] == [
        "compress.py --lanes=4",
        "compress.py --lanes=4 --noportable",
    ]
    ll = result["log_loss"]
    assert {"ideal_bytes", "bits_per_byte", "seconds", "mb_per_s"} <= ll.keys()
    assert 0 < ll["bits_per_byte"] < 16  # near 8 for a barely trained model
    assert set(result["ratios"]) == {
        "portable_compress_over_log_loss",
        "portable_decompress_over_float_decompress",
    }
    table = codec_speed.table(result)
    assert all(c in table for c in codecs) and "log-loss (reference)" in table


def test_heldout_bytes_too_many():
    with pytest.raises(ValueError, match="held-out split has"):
        codec_speed.heldout_bytes(10**9)


def test_an_input_of_one_group_is_refused(tiny_run, tmp_path):
    # The rate is that of the groups after the first: one group has none.
    with pytest.raises(ValueError, match="fit in one group"):
        codec_speed.model_row(tiny_run, "portable", b"x" * 128, str(tmp_path), lanes=4)
