"""Exact lossless round trips through compress.py with a tiny trained model (CPU)."""

import io
import json
import math
import os
import pathlib
import subprocess
import sys
import time
import wave

import numpy as np
import pytest

import train
from coding import container
from compressors import lm_stream
from configs import default
from data import corpus
from models import coding_model, numerics

REPO = pathlib.Path(__file__).resolve().parents[1]
# The test model's context, and the chunk of the full-context tests. Short, so that training and
# compiling stay cheap, but above the 256-byte chunks of the other tests and long enough for two
# attention blocks (coding_model.default_attention_blocks): the code path of a 2048-byte context.
CHUNK = 512


def _train(workdir, seed, tokenizer="bytes", context=CHUNK):
    config = default.get_config(f"size=test,tokenizer={tokenizer}")
    config.seed = seed
    config.model.context_length = context
    config.train.batch_size = 2
    config.train.steps = 10
    config.train.eval_every = 1000
    config.train.eval_max_bytes = 2048  # a whole window of held-out tokens, BPE ones too
    config.train.progress = False
    train.train(config, workdir)
    return str(workdir)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("run"), seed=0)


@pytest.fixture(scope="module")
def other_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("other"), seed=1)


@pytest.mark.parametrize(
    "data",
    [
        corpus.pydocs_bytes()[:3000],
        bytes(range(256)) + b"\xff\xfe not utf-8 \x80",
        b"",
    ],
)
def test_bpe_run_round_trip(tmp_path_factory, tmp_path, data):
    run = tmp_path_factory.getbasetemp() / "bpe_run"
    if not run.exists():
        _train(run, seed=0, tokenizer="bpe:300", context=256)
    s = _round_trip(str(run), tmp_path, data, lanes=4, chunk_size=256)
    if data:
        assert s["payload_bytes"] <= 1.01 * s["ideal_bits"] / 8 + 8 * s["num_chunks"]


def _round_trip(run, tmp_path, data: bytes, lanes=3, chunk_size=256):
    src, packed, out = tmp_path / "in", tmp_path / "in.lmc", tmp_path / "out"
    src.write_bytes(data)
    summary = lm_stream.compress_file(run, src, packed, lanes=lanes, chunk_size=chunk_size)
    lm_stream.decompress_file(run, packed, out)
    assert out.read_bytes() == data
    return summary


def _text():
    return corpus.pydocs_bytes()[:6000]


def _image_like():
    # A smooth grayscale gradient with noise: 32x64 patches, row-major, like the image chunks.
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:96, 0:64]
    img = (x * 2 + y + rng.normal(0, 3, (96, 64))).clip(0, 255).astype(np.uint8)
    return img.tobytes()


def _audio_like():
    t = np.arange(5000) / 16000
    samples = (128 + 100 * np.sin(2 * np.pi * 440 * t)).astype(np.uint8)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(1), w.setframerate(16000), w.writeframes(samples)
    return buf.getvalue()


@pytest.mark.parametrize(
    "name,data",
    [
        ("text", _text()),
        ("image", _image_like()),
        ("audio", _audio_like()),
        ("random", np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes()),
        ("all_byte_values", bytes(range(256)) * 9),
    ],
)
def test_round_trip_modalities_within_ideal(run, tmp_path, name, data):
    s = _round_trip(run, tmp_path, data)
    ideal_bytes = s["ideal_bits"] / 8
    # Coded payload within 1% + 8 bytes per chunk of the model's ideal code length.
    assert s["payload_bytes"] <= 1.01 * ideal_bytes + 8 * s["num_chunks"], (name, s)
    # (It can also come in below: the +1 floor of the quantised tables gives symbols the model
    # thinks nearly impossible more than their float probability.)


@pytest.mark.parametrize("length", [0, 1, CHUNK, CHUNK + 1])
def test_round_trip_lengths_full_context(run, tmp_path, length):
    data = corpus.pydocs_bytes()[:length]
    s = _round_trip(run, tmp_path, data, lanes=2, chunk_size=CHUNK)
    assert s["num_chunks"] == math.ceil(length / CHUNK)
    assert coding_model.default_attention_blocks(CHUNK) > 1  # the blocked path of long contexts


