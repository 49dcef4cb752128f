"""Forged streams (every checksum valid) cost no more than their own bytes allow: they are
refused before the model runs, or after as little model work as their payloads call for."""

import hashlib
import io

import pytest

from coding import container
from compressors import lm_stream, model_names
from models import coding_model
from tests import coder_helpers
from tests.compress_test import _decompress_fails, _rewrite_info, _text, _train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("run"), seed=0)


def _info(run, tmp_path, portable):
    """The description of a genuine stream of this run (its fingerprint and environment)."""
    (tmp_path / "genuine").write_bytes(_text()[:600])
    packed = tmp_path / "genuine.lmc"
    lm_stream.compress_file(
        run, tmp_path / "genuine", packed, lanes=2, chunk_size=256, portable=portable
    )
    with open(packed, "rb") as f:
        return container.StreamInfo.unpack(container.ContainerReader(f).header.info)


def _forge(info, lanes, chunk, original, payload=b""):
    """A stream of `original` in chunks of `chunk` bytes, `lanes` per group, every chunk coded
    as `payload`, with valid checksums (that of each group's original bytes included)."""
    coder = dict(info.coder, lanes=lanes, chunk_tokens=chunk)
    coder["attention_blocks"] = coding_model.default_attention_blocks(chunk)
    file = io.BytesIO()
    described = container.StreamInfo(info.model, coder, info.environment).pack()
    writer = container.ContainerWriter(file, described, chunk, len(original), lanes)
    num_chunks = -(-len(original) // chunk)
    for first in range(0, num_chunks, lanes):
        count = min(lanes, num_chunks - first)
        writer.write_group([payload] * count, original[first * chunk : (first + count) * chunk])
    writer.finish(hashlib.sha256(original).digest())
    return file.getvalue()


def _count_model_calls(monkeypatch):
    return [coder_helpers.count_calls(monkeypatch, n) for n in ("_start_jit", "_block_jit")]


@pytest.mark.parametrize("portable", [True, False])
def test_lanes_of_empty_payloads_are_refused_without_model_work(run, tmp_path, monkeypatch,
                                                                portable):  # fmt: skip
    # 65,536 one-byte chunks in one group, each coded as nothing (the value 0: token 0 under
    # any table), in about 340 bytes: its group's checksum fails with no model step run.
    info = _info(run, tmp_path, portable)
    forged = tmp_path / "forged.lmc"
    forged.write_bytes(_forge(info, 1 << 16, 1, b"\x01" * (1 << 16)))
    assert len(forged.read_bytes()) < 500  # mostly the description
    calls = _count_model_calls(monkeypatch)
    _decompress_fails(run, forged, r"group 0 \(chunks 0-65535\) decoded to other bytes")
    assert calls == [[], []]
    # What it decodes to, zeros, it decodes to exactly, still without the model.
    forged.write_bytes(_forge(info, 1 << 16, 1, bytes(1 << 16)))
    lm_stream.decompress_file(run, forged, tmp_path / "zeros")
    assert (tmp_path / "zeros").read_bytes() == bytes(1 << 16) and calls == [[], []]


def test_memory_estimate_of_forged_lanes_covers_their_allocation(run, tmp_path):
    # The decoder's guard compares this estimate with the device's memory: for the forged
    # fields it must cover what XLA allocates for them.
    info = _info(run, tmp_path, True)
    with open(tmp_path / "genuine.lmc", "rb") as f:
        header = container.ContainerReader(f).header
    m = model_names.load(run).exact()
    for lanes, chunk in ((1 << 16, 1), (256, 256)):
        coder_info = container.StreamInfo(
            info.model,
            dict(info.coder, lanes=lanes, chunk_tokens=chunk,
                 attention_blocks=coding_model.default_attention_blocks(chunk)),
            info.environment,
        )  # fmt: skip
        forged = container.Header(header.info, chunk, lanes * chunk, lanes)
        coder = lm_stream.coder_for(coder_info, forged, m)
        assert coder_helpers.xla_bytes(coder) <= coder.memory_bytes()


def test_unaffordable_lanes_are_refused_before_the_model_runs(run, tmp_path, monkeypatch):
    info = _info(run, tmp_path, True)
    forged = tmp_path / "forged.lmc"
    forged.write_bytes(_forge(info, 1 << 16, 1, b"\x01" * (1 << 16), payload=b"\x80"))
    monkeypatch.setattr(lm_stream, "_device_memory_bytes", lambda: 256 << 20)
    calls = _count_model_calls(monkeypatch)
    _decompress_fails(run, forged, r"65536 lanes need about 0\.\d GiB to decode, more than half")
    assert calls == [[], []]


@pytest.mark.parametrize("blocks", [2, 16])
def test_attention_blocks_other_than_compress_writes_are_refused(run, tmp_path, monkeypatch,
                                                                 blocks):  # fmt: skip
    # More blocks decode the same tokens with one compiled program each: refused up front.
    (tmp_path / "in").write_bytes(_text()[:1000])
    packed = tmp_path / "in.lmc"
    lm_stream.compress_file(run, tmp_path / "in", packed, lanes=2, chunk_size=256)
    _rewrite_info(packed, **{"coder.attention_blocks": blocks})
    calls = _count_model_calls(monkeypatch)
    _decompress_fails(run, packed, rf"attention_blocks={blocks}, where compress writes 1 for")
    assert calls == [[], []]
