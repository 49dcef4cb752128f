"""Classical compressors (round trips, shapes, header, streams) and the 7-bit modes."""

import bz2
import gzip
import io
import lzma
import pathlib

import numpy as np
import pytest
from PIL import Image

import compressors
from compressors import classical
from data import corpus, sources

SHARED_AUDIO = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "audio"
_RNG = np.random.default_rng(0)
_TEXT = corpus.pydocs_bytes()[:2048]
_WAVE = (128 + 90 * np.sin(np.arange(2048) / 7) + _RNG.normal(0, 2, 2048)).clip(0, 255)
_SAMPLES = {
    "text": _TEXT,
    "smooth": _WAVE.astype(np.uint8).tobytes(),
    "random": _RNG.integers(0, 256, 2048, dtype=np.uint8).tobytes(),
    "one_byte": b"\x00",
    "odd_length": _TEXT[:1999],  # prime: a 1 x 1999 image
}


@pytest.mark.parametrize("name", list(classical.CLASSICAL))
@pytest.mark.parametrize("sample", list(_SAMPLES))
def test_round_trip(name, sample):
    compressor = classical.get(name)
    data = _SAMPLES[sample]
    assert compressor.decompress(compressor.compress(data)) == data


def test_settings_match_direct_calls():
    assert classical.get("gzip").compress(_TEXT) == gzip.compress(_TEXT, 9, mtime=0)
    assert classical.get("lzma").compress(_TEXT) == lzma.compress(_TEXT)
    assert classical.get("bzip2").compress(_TEXT) == bz2.compress(_TEXT, 9)


def test_png_shapes():
    assert classical.paper_image_shape(2048) == (32, 64)  # 32 wide, 64 tall, as the reference
    assert classical.patch_image_shape(2048) == (64, 32)  # the patch: 32 rows of 64
    assert classical.paper_image_shape(1999) == (1, 1999)
    patch = np.arange(32 * 64, dtype=np.int64).reshape(32, 64).astype(np.uint8)
    for name, size in (("png", (32, 64)), ("png_patch", (64, 32))):
        with Image.open(io.BytesIO(classical.get(name).compress(patch.tobytes()))) as image:
            assert image.size == size and image.mode == "L"
    # Each row of this patch is 0..63 (+ 64r): only the true shape sees the repetition.
    assert len(classical.get("png_patch").compress(patch.tobytes())) < len(
        classical.get("png").compress(patch.tobytes())
    )


def test_flac_is_8_bit_audio():
    flac = classical.get("flac")
    smooth, noise = (len(flac.compress(_SAMPLES[k])) for k in ("smooth", "random"))
    assert smooth < 0.6 * 2048 < 2048 < noise  # predicts a smooth wave, not noise
    import soundfile

    info = soundfile.info(io.BytesIO(flac.compress(_SAMPLES["smooth"])))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_S8", 2048)


# Our FLAC's rate on real speech, 2048-byte chunks, container counted once (eval_compress's
# accounting), computed once with soundfile 0.14.0 (libsndfile 1.2.2): 30,883 of 92,160 bytes
# (33.5%) on the LibriSpeech utterance, 65,367 of 299,008 (21.9%) on auditok's recording. The
# paper reports 30.3% on LibriSpeech; its reference code gives 103.2% on the same utterance
# (see the `flac` entry of compressors/classical.py).
_FLAC_PINNED = {
    "librispeech-dev-clean-1272-128104-0000.flac": (45, 92_160, 30_883),
    "audio": (146, 299_008, 65_367),
}


def test_flac_rate_on_real_speech_is_pinned():
    path = SHARED_AUDIO / "librispeech-dev-clean-1272-128104-0000.flac"
    key, spec = (path.name, f"audio:{path}") if path.exists() else ("audio", "audio")
    chunks = list(sources.get_source(spec).chunks())
    flac = classical.get("flac")
    compressed = sum(len(flac.compress(c)) for c in chunks)
    compressed -= classical.header_bytes("flac") * (len(chunks) - 1)
    num_chunks, raw_bytes, expected = _FLAC_PINNED[key]
    assert (len(chunks), sum(map(len, chunks))) == (num_chunks, raw_bytes)
    # A few bytes of slack for another libFLAC build; a changed conversion moves it by far more.
    assert abs(compressed - expected) <= 0.001 * expected, compressed / raw_bytes


def test_header_is_one_compressed_zero_byte():
    assert classical.header_bytes("gzip") == len(gzip.compress(b"\0", 9)) == 21
    assert classical.header_bytes("lzma") == len(lzma.compress(b"\0"))


@pytest.mark.parametrize("name", list(classical.CLASSICAL))
def test_stream_length_matches_one_shot(name):
    compressor = classical.get(name)
    data = corpus.pydocs_bytes()[:20_000]
    stream = compressor.stream()
    for i in range(0, len(data), 3000):
        stream.write(data[i : i + 3000])
    streamed, one_shot = stream.close(), len(compressor.compress(data))
    if name == "zstd":  # unknown size: no content size in the frame, parameters not fitted to it
        assert abs(streamed - one_shot) <= 0.01 * one_shot + 8
    else:
        assert streamed == one_shot


def test_compress_chunks_totals():
    chunks = [_SAMPLES["text"], _SAMPLES["smooth"]]
    totals = classical.compress_chunks(("gzip", "flac"), chunks)
    for name in ("gzip", "flac"):
        assert totals[name][0] == sum(len(classical.get(name).compress(c)) for c in chunks)


def test_parse_names():
    assert compressors.parse_names("gzip, lzma,lm:runs/x") == ["gzip", "lzma", "lm:runs/x"]
    assert compressors.parse_names("hf:/m/llama,gzip") == ["hf:/m/llama", "gzip"]
    for spec, match in (
        ("gzip,zip", "Unknown compressor 'zip'.*hf:PATH"),
        ("lm:", "lm needs a training run"),
        ("hf:", "hf needs a model directory"),
        ("gzip,gzip", "twice"),
        ("", "No compressors"),
    ):
        with pytest.raises(ValueError, match=match):
            compressors.parse_names(spec)


def test_seven_bit_ascii_mask():
    data = "Aé z".encode()  # é is two bytes >= 128
    masked, missed = compressors.mask_ascii(data)
    assert masked == bytes([0x41, 0xC3 & 0x7F, 0xA9 & 0x7F, 0x20, 0x7A]) and missed == 2
    assert all(b < 128 for b in masked)


def test_seven_bit_shift():
    shifted, missed = compressors.shift_right(bytes([0, 1, 2, 128, 255]))
    assert shifted == bytes([0, 0, 1, 64, 127]) and missed == 5


def test_seven_bit_accounting():
    assert compressors.seven_bit_scale(10, 10) == pytest.approx(8 / 7)  # shift: every byte
    assert compressors.seven_bit_scale(100, 0) == 1.0
    assert compressors.seven_bit_mode("paper", "text") == "ascii"
    assert compressors.seven_bit_mode("paper", "image") == "shift"
    assert compressors.seven_bit_mode("paper", "audio") == "shift"
    assert compressors.seven_bit_mode("paper", "binary") == "shift"  # random bytes, as the paper
    assert compressors.seven_bit_mode("none", "text") == "none"
    with pytest.raises(ValueError, match="seven_bit must be one of"):
        compressors.seven_bit_mode("6bit", "text")
