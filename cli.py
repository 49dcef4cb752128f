"""Command-line plumbing shared by the entry points; defines no flags and imports no JAX.

Every entry point (train.py, train_addition.py, ...) keeps its own flags and a short `main`;
what they all do the same way lives here.
"""

from collections.abc import Callable
from typing import Any

from absl import app, flags, logging


def quiet_logging() -> None:
    """Keeps absl and orbax to warnings (orbax logs every save and restore at INFO)."""
    logging.set_verbosity(logging.WARNING)


def train_main(
    argv: list[str],
    train: Callable[[Any, str], dict],
    report: Callable[[dict], str],
    check_config: Callable[[Any], None] = lambda config: None,
) -> None:
    """The `main` of a trainer: --config and --workdir in, the report of `train` printed.

    Raises:
      app.UsageError: stray arguments, no --workdir, or a config `check_config` refuses.
    """
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}.")
    if flags.FLAGS.workdir is None:
        raise app.UsageError("--workdir is required.")
    check_config(flags.FLAGS.config)
    quiet_logging()
    print(report(train(flags.FLAGS.config, flags.FLAGS.workdir)))
