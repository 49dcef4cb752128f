"""Training windows and evaluation windows over a token array."""

import numpy as np


def sample_windows(
    tokens: np.ndarray, batch_size: int, seq_len: int, seed: int, step: int
) -> np.ndarray:
    """Returns random windows [batch_size, seq_len] int32 for training step `step`.

    The stream is a pure function of (seed, step): a run restored at step s draws exactly the
    batches it would have drawn without the interruption, so the sampler's whole state is
    (seed, next step), which the trainer checkpoints.

    Raises:
      ValueError: the token array is shorter than one window.
    """
    if len(tokens) < seq_len:
        raise ValueError(
            f"The training split has {len(tokens)} tokens, fewer than one window of {seq_len}: "
            "use a larger corpus or a shorter --config.model.context_length."
        )
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(tokens) - seq_len + 1, size=batch_size)
    return np.stack([np.asarray(tokens[s : s + seq_len]) for s in starts]).astype(np.int32)


def eval_windows(
    tokens: np.ndarray, seq_len: int, max_tokens: int, batch_multiple: int
) -> tuple[np.ndarray, np.ndarray]:
    """Splits the head of `tokens` into non-overlapping windows for evaluation.

    Args:
      tokens: [num_tokens].
      seq_len: window length.
      max_tokens: at most this many tokens are used (whole windows only).
      batch_multiple: the window count is padded to a multiple of this with zero-weight rows.

    Returns:
      (windows [num_rows, seq_len] int32, weights [num_rows] float32, 1 for real windows).

    Raises:
      ValueError: no whole window fits.
    """
    num = min(len(tokens), max_tokens) // seq_len
    if num == 0:
        raise ValueError(f"The evaluation split has fewer than {seq_len} tokens.")
    windows = np.asarray(tokens[: num * seq_len]).reshape(num, seq_len).astype(np.int32)
    pad = -num % batch_multiple
    windows = np.concatenate([windows, np.zeros((pad, seq_len), np.int32)])
    weights = np.concatenate([np.ones(num, np.float32), np.zeros(pad, np.float32)])
    return windows, weights
