"""Evaluation sources: chunking, image patches, audio conversion, clear errors on missing data."""

import importlib.util
import pathlib
import sys
import types
import wave

import numpy as np
import pytest

from data import corpus, sources

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def _shared(relative: str) -> pathlib.Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


def test_pydocs_chunks_are_consecutive_full_chunks():
    data = corpus.pydocs_bytes()
    chunks = list(sources.get_source("pydocs").chunks())
    assert len(chunks) == len(data) // 2048
    assert all(len(c) == 2048 for c in chunks)
    assert b"".join(chunks) == data[: len(chunks) * 2048]
    assert list(sources.get_source("pydocs").chunks(3, 100)) == [
        data[:100],
        data[100:200],
        data[200:300],
    ]


def test_pydocs_parts_are_train_py_splits():
    data = np.frombuffer(corpus.pydocs_bytes(), np.uint8)
    train, valid, test = corpus.split(data)
    for part, expected in (("test", test), ("valid", valid), ("heldout", data[len(train) :])):
        source = sources.get_source(f"pydocs:{part}")
        assert source.name == f"pydocs:{part}"
        joined = b"".join(source.chunks(chunk_size_bytes=256))
        assert joined == expected.tobytes()[: len(expected) // 256 * 256]
    with pytest.raises(sources.SourceError, match="part must be one of"):
        sources.get_source("pydocs:nope")


def test_file_keeps_every_byte_and_refuses_more_chunks_than_it_holds(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)) * 20)  # 5,120 bytes: two full chunks and 1,024 left
    source = sources.get_source(f"file:{path}")
    chunks = list(source.chunks())
    assert [len(c) for c in chunks] == [2048, 2048, 1024]
    assert b"".join(chunks) == path.read_bytes()
    with pytest.raises(sources.SourceError, match="holds 3 chunks .* fewer than the 4"):
        source.chunks(4)


def test_file_modality_is_decided_by_content(tmp_path):
    enwik5 = _shared("text/enwik5")  # Wikipedia XML, UTF-8 with some non-ASCII letters
    assert sources.get_source(f"file:{enwik5}").modality == "text"
    assert sources.detect_modality(corpus.pydocs_bytes()) == "text"
    latin1 = "The caf\u00e9 on the corner serves good coffee. ".encode("latin-1") * 100  # not UTF-8
    assert sources.detect_modality(latin1) == "text"
    # UTF-8 cut inside a character by the 64 KiB sample is still text.
    cut = b"a" * (sources.MODALITY_SAMPLE_BYTES - 1) + "\u00e9".encode() + b"tail"
    assert sources.detect_modality(cut) == "text"
    random = np.random.default_rng(0).bytes(10_000)
    assert sources.detect_modality(random) == "binary"
    assert sources.detect_modality(b"text\0with a NUL") == "binary"
    assert sources.detect_modality(b"") == "binary"
    fireworks = _shared("image/fireworks.jpeg")
    assert sources.get_source(f"file:{fireworks}").modality == "image"  # JPEG header
    flac = _shared("audio/librispeech-dev-clean-1272-128104-0000.flac")
    assert sources.get_source(f"file:{flac}").modality == "audio"  # fLaC header
    wav = tmp_path / "a.wav"
    _write_wav(wav, np.zeros(100, np.int16))
    assert sources.detect_modality(wav.read_bytes()) == "audio"  # RIFF....WAVE
    assert sources.detect_modality(random, "x.png") == "image"  # no header: the suffix
    path = tmp_path / "random.bin"
    path.write_bytes(random)
    assert sources.get_source(f"file:{path}").modality == "binary"
    assert sources.get_source("random").modality == "binary"


def test_file_modality_can_be_given(tmp_path):
    path = tmp_path / "random.bin"
    path.write_bytes(np.random.default_rng(0).bytes(1000))
    options = sources.SourceOptions(modality="text")
    assert sources.get_source(f"file:{path}", options).modality == "text"
    with pytest.raises(sources.SourceError, match="modality must be one of"):
        sources.get_source(f"file:{path}", sources.SourceOptions(modality="speech"))
    with pytest.raises(sources.SourceError, match="file:PATH sources only"):
        sources.get_source("images", options)


def test_random_is_seeded():
    def first(seed):
        options = sources.SourceOptions(seed=seed)
        return list(sources.get_source("random", options).chunks(2, 64))

    assert first(0) == first(0) != first(1)
    assert sources.get_source("random").default_num_chunks == 488_281  # the paper's 1 GB


