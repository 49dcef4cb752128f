"""Command-line plumbing shared by the entry points; defines no flags and imports no JAX.

Every entry point (train.py, train_addition.py, ...) keeps its own flags and a short `main`;
what they all do the same way lives here.
"""

import os
import re
import stat
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from absl import app, flags, logging


def quiet_logging() -> None:
    """Keeps absl's and orbax's log to errors (orbax logs every save and restore at INFO and
    warns about read-only restores), unless --verbose or LMC_VERBOSE=1 asks for everything."""
    logging.set_verbosity(logging.INFO if _verbose() else logging.ERROR)


def train_main(
    argv: list[str],
    train: Callable[[Any, str], dict],
    report: Callable[[dict], str],
    check_config: Callable[[Any], None] = lambda config: None,
) -> None:
    """The `main` of a trainer: --config and --workdir in, the report of `train` printed.

    An exception with an `exit_status` attribute (training.runtime.Preempted: stopped on a
    signal, run again to resume) ends the program with that status and its message; one with
    `alone` set (stopped without a checkpoint agreed by the run's processes) stops the run's
    other processes with the same status.

    Raises:
      app.UsageError: stray arguments, no --workdir, or a config `check_config` refuses.
    """
    no_arguments(argv)
    if flags.FLAGS.workdir is None:
        raise app.UsageError("--workdir is required.")
    check_config(flags.FLAGS.config)
    quiet_logging()
    from training import rendezvous  # jax-free; the trainers import JAX anyway

    try:
        metrics = train(flags.FLAGS.config, flags.FLAGS.workdir)
    except BaseException as e:  # Preempted is a BaseException, like KeyboardInterrupt
        status = getattr(e, "exit_status", None)
        if status is None:
            raise  # without goodbye: the run's other processes stop too
        alone = getattr(e, "alone", False)
        rendezvous.leave(status if alone else None)
        print(f"{_program_name()}: {e}", file=sys.stderr, flush=True)
        if alone and rendezvous.joined():  # JAX's shutdown at exit would wait for the others
            sys.stdout.flush()
            os._exit(status)
        sys.exit(status)
    rendezvous.leave()
    if _is_first_process():
        print(report(metrics))


VERBOSE_ENV = "LMC_VERBOSE"  # LMC_VERBOSE=1 shows tracebacks, like --verbose
INTERRUPTED_EXIT_CODE = 130  # what a shell reports for a Ctrl-C
_HELP = ("--help", "-help", "--helpshort", "-helpshort", "-h", "-?")


REPO = os.path.dirname(os.path.abspath(__file__))


def no_arguments(argv: list[str], hint: str = "") -> None:
    """Refuses positional arguments (absl leaves them in argv after the program's name).

    Raises:
      app.UsageError: naming them, and `hint` (e.g. how to give several values) if any.
    """
    if len(argv) > 1:
        raise app.UsageError(
            f"Unexpected arguments: {' '.join(argv[1:])}" + (f": {hint}" if hint else ".")
        )


def numbers(values: list[str], flag: str, kind: type = float, example: str = "") -> list:
    """A list flag's values as numbers of `kind`.

    Raises:
      ValueError: one line naming the flag, what it takes and an example.
    """
    try:
        return [kind(v) for v in values]
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise ValueError(
            f"--{flag}={','.join(values)}: give {what}" + (f", e.g. {example}." if example else ".")
        ) from None


def repo_path(relative: str) -> str:
    """A path inside the repository, whatever the current directory (e.g. a default config)."""
    return os.path.join(REPO, relative)


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


def _same_file(path: str, other: str) -> bool:
    """Whether `other` ('-': standard output) is the file at `path`; False where either is
    missing. Standard output counts only when it is a regular file (redirected to the input)."""
    try:
        a = os.stat(path)
        b = os.fstat(sys.stdout.fileno()) if other == "-" else os.stat(other)
    except (OSError, ValueError, AttributeError):  # pytest's captured stdout has no descriptor
        return False
    if other == "-" and not stat.S_ISREG(b.st_mode):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def define_verbose_flag() -> None:
    """Defines --verbose for the entry point calling this (call it from its `__main__` block).

    The flag is filed under the main module, so the entry point's `--help` lists it. Defining
    it twice is harmless.
    """
    if "verbose" in flags.FLAGS:
        return
    flags.DEFINE_bool(
        "verbose",
        False,
        f"On an error, show the traceback instead of one line (or set {VERBOSE_ENV}=1).",
        module_name=sys.argv[0],  # absl's name for the main module; --help lists its flags
    )


