"""The imagenet and librispeech sources against the dataset definitions tfds itself ships.

tests/sources_test.py drives these loaders with a fake tfds module; here the feature names,
dtypes, shapes, configs and split names come from the installed tensorflow-datasets builders, and
the examples from `tfds.testing.mock_data`, so a renamed feature or a changed dtype fails here
rather than in a user's first 1 GB run.

Without TensorFlow (tensorflow-datasets 4.9.10 imports without it):
* `tfds.builder('imagenet2012').info` works; `librispeech`'s does not, because its `Audio` feature
  asks TensorFlow for its dtype when built. These tests then stand a plain `Tensor` feature of
  the same shape and dtype in for `Audio`, recording the arguments the definition passes.
* `tfds.testing.mock_data` works for `tfds.data_source` (random examples shaped by the real
  features), not for `tfds.load`, which builds a `tf.data` pipeline. So the sources' `tfds.load`
  call is checked against the real signature and answered from `tfds.data_source`.
* Split names are those tfds's own builder tests expect (their `SPLITS`, read without running
  them, since they import TensorFlow-only helpers): a prepared split list needs the data.
"""

import ast
import importlib.util
import inspect
import pathlib

import numpy as np
import pytest

from data import sources

tfds = pytest.importorskip(
    "tensorflow_datasets",
    reason="tensorflow-datasets is not installed (pip install -r requirements.txt): the "
    "real imagenet2012 and librispeech definitions cannot be checked",
)
HAS_TENSORFLOW = importlib.util.find_spec("tensorflow") is not None


@pytest.fixture
def audio_arguments(monkeypatch):
    """The arguments a definition gives `tfds.features.Audio` (a stand-in without TensorFlow)."""
    recorded = {}
    real = tfds.features.Audio

    def audio(*, shape=(None,), dtype=np.int64, **kwargs):
        recorded.update(shape=shape, dtype=dtype, **kwargs)
        if HAS_TENSORFLOW:
            return real(shape=shape, dtype=dtype, **kwargs)
        return tfds.features.Tensor(shape=shape, dtype=dtype)

    monkeypatch.setattr(tfds.features, "Audio", audio)
    return recorded


def _expected_splits(name: str) -> set[str]:
    """The split names tfds's own test of builder `name` expects (its class's `SPLITS`)."""
    module = f"tensorflow_datasets.datasets.{name}.{name}_dataset_builder_test"
    tree = ast.parse(pathlib.Path(importlib.util.find_spec(module).origin).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            getattr(t, "id", "") == "SPLITS" for t in node.targets
        ):
            return set(ast.literal_eval(node.value))
    raise AssertionError(f"{module} declares no SPLITS")


def _loads_through_data_source(monkeypatch, calls: list):
    """Answers the sources' `tfds.load` from `tfds.data_source` (which mock_data serves)."""
    signature = inspect.signature(tfds.load)

    def load(name, **kwargs):
        signature.bind(name, **kwargs)  # the arguments are ones the real tfds.load takes
        calls.append((name, kwargs))
        return list(tfds.data_source(name, split=kwargs["split"], data_dir=kwargs["data_dir"]))

    monkeypatch.setattr(tfds, "load", load)
    monkeypatch.setattr(tfds, "as_numpy", lambda examples: iter(examples))


def test_imagenet2012_definition(tmp_path):
    builder = tfds.builder("imagenet2012", data_dir=tmp_path)
    image = builder.info.features["image"]  # the feature `_imagenet` reads
    assert isinstance(image, tfds.features.Image)
    assert (image.shape, np.dtype(image.np_dtype)) == ((None, None, 3), np.uint8)  # RGB uint8
    assert "train" in _expected_splits("imagenet2012")  # the source's default split


def test_librispeech_definition(tmp_path, audio_arguments):
    builder = tfds.builder("librispeech", data_dir=tmp_path)
    assert builder.builder_config.name == "default"  # what tfds.load('librispeech') reads
    speech = builder.info.features["speech"]  # the feature `_librispeech` reads
    assert (speech.shape, np.dtype(speech.np_dtype)) == ((None,), np.int16)
    assert audio_arguments["sample_rate"] == 16_000 and audio_arguments["file_format"] == "flac"
    assert audio_arguments["lazy_decode"] is False  # decoded samples, not encoded FLAC bytes
    assert "train_clean100" in _expected_splits("librispeech")  # the source's default split


def test_imagenet_source_on_mock_examples(tmp_path, monkeypatch):
    calls = []
    _loads_through_data_source(monkeypatch, calls)
    options = sources.SourceOptions(tfds_data_dir=str(tmp_path), manual_dir=str(tmp_path / "m"))
    with tfds.testing.mock_data(num_examples=6, data_dir=str(tmp_path)):
        source = sources.get_source("imagenet", options)
        chunks = list(source.chunks(0, 32))  # patches of 32 rows x 1 pixel: the images are small
        examples = list(tfds.data_source("imagenet2012", split="train", data_dir=str(tmp_path)))
    expected = []
    for example in examples:
        gray = np.mean(example["image"], axis=-1).astype(np.uint8)  # the paper's grayscale
        height, width = gray.shape
        expected += [
            gray[r : r + 32, c].tobytes() for r in range(0, height - 31, 32) for c in range(width)
        ]
    assert chunks == expected and len(chunks) > 0
    assert source.modality == "image"
    name, kwargs = calls[0]
    assert (name, kwargs["split"], kwargs["shuffle_files"]) == ("imagenet2012", "train", False)
    config = kwargs["download_and_prepare_kwargs"]["download_config"]
    assert isinstance(config, tfds.download.DownloadConfig)  # the real class takes manual_dir
    assert str(config.manual_dir) == str(tmp_path / "m")


def test_librispeech_source_on_mock_examples(tmp_path, monkeypatch, audio_arguments):
    calls = []
    _loads_through_data_source(monkeypatch, calls)
    options = sources.SourceOptions(tfds_data_dir=str(tmp_path))
    with tfds.testing.mock_data(num_examples=6, data_dir=str(tmp_path)):
        source = sources.get_source("librispeech", options)
        chunks = list(source.chunks(0, 8))  # the mock utterances are 5 to 49 samples long
        examples = list(
            tfds.data_source("librispeech", split="train_clean100", data_dir=str(tmp_path))
        )
    expected = []
    for example in examples:
        speech = example["speech"]
        assert speech.dtype == np.int16
        high = speech.astype("<i2").view(np.uint8)[1::2] ^ 0x80  # each sample's high byte, biased
        expected += [high[i : i + 8].tobytes() for i in range(0, len(high) - 7, 8)]
    # Cut per utterance, each tail dropped. (mock_data's data_source ignores max_value, so the
    # samples are 0..254 and every byte is 128: sources_test checks the conversion on real audio.)
    assert chunks == expected and len(chunks) > 0
    assert source.modality == "audio"
    assert (calls[0][0], calls[0][1]["split"]) == ("librispeech", "train_clean100")