def test_grayscale_is_the_papers_truncated_mean():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    assert np.array_equal(sources.to_grayscale(image), np.mean(image, axis=-1).astype(np.uint8))
    known = np.array([[[1, 2, 4], [255, 255, 255], [0, 0, 2], [3, 3, 3]]], np.uint8)
    assert sources.to_grayscale(known).tolist() == [[2, 255, 0, 3]]
    rgba = np.concatenate([known, np.full((1, 4, 1), 200, np.uint8)], axis=-1)
    assert sources.to_grayscale(rgba).tolist() == [[2, 255, 0, 3]]  # alpha ignored


def test_patches_are_32_rows_of_64_in_row_major_order():
    image = np.arange(70 * 150, dtype=np.int64).reshape(70, 150).astype(np.uint8)
    patches = list(sources.image_patches(image))
    assert len(patches) == 2 * 2  # 70 // 32 patch rows, 150 // 64 patch columns, edges dropped
    for index, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        expected = image[32 * r : 32 * (r + 1), 64 * c : 64 * (c + 1)]
        assert patches[index] == expected.tobytes()
    assert np.frombuffer(patches[1], np.uint8).reshape(32, 64)[0, 0] == image[0, 64]
    with pytest.raises(sources.SourceError, match="multiple"):
        list(sources.image_patches(image, 100))


def test_images_default_is_matplotlibs_real_photograph():
    chunks = list(sources.get_source("images").chunks())
    assert len(chunks) == (600 // 32) * (512 // 64)  # grace_hopper.jpg is 512 x 600
    assert all(len(c) == 2048 for c in chunks)
    pixels = np.frombuffer(b"".join(chunks), np.uint8)
    assert pixels.std() > 20  # a photograph, not a flat image


def test_images_from_a_real_jpeg():
    path = _shared("image/fireworks.jpeg")
    from PIL import Image

    gray = sources.to_grayscale(np.asarray(Image.open(path).convert("RGB")))
    chunks = list(sources.get_source(f"images:{path}").chunks())
    assert len(chunks) == (639 // 32) * (960 // 64)
    assert chunks[16] == gray[32:64, 64:128].tobytes()  # second patch row, second column


def test_pcm16_to_uint8_known_values_and_high_byte():
    samples = np.array([-32768, -257, -256, -1, 0, 255, 256, 32767], np.int64)
    assert sources.pcm16_to_uint8(samples).tolist() == [0, 126, 127, 127, 128, 128, 129, 255]
    rng = np.random.default_rng(0)
    x = rng.integers(-32768, 32768, 1000).astype(np.int16)
    high_byte = x.astype("<i2").view(np.uint8)[1::2]  # independent: the byte itself
    assert np.array_equal(sources.pcm16_to_uint8(x), high_byte ^ 0x80)
    with pytest.raises(sources.SourceError, match="16-bit range"):
        sources.pcm16_to_uint8(np.array([40_000]))
    with pytest.raises(sources.SourceError, match="integer"):
        sources.pcm16_to_uint8(np.array([0.5]))


def _write_wav(path, samples: np.ndarray, channels=1):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(samples.astype("<i2").tobytes())


def test_audio_file_chunks_drop_each_recordings_tail(tmp_path):
    rng = np.random.default_rng(1)
    first = rng.integers(-32768, 32768, 2 * 2048 + 100).astype(np.int16)
    second = rng.integers(-32768, 32768, 2048 + 5).astype(np.int16)
    _write_wav(tmp_path / "a.wav", first)
    _write_wav(tmp_path / "b.wav", second)
    chunks = list(sources.get_source(f"audio:{tmp_path}").chunks())
    expected = (
        sources.pcm16_to_uint8(first)[: 2 * 2048].tobytes()
        + sources.pcm16_to_uint8(second)[:2048].tobytes()
    )
    assert len(chunks) == 3 and b"".join(chunks) == expected


def test_stereo_is_mixed_down_as_floor_mean(tmp_path):
    left = np.array([0, 256, -256, 511] * 512, np.int16)
    right = np.array([256, 257, -1, -512] * 512, np.int16)
    _write_wav(tmp_path / "s.wav", np.stack([left, right], 1).reshape(-1), channels=2)
    (chunk,) = sources.get_source(f"audio:{tmp_path / 's.wav'}").chunks()
    mono = (left.astype(np.int32) + right) // 2
    assert chunk == sources.pcm16_to_uint8(mono).tobytes()


def test_audio_from_real_librispeech_flac():
    path = _shared("audio/librispeech-dev-clean-1272-128104-0000.flac")
    import soundfile

    samples, rate = soundfile.read(path, dtype="int16")
    assert rate == 16_000
    chunks = list(sources.get_source(f"audio:{path}").chunks())
    assert len(chunks) == len(samples) // 2048
    assert chunks[3] == sources.pcm16_to_uint8(samples[3 * 2048 : 4 * 2048]).tobytes()


def test_audio_default_is_auditoks_real_speech_recording():
    package = pathlib.Path(importlib.util.find_spec("auditok").submodule_search_locations[0])
    path = package / "data" / "1to6arabic_16000_mono_bc_noise.wav"
    import soundfile

    samples, rate = soundfile.read(path, dtype="int16")
    assert (rate, samples.ndim, len(samples)) == (16_000, 1, 300_606)  # 18.8 s of mono speech
    source = sources.get_source("audio")
    assert (source.name, source.modality) == ("audio", "audio")
    chunks = list(source.chunks())
    assert len(chunks) == 300_606 // 2048 == 146
    assert all(len(c) == 2048 for c in chunks)
    assert list(source.chunks()) == chunks  # deterministic
    assert b"".join(chunks) == sources.pcm16_to_uint8(samples[: 146 * 2048]).tobytes()
    u8 = np.frombuffer(b"".join(chunks), np.uint8)
    assert len(np.unique(u8)) > 200  # loud speech spans most byte values
    assert np.mean([len(set(c)) > 20 for c in chunks]) > 0.2  # not mostly silence or a tone


def test_audio_default_without_auditok_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "auditok", None)  # find_spec finds nothing
    with pytest.raises(sources.SourceError, match=r"pip install auditok==0.2.0.*audio:PATH"):
        sources.get_source("audio")


@pytest.mark.parametrize(
    "spec,match",
    [
        ("file:/no/such/file", "No such file"),
        ("images:/no/such/dir", "No such file or directory"),
        ("enwik10", "Unknown dataset"),
    ],
)
def test_missing_data_errors(spec, match):
    with pytest.raises(sources.SourceError, match=match):
        sources.get_source(spec)


def test_enwik_wrong_local_file_is_named(tmp_path):
    path = tmp_path / "enwik9"
    path.write_bytes(b"not enwik9")
    with pytest.raises(corpus.CorpusError, match="has 10 bytes, but enwik9 has"):
        sources.get_source("enwik9", sources.SourceOptions(path=str(path)))


@pytest.mark.parametrize("name", ["imagenet", "librispeech"])
def test_tfds_sources_without_tfds_say_what_to_install(monkeypatch, name):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
    with pytest.raises(sources.SourceError, match="pip install tensorflow-datasets"):
        sources.get_source(name)


def _fake_tfds(monkeypatch, examples, calls):
    def load(name, **kwargs):
        calls.append((name, kwargs))
        if isinstance(examples, Exception):
            raise examples
        return examples

    fake = types.SimpleNamespace(
        load=load,
        as_numpy=lambda dataset: iter(dataset),
        download=types.SimpleNamespace(DownloadConfig=lambda manual_dir: manual_dir),
    )
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)


