import hashlib
import zipfile

import numpy as np
import pytest

from data import batches, corpus


def test_pydocs_default_is_real_text():
    data = corpus.load_corpus()
    text = data.tobytes().decode("utf-8")
    assert len(data) > 300_000
    assert 'The "assert" statement' in text
    # Written prose: mostly letters and spaces, a natural word-length distribution.
    words = text.split()
    assert 3 < np.mean([len(w) for w in words]) < 8
    assert len(set(words)) > 5_000


def test_enwik8_split_sizes():
    fake = np.broadcast_to(np.uint8(0), (100_000_000,))
    train, valid, test = corpus.split(fake)
    assert (len(train), len(valid), len(test)) == (90_000_000, 5_000_000, 5_000_000)


def test_split_too_small_and_bad_fractions():
    with pytest.raises(corpus.CorpusError, match="too small"):
        corpus.split(np.zeros(5, np.uint8))
    with pytest.raises(corpus.CorpusError, match="fractions"):
        corpus.split(np.zeros(100, np.uint8), 0.6, 0.6)


def _spec(tmp_path, payload, sha=None, member="enwik5"):
    zip_path = tmp_path / "src.zip"
    with zipfile.ZipFile(zip_path, "w") as z:
        z.writestr(member, payload)
    return corpus.RemoteCorpus(
        "enwik5",
        zip_path.as_uri(),
        member,
        len(payload),
        sha or hashlib.sha256(payload).hexdigest(),
    )


def test_fetch_downloads_extracts_and_verifies(tmp_path, enwik5_path):
    payload = enwik5_path.read_bytes()
    spec = _spec(
        tmp_path, payload, sha="581bee9758c531de3795885a1adb331b9c51bfdeefd9a63407815479e22a9072"
    )
    cache = tmp_path / "cache"
    path = corpus.fetch(spec, cache)
    assert path.read_bytes() == payload
    assert corpus.fetch(spec, cache) == path  # cached, not fetched again


def test_fetch_checksum_mismatch_leaves_nothing(tmp_path):
    spec = _spec(tmp_path, b"hello world", sha="0" * 64)
    with pytest.raises(corpus.CorpusError, match="sha256 mismatch"):
        corpus.fetch(spec, tmp_path / "cache")
    assert not (tmp_path / "cache" / "enwik5").exists()


def test_cached_file_with_wrong_bytes_is_rejected(tmp_path):
    spec = _spec(tmp_path, b"hello world")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "enwik5").write_bytes(b"hello wxrld")
    with pytest.raises(corpus.CorpusError, match="sha256 mismatch"):
        corpus.fetch(spec, tmp_path / "cache")


def test_offline_error_names_the_default(tmp_path):
    spec = corpus.RemoteCorpus("enwik8", (tmp_path / "missing.zip").as_uri(), "enwik8", 1, "0")
    with pytest.raises(corpus.CorpusError, match="pydocs"):
        corpus.fetch(spec, tmp_path / "cache")


def test_enwik8_named_file_is_verified(tmp_path):
    fake = tmp_path / "enwik8"
    fake.write_bytes(b"not enwik8")
    with pytest.raises(corpus.CorpusError, match="100,000,000"):
        corpus.load_corpus(path=str(fake))


def test_local_file_and_unknown_name(tmp_path, enwik5_path):
    data = corpus.load_corpus(f"file:{enwik5_path}")
    assert data.tobytes() == enwik5_path.read_bytes()
    with pytest.raises(corpus.CorpusError, match="Unknown corpus"):
        corpus.load_corpus("enwik10")
    with pytest.raises(corpus.CorpusError, match="No such file"):
        corpus.load_corpus(path=str(tmp_path / "nope"))


def test_sample_windows_deterministic_by_seed_and_step():
    tokens = np.arange(1000, dtype=np.uint8)
    a = batches.sample_windows(tokens, 4, 16, seed=3, step=7)
    b = batches.sample_windows(tokens, 4, 16, seed=3, step=7)
    c = batches.sample_windows(tokens, 4, 16, seed=3, step=8)
    assert a.shape == (4, 16) and a.dtype == np.int32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Each row is a contiguous window of the source.
    for row in a:
        assert np.all(np.diff(row) % 256 == 1)
    with pytest.raises(ValueError, match="fewer than one window"):
        batches.sample_windows(tokens[:5], 1, 16, 0, 0)


def test_eval_windows_pad_with_zero_weight():
    windows, weights = batches.eval_windows(np.arange(100, dtype=np.uint8), 10, 75, 4)
    assert windows.shape == (8, 10)
    np.testing.assert_array_equal(weights, [1] * 7 + [0])
    np.testing.assert_array_equal(windows[6], np.arange(60, 70))