@pytest.mark.parametrize("length", [255, 256, 257, 5 * 256 + 3])
def test_round_trip_lengths_several_groups(run, tmp_path, length):
    data = corpus.pydocs_bytes()[:length]
    s = _round_trip(run, tmp_path, data, lanes=2)
    assert s["num_chunks"] == math.ceil(length / 256)


@pytest.mark.parametrize("lanes", [1, 2, 3])  # 3: the other tests' programs, no compiling
def test_lanes_are_part_of_the_stream(run, tmp_path, lanes):
    # Any grouping decodes: the decoder takes the lane layout from the stream. 47 chunks: the
    # last group is partial at 2 and at 3 lanes (1 and 2 chunks).
    s = _round_trip(run, tmp_path, _text() + _image_like()[:-256], lanes=lanes)
    assert s["num_chunks"] == 47


@pytest.fixture
def packed(run, tmp_path):
    src = tmp_path / "in"
    src.write_bytes(_text())
    lm_stream.compress_file(run, src, tmp_path / "in.lmc", lanes=2, chunk_size=256)
    return tmp_path / "in.lmc"


def _decompress_fails(run, path, match):
    out = path.parent / "restored"
    with pytest.raises(ValueError, match=match):
        lm_stream.decompress_file(run, path, out)
    assert not out.exists()
    assert not list(path.parent.glob(".restored*"))  # no partial file either


def test_truncated_stream(run, packed):
    data = packed.read_bytes()
    for cut in (0, 10, 100, len(data) // 2, len(data) - 1):
        packed.write_bytes(data[:cut])
        _decompress_fails(run, packed, "truncated|magic")


def test_flipped_bits(run, packed):
    data = packed.read_bytes()
    rng = np.random.default_rng(0)
    for _ in range(8):
        corrupted = bytearray(data)
        position = int(rng.integers(len(data)))
        corrupted[position] ^= 1 << int(rng.integers(8))
        packed.write_bytes(bytes(corrupted))
        _decompress_fails(run, packed, "checksum|magic|version|corrupt|truncated|garbage|model")


def test_trailing_garbage(run, packed):
    packed.write_bytes(packed.read_bytes() + b"\0")
    _decompress_fails(run, packed, "trailing garbage")


def test_wrong_model(other_run, packed):
    _decompress_fails(other_run, packed, "different model")


def test_chunk_larger_than_context_fails(run, tmp_path):
    (tmp_path / "in").write_bytes(b"abc")
    with pytest.raises(ValueError, match="context"):
        lm_stream.compress_file(run, tmp_path / "in", tmp_path / "out", chunk_size=CHUNK + 1)
    assert not (tmp_path / "out").exists()


def test_cli_error_is_one_line_and_leaves_nothing(run, packed):
    packed.write_bytes(packed.read_bytes()[:-3])
    out = packed.parent / "restored"
    result = _cli("decompress", f"--model={run}", packed, out)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "compress.py: truncated trailer (the original's sha256)"
    ]
    assert not out.exists()


