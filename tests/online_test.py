"""Online compression (`online:SIZE`): exact round trips, the same parameters on both sides after
every group, refusals in one line, and a model that learns as it goes."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest

from coding import container
from compressors import lm_stream, model_names, online

REPO = pathlib.Path(__file__).resolve().parents[1]
TEXT = (pathlib.Path(__file__).resolve().parents[2] / "shared/data/text/alice29.txt").read_bytes()
# A tiny recipe: 2 layers of width 32, segments of 64 bytes, 2 a group, one step on them and
# 2 replayed segments.
RECIPE = "segment_bytes=64,lanes=2,steps=1,replay=2,learning_rate=0.01"


def _rewrite_info(path, **changes):
    """A forged stream: header fields changed (dotted paths) and its checksum recomputed."""
    import json
    import struct
    import zlib

    data = path.read_bytes()
    fixed = container._FIXED.unpack_from(data)
    info = json.loads(data[container._FIXED.size : container._FIXED.size + fixed[2]])
    for key, value in changes.items():
        *parents, field = key.split(".")
        node = info
        for name in parents:
            node = node[name]
        node[field] = value
    new_info = json.dumps(info).encode()
    head = container._FIXED.pack(*fixed[:2], len(new_info), *fixed[3:]) + new_info
    rest = data[container._FIXED.size + fixed[2] + 4 :]
    path.write_bytes(head + struct.pack("<I", zlib.crc32(head)) + rest)


@pytest.fixture
def spied(monkeypatch):
    """Every online model built, keeping its parameters' checksum after each group."""
    made, real = [], online.load

    def load(recipe, name, keep_checksums=False):
        made.append(real(recipe, name, keep_checksums=True))
        return made[-1]

    monkeypatch.setattr(online, "load", load)
    return made


def _round_trip(tmp_path, data: bytes, recipe: str = RECIPE) -> dict:
    src, packed, out = tmp_path / "in", tmp_path / "in.lmc", tmp_path / "out"
    src.write_bytes(data)
    summary = lm_stream.compress_file("online:test", src, packed, recipe=recipe, force=True)
    lm_stream.decompress_file(None, packed, out, force=True)  # the stream names its model
    assert out.read_bytes() == data
    return summary


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"x",
        TEXT[:64],  # one segment
        TEXT[:65],  # one segment + 1
        TEXT[:1000],
        bytes(range(256)) * 3,
        np.random.default_rng(0).integers(0, 256, 777, dtype=np.uint8).tobytes(),
    ],
    ids=["empty", "one", "segment", "segment+1", "text", "binary", "random"],
)
def test_round_trips_and_both_sides_hold_the_same_parameters(tmp_path, spied, data):
    s = _round_trip(tmp_path, data)
    encoder, decoder = spied
    groups = -(-len(data) // 64 // 2) if data else 0
    assert len(encoder.learner.checksums) == groups == -(-s["num_chunks"] // 2)
    assert decoder.learner.checksums == encoder.learner.checksums  # after every group


def test_the_stream_holds_the_recipe_and_another_recipe_or_seed_is_refused(tmp_path):
    src, packed = tmp_path / "in", tmp_path / "in.lmc"
    src.write_bytes(TEXT[:300])
    lm_stream.compress_file("online:test", src, packed, recipe=RECIPE)
    with open(packed, "rb") as f:
        info = container.StreamInfo.unpack(container.ContainerReader(f).header.info)
    assert info.coder["model"] == "online"
    assert online.Recipe.from_dict(info.coder["online"]) == online.Recipe.parse("test", RECIPE)
    with pytest.raises(container.FormatError, match="different model"):
        lm_stream.decompress_file("online:test", packed, tmp_path / "out")  # default recipe
    seeded = tmp_path / "seeded.lmc"
    seeded.write_bytes(packed.read_bytes())
    _rewrite_info(seeded, **{"coder.online.seed": 7})
    with pytest.raises(container.FormatError, match="different model"):
        lm_stream.decompress_file(None, seeded, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_forged_recipes_and_corrupted_segments_fail_in_one_line(tmp_path):
    src, packed = tmp_path / "in", tmp_path / "in.lmc"
    src.write_bytes(TEXT[:300])
    lm_stream.compress_file("online:test", src, packed, recipe=RECIPE)
    for field, value, match in [
        ("steps", 10**6, "steps"),
        ("segment_bytes", 1 << 20, "segment_bytes"),
        ("learning_rate", "x", "learning_rate"),
        ("size", "1T", "size"),
    ]:
        forged = tmp_path / f"{field}.lmc"
        forged.write_bytes(packed.read_bytes())
        _rewrite_info(forged, **{f"coder.online.{field}": value})
        with pytest.raises(ValueError, match=match):
            lm_stream.decompress_file(None, forged, tmp_path / "out")
    damaged = bytearray(packed.read_bytes())
    damaged[-60] ^= 0x10  # a payload byte of the last group
    (tmp_path / "damaged.lmc").write_bytes(bytes(damaged))
    result = subprocess.run(
        [sys.executable, "compress.py", "decompress", "--noprogress", tmp_path / "damaged.lmc",
         tmp_path / "out"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "out").exists()


def test_a_named_model_must_be_given_for_other_streams(tmp_path):
    with pytest.raises(ValueError, match="name it with --model"):
        model_names.from_stream({"model": "run"})
    with pytest.raises(ValueError, match="online needs a size"):
        model_names.parse("online:")
    with pytest.raises(ValueError, match="--recipe takes key=value"):
        online.Recipe.parse("test", "stepz=2")


def test_the_model_learns_as_it_goes(tmp_path):
    # Prequential: the first half's bytes are coded the same alone or followed by the second
    # half, so the second half's cost is the difference; it is lower on real text.
    data = TEXT[:8192]
    half = _round_trip(tmp_path, data[:4096])["payload_bytes"]
    whole = _round_trip(tmp_path, data)["payload_bytes"]
    assert whole - half < half


def test_the_evaluator_rates_it_as_one_stream_beside_gzip(tmp_path):
    from compressors import evaluation
    from configs import eval as eval_config

    config = eval_config.get_config()
    config.update(compressors="gzip,online:test", num_chunks=6, chunk_size=256, progress=False)
    config.update(workers=0, chunking="both")
    config.online.recipe = RECIPE
    config.lm.verify = True
    records = evaluation.evaluate(config, tmp_path / "results")
    (online_record,) = [r for r in records if r["compressor"] == "online:test"]
    assert online_record["chunking"] == "unchunked" and online_record["verified"]
    assert online_record["num_params"] == 0
    assert online_record["adjusted_rate"] == online_record["raw_rate"]
    # The same bytes as compress.py on the dataset's chunks joined.
    source_bytes = b"".join(evaluation.sources.get_source(config.dataset).chunks(6, 256))
    (tmp_path / "joined").write_bytes(source_bytes)
    s = lm_stream.compress_file(
        "online:test", tmp_path / "joined", tmp_path / "j.lmc", recipe=RECIPE
    )
    assert online_record["compressed_bytes"] == s["compressed_bytes"]
    assert online_record["raw_bytes"] == len(source_bytes) == 6 * 256
    again = evaluation.evaluate(config, tmp_path / "results")  # reused, not rated again
    assert [r for r in again if r["compressor"] == "online:test"] == [online_record]
    with pytest.raises(ValueError, match="one stream, which is not shared out"):
        evaluation.evaluate_shard(config, tmp_path / "sharded", 0, 2)
