"""Command-line plumbing shared by the entry points; defines no flags and imports no JAX.

Not absl's `app.run` alone: it ends a user's mistake in a traceback or a "FATAL Flags parsing
error" and exits 1 on --help. `run` catches the errors where absl and ml_collections raise them
and ends each in one line; entry points import this module first, so a Ctrl-C while JAX imports
ends in one line too.
"""

import os
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from absl import app, flags, logging

VERBOSE_ENV = "LMC_VERBOSE"  # LMC_VERBOSE=1 shows tracebacks, like --verbose
INTERRUPTED_EXIT_CODE = 130  # what a shell reports for a Ctrl-C
_HELP = ("--help", "-help", "--helpshort", "-helpshort", "-h", "-?")
REPO = os.path.dirname(os.path.abspath(__file__))


def quiet_logging() -> None:
    """absl's and orbax's log (every save and restore) at errors only, unless verbose."""
    logging.set_verbosity(logging.INFO if _verbose() else logging.ERROR)


def no_arguments(argv: list[str], hint: str = "") -> None:
    """Raises app.UsageError naming the positional arguments left in argv, and `hint` if any."""
    if len(argv) > 1:
        raise app.UsageError(
            f"Unexpected arguments: {' '.join(argv[1:])}" + (f": {hint}" if hint else ".")
        )


def numbers(values: list[str], flag: str, kind: type = float, example: str = "") -> list:
    """A list flag's values as numbers of `kind`; ValueError naming the flag and an example."""
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
    """Defines --NAME, which the program no longer takes: given, one line names `replacement`."""
    flags.DEFINE_string(name, None, f"Replaced by {replacement}.")
    flags.register_validator(name, lambda value: value is None, f"--{name} is now {replacement}")


def run(main: Callable[[list[str]], Any], define_flags: Callable[[], None] | None = None):
    """`app.run(main)` with `define_flags` run first, ending a user's error in one line.

    `--config=configs/x.py[:arg]` is also found relative to the repository. Flags that do not
    parse, a config override naming no field, a required flag left out and app.UsageError:
    `PROGRAM: message (see --help)`, exit 2. ValueError, OSError and exceptions whose class has
    `user_error = True` from `main`: `PROGRAM: message`, exit 1. --help: the main module's flags
    on stdout, exit 0. Ctrl-C: `PROGRAM: interrupted`, exit 130. Other exceptions are bugs and
    keep their tracebacks, as every error does with --verbose or LMC_VERBOSE=1.
    """

    def fail(message: str, status: int) -> NoReturn:
        hint = " (see --help)" if status == 2 else ""
        print(f"{program_name()}: {' '.join(str(message).split())}{hint}", file=sys.stderr)
        sys.exit(status)

    def parse_flags(parse: Callable[[], Any], catch=(AttributeError, KeyError, flags.Error)):
        try:
            return parse()
        except catch as e:  # config_flags applies the overrides as it parses a config
            if _verbose() and not isinstance(e, flags.Error):
                raise
            fail(_flag_error(e), 2)

    sys.argv[1:] = [_resolve_config_path(arg) for arg in sys.argv[1:]]
    if define_flags is not None:
        parse_flags(define_flags, (AttributeError, KeyError))  # parses default configs
    if "verbose" not in flags.FLAGS:  # filed under the main module: its --help lists it
        help_ = f"On an error, show the traceback instead of one line (or set {VERBOSE_ENV}=1)."
        flags.DEFINE_bool("verbose", False, help_, module_name=sys.argv[0])

    def parse(argv: list[str]) -> list[str]:
        if any(a in _HELP for a in argv[1 : argv.index("--") if "--" in argv else None]):
            app.usage(shorthelp=True, writeto_stdout=True)
            print("\nTry --helpfull to get a list of all flags.")
            sys.exit(0)
        return parse_flags(lambda: flags.FLAGS(argv))

    def guarded(argv: list[str]) -> Any:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # now a KeyboardInterrupt
        sys.unraisablehook = _unraisable
        try:
            return main(argv)
        except (app.UsageError, KeyboardInterrupt, Exception) as e:
            if _verbose():
                raise
            if isinstance(e, app.UsageError):
                fail(str(e), 2)
            if isinstance(e, KeyboardInterrupt):
                fail("interrupted", INTERRUPTED_EXIT_CODE)
            if not (isinstance(e, (ValueError, OSError)) or getattr(e, "user_error", False)):
                rendezvous = sys.modules.get("training.rendezvous")  # a multi-process run's
                if rendezvous is not None and rendezvous.wait_for_dead_peer():
                    fail("stopped: another process of the run died", 1)
                raise
            fail(str(e) or type(e).__name__, 1)

    app.run(guarded, flags_parser=parse)


def _resolve_config_path(arg: str) -> str:
    """'--config=configs/x.py:a' -> the repository's configs/x.py when not found from here."""
    config = arg.removeprefix("--config=")
    path = config.partition(":")[0]
    if config != arg and not os.path.exists(path) and os.path.exists(repo_path(path)):
        return f"--config={repo_path(config)}"
    return arg


def _flag_error(error: Exception) -> str:
    """What was wrong with the flags, from the exceptions absl and ml_collections chained."""
    from ml_collections.config_flags.config_flags import ConfigFileFlagParser

    chain = [error]
    while e := chain[-1].__cause__ or chain[-1].__context__:
        chain.append(e)
    if not isinstance(error, flags.Error):  # a field lookup; ml_collections adds "Did you mean"
        hints = [line for e in chain if e.args for line in str(e.args[0]).splitlines()[1:]]
        return f"no such config field: {chain[-1].args[0]}" + "".join(f". {h}" for h in hints[:1])
    for outer in chain:  # a config file's error, re-raised with its traceback as the message
        frame = outer.__traceback__
        while frame is not None and frame.tb_next is not None:
            frame = frame.tb_next
        raiser = frame.tb_frame.f_locals.get("self") if frame is not None else None
        if isinstance(raiser, ConfigFileFlagParser) and outer.__context__:
            return str(outer.__context__)
    for flag in map(flags.FLAGS.__getitem__, flags.FLAGS):
        if flag.value is None and any(v.message in str(error) for v in flag.validators):
            return f"--{flag.name} is required"  # a required flag's validator refuses None
    return str(error)


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


def _interrupted_at_once(signum, frame) -> None:
    """SIGINT before `main` starts (JAX imports for seconds): one line at once. A raised
    KeyboardInterrupt could land in a callback (a garbage-collection hook of JAX's) and be lost."""
    if _verbose():
        raise KeyboardInterrupt
    _exit_interrupted()


def _unraisable(unraisable) -> None:
    """`sys.unraisablehook`: a Ctrl-C's KeyboardInterrupt raised where Python only reports it and
    goes on (a garbage-collection callback of JAX's, a `__del__`) ends the program in one line,
    exit 130, instead of being lost while the command runs to its end."""
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        return sys.__unraisablehook__(unraisable)
    if _verbose():
        sys.__unraisablehook__(unraisable)
    _exit_interrupted()


def _exit_interrupted() -> NoReturn:
    """`PROGRAM: interrupted` and exit 130 at once, whatever the program was doing."""
    print(f"{program_name()}: interrupted", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(INTERRUPTED_EXIT_CODE)


_MAIN_FILE = getattr(sys.modules.get("__main__"), "__file__", None)
if _MAIN_FILE and os.path.abspath(_MAIN_FILE).startswith(REPO + os.sep):  # ours, not pytest
    signal.signal(signal.SIGINT, _interrupted_at_once)
    sys.unraisablehook = _unraisable