def _cli(*args):
    return subprocess.run(
        [sys.executable, "compress.py", *map(str, args), "--noprogress"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_round_trip(run, tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(_image_like())
    packed, out, stats = tmp_path / "x.lmc", tmp_path / "x", tmp_path / "stats.json"
    # --json naming the input, or standard output, is refused before any work.
    result = _cli("compress", f"--model={run}", f"--json={src}", src, packed)
    assert result.returncode == 2 and "is INPUT" in result.stderr  # a usage error
    result = _cli("compress", f"--model={run}", "--json=-", src, packed)
    assert result.returncode == 2 and "--json=-: give a file" in result.stderr
    assert not packed.exists() and src.read_bytes() == _image_like()
    args = ["--chunk_size=256", "--lanes=2", f"--json={stats}"]  # several groups
    result = _cli("compress", f"--model={run}", *args, src, packed)
    assert result.returncode == 0, result.stderr
    assert "bits/byte" in result.stdout and "after the first group" in result.stdout
    made = json.loads(stats.read_text())
    assert made["raw_bytes"] == len(_image_like()) and made["mode"] == "compress"
    assert made["compressed_bytes"] == packed.stat().st_size
    assert 0 < made["first_group_seconds"] < made["seconds"] and made["steady_mb_per_s"] > 0
    result = _cli("decompress", f"--model={run}", f"--json={stats}", packed, out)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == src.read_bytes()
    back = json.loads(stats.read_text())
    assert back["mode"] == "decompress" and back["raw_bytes"] == made["raw_bytes"]
    assert 0 < back["first_group_seconds"] < back["seconds"] and back["steady_mb_per_s"] > 0


def test_header_records_chunk_and_fingerprint(run, packed):
    with open(packed, "rb") as f:
        header = container.read_header(f)
    assert header.chunk_size_bytes == 256
    assert header.original_length_bytes == len(_text())


def test_incompressible_files_never_grow_much(run, tmp_path):
    data = np.random.default_rng(7).integers(0, 256, 3 * 256 + 17, dtype=np.uint8).tobytes()
    s = _round_trip(run, tmp_path, data, lanes=2)
    assert s["raw_chunks"] == s["num_chunks"] == 4  # the test model cannot shorten random bytes
    assert s["compressed_bytes"] <= len(data) + 1024 + 16 * s["num_chunks"]


def test_an_existing_output_is_kept_unless_forced(run, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.write_bytes(_text()[:500])
    out.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="--force"):
        lm_stream.compress_file(run, src, out)
    assert out.read_bytes() == b"precious"
    lm_stream.compress_file(run, src, out, force=True)
    assert out.read_bytes()[:8] == container.MAGIC


def test_cli_pipes_round_trip(run, tmp_path):
    data = _text()[:700]
    # test_cli_round_trip's settings: its programs come from the session's compilation cache.
    args = ["--chunk_size=256", "--lanes=2", "--noprogress"]
    packed = subprocess.run(
        [sys.executable, "compress.py", "compress", f"--model={run}", *args, "-", "-"],
        cwd=REPO, input=data, capture_output=True, timeout=300,
    )  # fmt: skip
    assert packed.returncode == 0, packed.stderr.decode()[-2000:]
    assert b"bits/byte" in packed.stderr  # the summary goes to stderr
    restored = subprocess.run(
        [sys.executable, "compress.py", "decompress", f"--model={run}", "--noprogress", "-", "-"],
        cwd=REPO, input=packed.stdout, capture_output=True, timeout=300,
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr.decode()[-2000:]
    assert restored.stdout == data


def _rewrite_info(path, **changes):
    """A forged stream: the header's description changed and its checksum recomputed."""
    import json
    import struct
    import zlib

    data = path.read_bytes()
    fixed = container._FIXED.unpack_from(data)
    info = json.loads(data[container._FIXED.size : container._FIXED.size + fixed[2]])
    for key, value in changes.items():
        section, field = key.split(".")
        info[section][field] = value
    new_info = json.dumps(info).encode()
    head = container._FIXED.pack(*fixed[:2], len(new_info), *fixed[3:]) + new_info
    rest = data[container._FIXED.size + fixed[2] + 4 :]
    path.write_bytes(head + struct.pack("<I", zlib.crc32(head)) + rest)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"environment.isa": "SSE4_2"}, r"the stream was made for SSE4_2 code and this CPU runs"),
        ({"environment.jax": "0.4.1"}, r"jax 0.4.1 when compressing, .* here"),
        ({"environment.device": "NVIDIA H100"}, r"device NVIDIA H100 when compressing, cpu here"),
        ({"coder.lanes": 2**20}, r"lanes must lie in|1048576 lanes for"),
        ({"coder.lanes": 2**31}, r"lanes must lie in|2147483648 lanes for"),
        ({"coder.attention_blocks": 64}, r"attention_blocks must lie in \[1, 16\]"),
        ({"coder.chunk_tokens": 4096}, r"chunk sizes differ|does not fit the model's context"),
        ({"coder.path": "quantum"}, r"coding path is not supported"),
    ],
)
def test_forged_or_foreign_streams_are_refused_up_front(run, tmp_path, changes, message):
    packed = tmp_path / "float.lmc"
    (tmp_path / "in").write_bytes(_text())
    lm_stream.compress_file(run, tmp_path / "in", packed, lanes=2, chunk_size=256, portable=False)
    _rewrite_info(packed, **changes)
    start = time.monotonic()
    _decompress_fails(run, packed, message)
    assert time.monotonic() - start < 30  # nothing was decoded or compiled for it


