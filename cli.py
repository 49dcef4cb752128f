"""Command-line plumbing shared by the entry points; defines no flags and imports no JAX.

Every entry point (train.py, train_addition.py, ...) keeps its own flags and a short `main`;
what they all do the same way lives here.
"""

import difflib
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from absl import app, flags, logging


def quiet_logging() -> None:
    """Keeps absl's and orbax's log to errors (orbax logs every save and restore at INFO and
    warns about read-only restores), unless --verbose or LMC_VERBOSE=1 asks for everything."""
    logging.set_verbosity(logging.INFO if _verbose() else logging.ERROR)


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


def retired_flag(name: str, replacement: str) -> None:
    """Defines --NAME, a flag the program no longer takes: given, the command fails in one line
    naming what replaced it (exit 2)."""
    flags.DEFINE_string(name, None, f"Replaced by {replacement}.")
    flags.register_validator(name, lambda value: value is None, f"--{name} is now {replacement}")


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

    * `--config=configs/x.py[:arg]` is found relative to the repository when it is not relative
      to the current directory. `define_flags` runs first, with --verbose added.
    * A config override naming no field (`--config.train.stepz=1`, with config_flags' "did you
      mean"), a required flag left out, a flag that does not parse, and app.UsageError from
      `main`: `NAME: message (see --help)`, exit 2.
    * ValueError and OSError from `main`, and exceptions whose class has `user_error = True`:
      `NAME: message`, exit 1. Their messages should name the problem and the fix.
    * --help (also -h, --helpshort): the main module's docstring and its own flags on stdout,
      exit 0 (absl exits 1). KeyboardInterrupt: `NAME: interrupted`, exit 130.

    With --verbose or LMC_VERBOSE=1 the errors from `main` and config overrides propagate with
    their tracebacks. Other exceptions always do: they are bugs, not a user's mistake.

    Args:
      main: takes argv (the program name, then the arguments left after the flags).
      name: the program in messages; default the module run by `python -m`, or the script.
      define_flags: defines the entry point's flags.
    """
    name = name or program_name()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on, KeyboardInterrupt

    def fail(message: str, status: int) -> NoReturn:
        hint = " (see --help)" if status == 2 else ""
        print(f"{name}: {' '.join(str(message).split())}{hint}", file=sys.stderr)
        sys.exit(status)

    def parse_flags(parse: Callable[[], Any], catch=(AttributeError, KeyError, flags.Error)):
        try:
            return parse()
        except catch as e:  # config_flags checks the overrides as it parses a config
            if _verbose() and not isinstance(e, flags.Error):
                raise
            fail(_flag_error(e), 2)

    sys.argv[1:] = [_resolve_config_path(arg) for arg in sys.argv[1:]]
    if define_flags is not None:
        parse_flags(define_flags, (AttributeError, KeyError))  # parses default configs
    define_verbose_flag()

    def parse(argv: list[str]) -> list[str]:
        args = argv[1 : argv.index("--") if "--" in argv else len(argv)]
        if any(a in _HELP for a in args):  # absl's --help exits with status 1; asking is no error
            app.usage(shorthelp=True, writeto_stdout=True)
            print("\nTry --helpfull to get a list of all flags.")
            sys.exit(0)
        return parse_flags(lambda: flags.FLAGS(argv))

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
    path, colon, config_arg = arg.removeprefix("--config=").partition(":")
    if not arg.startswith("--config=") or not path.endswith(".py") or os.path.exists(path):
        return arg
    if not os.path.exists(repo_path(path)):
        return arg
    return f"--config={repo_path(path)}{colon}{config_arg}"


def _causes(error: BaseException) -> list[BaseException]:
    """`error`, the exception it was raised while handling, and so on, as Python shows them."""
    chain = [error]
    while error := error.__cause__ or (None if error.__suppress_context__ else error.__context__):
        chain.append(error)
    return chain


def _raised_by(error: BaseException) -> Any:
    """The object whose method raised `error` (`self` in the frame it was raised in), if any."""
    traceback = error.__traceback__
    while traceback is not None and traceback.tb_next is not None:
        traceback = traceback.tb_next
    return traceback.tb_frame.f_locals.get("self") if traceback is not None else None


def _flag_error(error: Exception) -> str:
    """What was wrong with the flags, from where absl and ml_collections raised `error`."""
    from ml_collections import ConfigDict
    from ml_collections.config_flags.config_flags import ConfigFileFlagParser

    chain = _causes(error)
    first, holder = chain[-1], _raised_by(chain[-1])
    if isinstance(first, KeyError) and isinstance(holder, ConfigDict):  # the lookup of a field
        close = difflib.get_close_matches(
            str(first.args[0]), [str(k) for k in holder.keys()], 1, 0.75
        )
        hint = f'. Did you mean "{close[0]}"?' if close else ""
        return f"no such config field: {first.args[0]}{hint}"
    for outer in chain:  # a config file's error, re-raised with the file's traceback as message
        if isinstance(_raised_by(outer), ConfigFileFlagParser) and outer.__context__:
            return str(outer.__context__)
    for name in flags.FLAGS:  # a required flag (its validator refuses None) left out
        flag = flags.FLAGS[name]
        if flag.value is None and any(v.message in str(error) for v in flag.validators):
            return f"--{flag.name} is required"
    return str(error)


def _is_user_error(error: Exception) -> bool:
    """ValueError, OSError, and exceptions whose class says `user_error = True` (e.g. Slurm's):
    their messages name the problem and the fix, so one line is all the user needs."""
    return isinstance(error, (ValueError, OSError)) or getattr(error, "user_error", False)


def _peer_died() -> bool:
    rendezvous = sys.modules.get("training.rendezvous")
    return rendezvous is not None and rendezvous.wait_for_dead_peer()


def _verbose() -> bool:
    """LMC_VERBOSE=1 or --verbose (read from the command line until the flags are parsed)."""
    if os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes"):
        return True
    if not flags.FLAGS.is_parsed():
        return "--verbose" in sys.argv
    return "verbose" in flags.FLAGS and bool(flags.FLAGS["verbose"].value)


def program_name() -> str:
    """`analysis.scaling` for `python -m analysis.scaling`, `train.py` for `python train.py`."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name if spec is not None and spec.name else os.path.basename(sys.argv[0])


def _interrupted_while_importing(kind, value, traceback) -> None:
    """`sys.excepthook` of an entry point: a Ctrl-C before `run` catches it (while the entry
    point imports JAX, which takes seconds) ends in one line, exit 130, like one after."""
    if not issubclass(kind, KeyboardInterrupt) or _verbose():
        sys.__excepthook__(kind, value, traceback)
        return
    print(f"{program_name()}: interrupted", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(INTERRUPTED_EXIT_CODE)


def _run_as_entry_point() -> bool:
    """Whether the program is one of this repository's scripts (not pytest or a notebook)."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return bool(main_file) and os.path.abspath(main_file).startswith(REPO + os.sep)


def _interrupted_at_once(signum, frame) -> None:
    """SIGINT before `run`: ends the process in one line at once. A KeyboardInterrupt raised
    here could land in a callback (a garbage-collection hook of JAX's) and be ignored."""
    del signum, frame
    if _verbose():
        raise KeyboardInterrupt
    print(f"{program_name()}: interrupted", file=sys.stderr, flush=True)
    os._exit(INTERRUPTED_EXIT_CODE)


if _run_as_entry_point():  # entry points import cli first (see train.py)
    sys.excepthook = _interrupted_while_importing
    signal.signal(signal.SIGINT, _interrupted_at_once)
