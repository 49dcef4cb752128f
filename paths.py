"""Where the entry points may read and write: checked before any work, so a mistake costs
nothing and never overwrites the input, a directory or a device."""

import os
import stat
import sys


def check_input(path: str | os.PathLike) -> None:
    """Refuses, before any work, an input that is not there or is a directory ('-': standard
    input).

    Raises:
      FileNotFoundError, IsADirectoryError: naming the path.
    """
    path = os.fspath(path)
    if path == "-":
        return
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory: give a file as INPUT.")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no input file {path}.")


def writes_in_place(path: str | os.PathLike) -> bool:
    """Whether `path` is a FIFO or a character device (e.g. /dev/null): written into as into
    standard output, never replaced by a file."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def check_output(
    output_path: str | os.PathLike, input_path: str | os.PathLike = "-", force: bool = False
) -> None:
    """Refuses, before any work, an output that must not or cannot be written.

    An existing regular file is replaced only with `force`; a FIFO or character device is
    written into (`writes_in_place`); nothing else that exists is ever replaced. '-' is standard
    output.

    Args:
      output_path: the file to write, or '-'.
      input_path: the file the output is made from ('-': standard input), which the output must
        not be, whatever the paths say (a symlink or hard link to it included).
      force: replace an existing regular file.

    Raises:
      ValueError: the output is the input, or an existing file of another kind (a block device,
        a socket).
      IsADirectoryError: the output is a directory.
      FileExistsError: an existing regular file without `force`.
      FileNotFoundError: no directory to write it in.
    """
    output, source = os.fspath(output_path), os.fspath(input_path)
    if source != "-" and _same_file(source, output):
        raise ValueError(f"OUTPUT {output} is the input file {source}: write elsewhere.")
    if output == "-":
        return
    if os.path.isdir(output) or output.endswith(os.sep):
        raise IsADirectoryError(f"{output} is a directory: name a file to write.")
    if writes_in_place(output):
        return
    if os.path.lexists(output):
        if os.path.exists(output) and not stat.S_ISREG(os.stat(output).st_mode):
            raise ValueError(f"{output} is not a regular file, a FIFO or a character device.")
        if not force:
            raise FileExistsError(f"{output} exists: pass --force to replace it.")
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no directory {os.path.dirname(output) or '.'} for {output}.")


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: the same file where both exist (a symlink or hard link
    to it included), else the same resolved path (a file still to be written)."""
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def _same_file(path: str, other: str) -> bool:
    """Whether `other` ('-': standard output) is the file at `path` (`same_path`). Standard
    output counts only when it is a regular file (redirected to the input)."""
    if other != "-":
        return same_path(path, other)
    try:
        a, b = os.stat(path), os.fstat(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # pytest's captured stdout has no descriptor
        return False
    return stat.S_ISREG(b.st_mode) and (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
