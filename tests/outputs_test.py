"""What compress.py, decompress and sample.py may write: never the input, never over a FIFO, a
device or a directory, checked before any work (paths.check_input, paths.check_output)."""

import os
import pathlib
import socket
import stat
import subprocess
import sys
import threading

import pytest

import compress
import paths
import sample
from compressors import lm_stream

REPO = pathlib.Path(__file__).resolve().parents[1]
NO_RUN = "/no/such/run"  # any work would fail on it: an error about paths came first


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import train
    from configs import default

    config = default.get_config("size=test")
    config.train.batch_size = 2
    config.train.steps = 1
    config.train.eval_every = 1000
    config.train.eval_max_bytes = 256
    config.train.progress = False
    workdir = tmp_path_factory.mktemp("run")
    train.train(config, str(workdir))
    return str(workdir)


@pytest.fixture
def aliased(tmp_path):
    """real/in.bin and alias -> real: alias/in.bin is the same file under another path."""
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    src = tmp_path / "real" / "in.bin"
    src.write_bytes(b"the only copy " * 40)
    return src, tmp_path / "alias" / "in.bin"


def test_an_output_that_is_the_input_is_refused(aliased, tmp_path):
    src, alias = aliased
    original = src.read_bytes()
    os.link(src, tmp_path / "hard.bin")
    for out in (alias, tmp_path / "hard.bin"):
        with pytest.raises(ValueError, match="is the input file"):
            lm_stream.compress_file(NO_RUN, src, out, force=True)
        with pytest.raises(ValueError, match="is the input file"):
            lm_stream.decompress_file(NO_RUN, src, out, force=True)
        with pytest.raises(ValueError, match="is the input file"):
            sample.run("gzip", str(src), str(out), num_bytes=1, force=True, workers=0)
    assert src.read_bytes() == original


def test_cli_refuses_a_symlinked_output_in_one_line(aliased):
    src, alias = aliased
    original = src.read_bytes()
    for mode in ("compress", "decompress"):
        result = subprocess.run(
            [sys.executable, "compress.py", mode, "--model=x", "--force", "--noprogress",
             str(src), str(alias)],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 1, result.stderr[-2000:]
        assert result.stderr.strip().splitlines() == [
            f"compress.py: OUTPUT {alias} is the input file {src}: write elsewhere."
        ]
    assert src.read_bytes() == original


def test_directories_are_refused_before_any_work(tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(b"x")
    folder = tmp_path / "folder"
    folder.mkdir()
    for force in (False, True):
        with pytest.raises(IsADirectoryError, match="folder is a directory: name a file"):
            lm_stream.compress_file(NO_RUN, src, folder, force=force)
        with pytest.raises(IsADirectoryError, match="folder is a directory: name a file"):
            lm_stream.decompress_file(NO_RUN, src, folder, force=force)
        with pytest.raises(IsADirectoryError, match="folder is a directory: name a file"):
            sample.run("gzip", str(src), str(folder), force=force, workers=0)
    with pytest.raises(IsADirectoryError, match="is a directory: name a file"):
        lm_stream.compress_file(NO_RUN, src, f"{tmp_path}/new/", force=True)
    with pytest.raises(IsADirectoryError, match="folder is a directory: give a file as INPUT"):
        lm_stream.compress_file(NO_RUN, folder, tmp_path / "out")
    with pytest.raises(IsADirectoryError, match="folder is a directory: give a file as INPUT"):
        lm_stream.decompress_file(NO_RUN, folder, tmp_path / "out")
    with pytest.raises(IsADirectoryError, match="folder' is a directory"):
        sample.run("gzip", str(folder), str(tmp_path / "out"), workers=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "in.bin"]


def test_other_special_files_are_never_replaced(tmp_path):
    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        with pytest.raises(ValueError, match="not a regular file, a FIFO or a character device"):
            paths.check_output(path, force=True)
        assert stat.S_ISSOCK(os.stat(path).st_mode)
    paths.check_output("/dev/null")  # written into, like standard output: no --force needed


def test_negative_counts_are_refused_in_one_line(tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(b"x")
    for name in ("lanes", "chunk_size", "top_k"):
        with pytest.raises(ValueError, match=f"--{name}=-1: give 0"):
            lm_stream.compress_file(NO_RUN, src, tmp_path / "out", **{name: -1})
    result = subprocess.run(
        [sys.executable, "compress.py", "compress", "--model=x", "--lanes=-1", str(src),
         str(tmp_path / "out")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--lanes=-1" in lines[0], lines


def _read_fifo(path: pathlib.Path) -> tuple[threading.Thread, list[bytes]]:
    """Starts a reader of FIFO `path` (a writer's open blocks until one exists)."""
    got = []
    reader = threading.Thread(target=lambda: got.append(path.read_bytes()), daemon=True)
    reader.start()
    return reader, got


def test_fifos_are_written_into_not_replaced(run, tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(b"def f(x):\n    return x + 1\n" * 20)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader, got = _read_fifo(fifo)
    s = lm_stream.compress_file(run, src, fifo, force=True)
    reader.join(timeout=60)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert len(got[0]) == s["compressed_bytes"]
    packed = tmp_path / "packed.lmc"
    packed.write_bytes(got[0])
    reader, got = _read_fifo(fifo)
    lm_stream.decompress_file(run, packed, fifo)  # no --force: nothing is replaced
    reader.join(timeout=60)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert got[0] == src.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "in.bin", "packed.lmc"]


def test_sample_writes_into_a_fifo_and_replaces_files_only_with_force(tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_bytes(b"abcabcabcabc")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader, got = _read_fifo(fifo)
    sampled = sample.run("gzip", str(prompt), str(fifo), num_bytes=3, workers=0)
    reader.join(timeout=60)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and got == [sampled]
    out = tmp_path / "out"
    out.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="out exists: pass --force"):
        sample.run("gzip", str(prompt), str(out), num_bytes=3, workers=0)
    assert out.read_bytes() == b"precious"
    assert sample.run("gzip", str(prompt), str(out), num_bytes=3, force=True, workers=0)
    assert out.read_bytes() == sampled  # seeded: the same sample


def test_summary_names_the_integer_tables_ideal_on_the_portable_path():
    s = {"raw_bytes": 100, "compressed_bytes": 50, "ratio": 0.5, "bits_per_byte": 4.0,
         "ideal_bits": 380.0, "raw_chunks": 0, "num_chunks": 1, "mb_per_s": 1.0}  # fmt: skip
    assert "(integer tables' ideal 3.8000)" in compress._summary(
        "compress", {**s, "path": "integer"}, "in", "out"
    )
    assert "(model's log-loss 3.8000)" in compress._summary(
        "compress", {**s, "path": "float"}, "in", "out"
    )
