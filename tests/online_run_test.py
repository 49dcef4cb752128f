"""`online:RUN_DIR`: an online model that starts from a trained run and keeps learning; its stream
fingerprints the run, and decompress takes `--model=RUN_DIR` and refuses another."""

import json
import pathlib

import jax
import numpy as np
import pytest

from coding import container
from compressors import fingerprints, lm_stream, model_names
from tests.online_test import _rewrite_info
from training import checkpoints

TEXT = (pathlib.Path(__file__).resolve().parents[2] / "shared/data/text/alice29.txt").read_bytes()
# The tiny run's 32-byte context as segments, 2 a group, one step, count models of orders 0..2.
RECIPE = "segment_bytes=32,lanes=2,steps=1,replay=2,order=2,table_bits=8"


@pytest.fixture(scope="module")
def packed(tiny_run, tmp_path_factory):
    """(source, stream) of 300 bytes compressed by online:RUN_DIR."""
    work = tmp_path_factory.mktemp("online_run")
    src, out = work / "text", work / "text.lmc"
    src.write_bytes(TEXT[:300])
    lm_stream.compress_file(f"online:{tiny_run}", str(src), str(out), recipe=RECIPE)
    return src, out


def test_it_starts_from_the_runs_parameters(tiny_run):
    m = model_names.load(f"online:{tiny_run}", recipe=RECIPE)
    _, run_params, _ = checkpoints.restore_params(tiny_run, None)
    start = jax.tree_util.tree_leaves(m.params["tf"])
    trained = jax.tree_util.tree_leaves(run_params)
    assert len(start) == len(trained)
    assert all(np.array_equal(a, b) for a, b in zip(start, trained, strict=True))


def test_round_trip_with_the_run_named(tiny_run, packed, tmp_path):
    src, out = packed
    back = tmp_path / "back"
    lm_stream.decompress_file(tiny_run, str(out), str(back))
    assert back.read_bytes() == src.read_bytes()


def test_the_stream_fingerprints_the_run_and_its_architecture(tiny_run, packed):
    _, out = packed
    with open(out, "rb") as f:
        info = container.StreamInfo.unpack(container.ContainerReader(f).header.info)
    recipe = info.coder["online"]
    assert recipe["start"] == fingerprints.run_fingerprint(tiny_run, None)[1]
    architecture = json.loads(recipe["architecture"])
    assert architecture["context_length"] == 32 and architecture["width"] > 0


def test_decompress_without_the_run_or_with_another_fails_in_one_line(
    tiny_run, packed, train_tiny, tmp_path_factory, tmp_path
):
    _, out = packed
    with pytest.raises(ValueError, match="--model=RUN_DIR") as e:
        lm_stream.decompress_file(None, str(out), str(tmp_path / "a"))
    assert "\n" not in str(e.value)
    other = train_tiny(tmp_path_factory.mktemp("other_run"), steps=1, seed=7)
    with pytest.raises(ValueError, match="not the run") as e:
        lm_stream.decompress_file(str(other), str(out), str(tmp_path / "b"))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "changes",
    [
        {"coder.online.architecture": json.dumps({"width": 4096})},
        {"coder.online.architecture": "not json"},
        {"coder.online.start": "12"},
    ],
)
def test_forged_starts_are_refused_in_one_line(tiny_run, packed, tmp_path, changes):
    _, out = packed
    forged = tmp_path / "forged.lmc"
    forged.write_bytes(out.read_bytes())
    _rewrite_info(forged, **changes)
    with pytest.raises(ValueError) as e:
        lm_stream.decompress_file(tiny_run, str(forged), str(tmp_path / "x"))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "x").exists()


def test_a_seeded_stream_still_decodes_without_a_model(tmp_path):
    src, out, back = tmp_path / "s", tmp_path / "s.lmc", tmp_path / "b"
    src.write_bytes(TEXT[:100])
    lm_stream.compress_file("online:test", str(src), str(out), recipe=RECIPE)
    lm_stream.decompress_file(None, str(out), str(back))
    assert back.read_bytes() == src.read_bytes()