_FUZZ_CASES = 24


def test_seeded_container_fuzz_never_accepts_wrong_output(run, packed):
    """Bit flips, truncations and forged fields (checksums recomputed): every damaged stream is
    refused with one clean error, in bounded time, and leaves no output."""
    import resource

    good = packed.read_bytes()
    rng = np.random.default_rng(1234)
    for case in range(_FUZZ_CASES):
        data = bytearray(good)
        kind = case % 3
        if kind == 0:
            for _ in range(int(rng.integers(1, 4))):
                data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
        elif kind == 1:
            data = data[: int(rng.integers(len(data)))]
        else:  # a forged header field, checksum recomputed
            fixed = list(container._FIXED.unpack_from(bytes(data)))
            field = int(rng.integers(3, 7))  # chunk size, length, group size, columns
            fixed[field] = int(rng.integers(0, {3: 2**32, 4: 2**40, 5: 2**32, 6: 2**8}[field]))
            head = container._FIXED.pack(*fixed)
            data[: len(head)] = head
            info_end = container._FIXED.size + fixed[2] if fixed[2] < 2048 else None
            if info_end and info_end + 4 <= len(data):
                import struct
                import zlib

                data[info_end : info_end + 4] = struct.pack(
                    "<I", zlib.crc32(bytes(data[:info_end]))
                )
        packed.write_bytes(bytes(data))
        start = time.monotonic()
        _decompress_fails(run, packed, ".")
        assert time.monotonic() - start < 60, case
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < 8 * 2**20  # KiB: under 8 GiB


def test_portable_stream_refuses_other_integer_tables(run, packed):
    _rewrite_info(packed, **{"environment.integer_tables": 0})
    _decompress_fails(run, packed, r"integer tables are version 0, this release computes version")


_CLI_ENV = dict(os.environ)


def _cli_env(*args, isa=None):
    env = dict(_CLI_ENV)
    if isa:
        env["XLA_FLAGS"] = f"--xla_cpu_max_isa={isa}"
    else:
        env.pop("XLA_FLAGS", None)
    return subprocess.run(
        [sys.executable, "compress.py", *map(str, args), "--noprogress"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_streams_across_instruction_sets(run, tmp_path):
    """A portable stream made under SSE4_2 decodes under the default ISA and back, whatever its
    lanes; a float one is refused up front, naming the instruction set."""
    src = tmp_path / "in"
    src.write_bytes(_text()[:1500])
    old = tmp_path / "sse.lmc"
    made = _cli_env("compress", f"--model={run}", "--chunk_size=256", "--lanes=3", src, old,
                    isa="SSE4_2")  # fmt: skip
    assert made.returncode == 0, made.stderr[-2000:]
    lm_stream.decompress_file(run, old, tmp_path / "out1")
    assert (tmp_path / "out1").read_bytes() == src.read_bytes()
    new = tmp_path / "default.lmc"
    lm_stream.compress_file(run, src, new, lanes=2, chunk_size=256)
    back = _cli_env("decompress", f"--model={run}", new, tmp_path / "out2", isa="SSE4_2")
    assert back.returncode == 0, back.stderr[-2000:]
    assert (tmp_path / "out2").read_bytes() == src.read_bytes()
    float_old = tmp_path / "sse_float.lmc"
    made = _cli_env("compress", f"--model={run}", "--chunk_size=256", "--noportable", src,
                    float_old, isa="SSE4_2")  # fmt: skip
    assert made.returncode == 0, made.stderr[-2000:]
    if numerics.cpu_isa() != "SSE4_2":
        _decompress_fails(run, float_old, r"made for SSE4_2 code and this CPU runs \w+ code: "
                          r"decode with XLA_FLAGS=--xla_cpu_max_isa=SSE4_2")  # fmt: skip