def test_imagenet_patches_in_dataset_order(monkeypatch):
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (40, 130, 3), dtype=np.uint8) for _ in range(2)]
    calls = []
    _fake_tfds(monkeypatch, [{"image": im} for im in images], calls)
    options = sources.SourceOptions(manual_dir="/data/imagenet")
    chunks = list(sources.get_source("imagenet", options).chunks(3))
    gray = [sources.to_grayscale(im) for im in images]
    assert chunks == [gray[0][:32, :64].tobytes(), gray[0][:32, 64:128].tobytes()] + [
        gray[1][:32, :64].tobytes()
    ]
    name, kwargs = calls[0]
    assert (name, kwargs["split"], kwargs["shuffle_files"]) == ("imagenet2012", "train", False)
    assert kwargs["download_and_prepare_kwargs"]["download_config"] == "/data/imagenet"


def test_librispeech_int64_speech_per_utterance(monkeypatch):
    rng = np.random.default_rng(3)
    utterances = [rng.integers(-32768, 32768, n).astype(np.int64) for n in (2048 + 7, 4096)]
    calls = []
    _fake_tfds(monkeypatch, [{"speech": u} for u in utterances], calls)
    chunks = list(sources.get_source("librispeech").chunks())
    u8 = [sources.pcm16_to_uint8(u) for u in utterances]
    assert chunks == [u8[0][:2048].tobytes(), u8[1][:2048].tobytes(), u8[1][2048:].tobytes()]
    assert calls[0][1]["split"] == "train_clean100"


def test_tfds_missing_data_gives_the_hint(monkeypatch):
    _fake_tfds(monkeypatch, AssertionError("Manual directory does not exist"), [])
    source = sources.get_source("imagenet")
    with pytest.raises(sources.SourceError, match="ILSVRC2012_img_train.tar"):
        list(source.chunks(1))


def test_prefetch_keeps_order_and_raises_producer_errors():
    assert list(sources.prefetch(range(100), depth=3)) == list(range(100))

    def failing():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(sources.prefetch(failing()))