def run(
    main: Callable[[list[str]], Any],
    name: str | None = None,
    define_flags: Callable[[], None] | None = None,
) -> None:
    """`app.run(main)`, ending a user's error in one line on stderr instead of a traceback.

    * Config files given as `--config=configs/x.py[:arg]` are found relative to the repository
      when they are not relative to the current directory, so entry points run from anywhere.
    * `define_flags` (the entry point's flag definitions, with --verbose added) runs first, and a
      misspelt config override (`--config.train.stepz=1`, which config_flags checks while the
      flag is defined) ends in one line with its "did you mean", exit 2.

    * ValueError and OSError (FileNotFoundError included) from `main`, and exceptions whose
      class has `user_error = True`: `NAME: message`, exit 1. Their messages should name the
      problem and the fix.
    * app.UsageError from `main` (stray arguments), a required flag left out and a flag that does
      not parse: `NAME: message (see --help)`, exit 2.
    * --help (also -h, --helpshort): the main module's docstring and its own flags on stdout,
      exit 0 (absl exits 1). --helpfull lists every module's flags.
    * KeyboardInterrupt: `NAME: interrupted`, exit 130.

    With --verbose (see `define_verbose_flag`) or LMC_VERBOSE=1 the errors from `main` propagate
    with their tracebacks. Other exceptions always do: they are bugs, not a user's mistake.

    Args:
      main: takes argv (the program name, then the arguments left after the flags).
      name: the program in messages; default the module run by `python -m`, or the script.
      define_flags: defines the entry point's flags.
    """
    name = name or _program_name()

    def fail(message: str, status: int) -> NoReturn:
        hint = " (see --help)" if status == 2 else ""
        print(f"{name}: {' '.join(str(message).split())}{hint}", file=sys.stderr)
        sys.exit(status)

    sys.argv[1:] = [_resolve_config_path(arg) for arg in sys.argv[1:]]
    if define_flags is not None:
        try:
            define_flags()
        except (AttributeError, KeyError) as e:  # a config override naming no field
            if _verbose_in_argv():
                raise
            fail(f"no such config field: {_unquote(e)}", 2)
    define_verbose_flag()

    def parse(argv: list[str]) -> list[str]:
        args = argv[1 : argv.index("--") if "--" in argv else len(argv)]
        if any(a in _HELP for a in args):  # absl's --help exits with status 1; asking is no error
            app.usage(shorthelp=True, writeto_stdout=True)
            print("\nTry --helpfull to get a list of all flags.")
            sys.exit(0)
        try:
            return flags.FLAGS(argv)
        except (AttributeError, KeyError) as e:  # a config override naming no field
            if _verbose_in_argv():
                raise
            fail(f"no such config field: {_unquote(e)}", 2)
        except flags.Error as e:
            required = re.search(r"Flag (--\w+) must have a value other than None", str(e))
            fail(f"{required[1]} is required" if required else _config_error(str(e)), 2)

    def guarded(argv: list[str]) -> Any:
        try:
            return main(argv)
        except app.UsageError as e:
            if _verbose():
                raise
            fail(str(e), 2)
        except Exception as e:
            if _verbose() or not _is_user_error(e):
                if not _verbose() and _peer_died():
                    fail("stopped: another process of the run died", 1)
                raise
            fail(str(e) or type(e).__name__, 1)
        except KeyboardInterrupt:
            if _verbose():
                raise
            fail("interrupted", INTERRUPTED_EXIT_CODE)

    app.run(guarded, flags_parser=parse)


def _resolve_config_path(arg: str) -> str:
    """'--config=configs/x.py:a' -> the repository's configs/x.py when not found from here."""
    match = re.fullmatch(r"(--config=)([^:]+\.py)(:.*)?", arg)
    if not match or os.path.exists(match[2]) or not os.path.exists(repo_path(match[2])):
        return arg
    return f"{match[1]}{repo_path(match[2])}{match[3] or ''}"


def _config_error(message: str) -> str:
    """config_flags wraps a config file's error in its traceback: keep the error's own line."""
    if "Error whilst parsing config file" in message:
        last = re.findall(r"\b\w*(?:Error|Exception): (.+?)(?= \(see --help\)|$)", message)
        if last:
            return last[-1]
    return message


def _unquote(error: Exception) -> str:
    """ml_collections nests the message in repr()s: "'\\'stepz\\'\\nDid you mean...'"."""
    text = str(error.args[0] if error.args else error)
    text = text.replace("\\n", " ").replace("\n", " ").replace("\\", "").replace("'", "")
    field, _, rest = " ".join(text.split()).partition(" ")
    return f"{field}. {rest}" if rest else field


def _verbose_in_argv() -> bool:
    return "--verbose" in sys.argv or os.environ.get(VERBOSE_ENV, "") in ("1", "true", "yes")


def _is_user_error(error: Exception) -> bool:
    """ValueError, OSError, and exceptions whose class says `user_error = True` (e.g. Slurm's):
    their messages name the problem and the fix, so one line is all the user needs."""
    return isinstance(error, (ValueError, OSError)) or getattr(error, "user_error", False)


def _peer_died() -> bool:
    rendezvous = sys.modules.get("training.rendezvous")
    return rendezvous is not None and rendezvous.wait_for_dead_peer()


def _is_first_process() -> bool:
    jax = sys.modules.get("jax")
    return jax is None or jax.process_index() == 0


def _verbose() -> bool:
    if os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes"):
        return True
    return "verbose" in flags.FLAGS and bool(flags.FLAGS["verbose"].value)


def _program_name() -> str:
    """`analysis.scaling` for `python -m analysis.scaling`, `train.py` for `python train.py`."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name if spec is not None and spec.name else os.path.basename(sys.argv[0])


def _interrupted_while_importing(kind, value, traceback) -> None:
    """`sys.excepthook` of an entry point: a Ctrl-C before `run` catches it (while the entry
    point imports JAX, which takes seconds) ends in one line, exit 130, like one after."""
    if not issubclass(kind, KeyboardInterrupt) or _verbose_in_argv():
        sys.__excepthook__(kind, value, traceback)
        return
    print(f"{_program_name()}: interrupted", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(INTERRUPTED_EXIT_CODE)


def _run_as_entry_point() -> bool:
    """Whether the program is one of this repository's scripts (not pytest or a notebook)."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return bool(main_file) and os.path.abspath(main_file).startswith(REPO + os.sep)


if _run_as_entry_point():  # entry points import cli first (see train.py)
    sys.excepthook = _interrupted_while_importing
