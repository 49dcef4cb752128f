"""Online compression (`online:SIZE`): exact round trips, the same parameters on both sides after
every group, refusals in one line, and a model that learns as it goes."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest

from coding import container
from compressors import lm_stream, model_names, online, online_mix
from models import lm_coder
from tests import coder_helpers

REPO = pathlib.Path(__file__).resolve().parents[1]
TEXT = (pathlib.Path(__file__).resolve().parents[2] / "shared/data/text/alice29.txt").read_bytes()
# A tiny recipe: 2 layers of width 32, segments of 64 bytes, 2 a group, one step on them and
# 2 replayed segments, mixed with count models of orders 0..3 (hashed tables of 2**10 rows).
RECIPE = "segment_bytes=64,lanes=2,steps=1,replay=2,learning_rate=0.01,order=3,table_bits=10"
ALONE = "segment_bytes=64,lanes=2,steps=1,replay=2,learning_rate=0.01,order=0"  # no counts


def _rewrite_info(path, version=None, drop=(), **changes):
    """A forged stream: header fields changed (dotted paths) or dropped, its container version
    set, and its checksum recomputed."""
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
    for key in drop:
        *parents, field = key.split(".")
        node = info
        for name in parents:
            node = node[name]
        del node[field]
    new_info = json.dumps(info).encode()
    version = fixed[1] if version is None else version
    head = container._FIXED.pack(fixed[0], version, len(new_info), *fixed[3:]) + new_info
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
        ("order", 99, "order"),
        ("table_bits", 40, "table_bits"),
        ("mix_learning_rate", 2.0, "mix_learning_rate"),
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
        model_names.for_stream({"model": "run"})
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


def test_the_counts_hold_every_byte_coded_and_match_on_both_sides(tmp_path, spied):
    data = TEXT[:1000]
    _round_trip(tmp_path, data)
    encoder, decoder = spied
    for side in (encoder, decoder):
        counts = [np.asarray(c) for c in side.learner.params["counts"]]
        assert [int(c.sum()) for c in counts] == [len(data)] * 4  # every order counts every byte
        assert np.array_equal(counts[0][0], np.bincount(np.frombuffer(data, np.uint8), None, 256))
        pairs = np.zeros((256, 256), np.int64)  # order 1: the byte before, 0 at a segment's start
        ids = np.frombuffer(data, np.uint8)
        np.add.at(pairs, (np.where(np.arange(len(ids)) % 64 == 0, 0, np.roll(ids, 1)), ids), 1)
        assert np.array_equal(counts[1], pairs)
    assert online_mix.MixSpec(3, 10).inputs == 5
    sides = encoder.learner.params["counts"], decoder.learner.params["counts"]
    for a, b in zip(*sides, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_the_mixture_codes_text_smaller_than_the_transformer_alone(tmp_path):
    data = TEXT[:4096]
    mixed = _round_trip(tmp_path, data)["payload_bytes"]
    alone = _round_trip(tmp_path, data, ALONE)["payload_bytes"]
    assert mixed < 0.9 * alone, (mixed, alone)


def test_version_5_online_streams_decode_as_the_transformer_alone(tmp_path, spied):
    # A version-5 stream's recipe has no count models' fields: it is order=0's, with the same
    # fingerprint (the recipe without those fields), and decodes as it did.
    src, packed, out = tmp_path / "in", tmp_path / "in.lmc", tmp_path / "out"
    src.write_bytes(TEXT[:300])
    lm_stream.compress_file("online:test", src, packed, recipe=ALONE)
    old = tmp_path / "old.lmc"
    old.write_bytes(packed.read_bytes())
    _rewrite_info(old, version=5, drop=[f"coder.online.{f}" for f in online.MIX_FIELDS])
    with open(old, "rb") as f:
        assert container.ContainerReader(f).header.version == 5
    lm_stream.decompress_file(None, old, out)
    assert out.read_bytes() == TEXT[:300]
    assert spied[-1].learner.recipe.order == 0
    assert spied[-1].learner.checksums == spied[0].learner.checksums
    partial = tmp_path / "partial.lmc"  # some of the new fields but not all: refused
    partial.write_bytes(packed.read_bytes())
    _rewrite_info(partial, drop=["coder.online.table_bits"])
    with pytest.raises(ValueError, match="an online recipe has the fields"):
        lm_stream.decompress_file(None, partial, tmp_path / "out2")


def test_the_mixer_trains_on_the_counts_the_coder_saw():
    # The learner's counts of a group (`group_rows`, sorted running sums) are those the coding
    # step saw, step by step (`live_step`): every lane's earlier bytes under each context.
    import jax.numpy as jnp

    spec = online_mix.MixSpec(3, 8)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 4, (3, 20)).astype(np.int32)
    lengths = np.array([20, 13, 0], np.int32)
    tokens[1, 13:] = 0
    before = rng.integers(0, 4, (2, 30)).astype(np.int32)
    base = online_mix.add_counts(spec, online_mix.init_counts(spec), before, np.array([30, 30]))
    rows, after = online_mix.group_rows(spec, True, base, jnp.asarray(tokens), lengths)
    counts, history = list(base), jnp.zeros((3, 3), jnp.int32)
    for t in range(20):
        prev = jnp.asarray(tokens[:, t - 1] if t else np.zeros(3, np.int32))
        weight = jnp.asarray(((t > 0) & (t - 1 < lengths)).astype(np.int32))
        counts, history, seen = online_mix.live_step(spec, counts, history, prev, weight)
        for o in range(4):
            assert np.array_equal(np.asarray(rows[o]).reshape(3, 20, 256)[:, t], seen[o]), (t, o)
    whole = online_mix.add_counts(spec, base, tokens, lengths)
    assert all(np.array_equal(a, b) for a, b in zip(after, whole, strict=True))
    assert int(after[0].sum()) == 60 + 33


@pytest.mark.parametrize("live", [1, 0])
def test_the_memory_estimate_covers_the_count_tables_the_coder_carries(live):
    # Counting live, the block program carries a copy of the count tables besides the lanes'
    # KV caches: the lanes a decoder's device can hold are judged with it.
    recipe = online.Recipe.parse("test", f"{RECIPE},live={live}")
    model = online.load(recipe, "online:test")
    coder = lm_coder.LMCoder(model.net, model.params, lm_coder.CoderShape(2, 64))
    actual = coder_helpers.xla_bytes(coder)
    assert actual <= coder.memory_bytes() <= 2.5 * actual
