"""n-digit addition as a language-modelling task with an exactly known entropy.

A sequence is `s a + b = c e` without spaces: the start symbol, the n digits of a, '+', the n
digits of b, '=', the n + 1 digits of c = a + b (zero-padded, most significant digit first) and the
end symbol. For the default n = 8 that is 29 tokens, of which the last 28 are predicted.

a and b are independent and uniform over the n-digit numbers [10^(n-1), 10^n - 1]. That is the
same as drawing each operand's digits independently: the leading digit uniform over 1-9, every
other digit uniform over 0-9. `operand_digit_probs` holds that table and the sampler draws from it,
so the entropy floor below is computed from the very distribution the data comes from.

The floor (aleatoric uncertainty): the conditional entropy H(x_t | x_<t) of each token under the
generator. An operand digit is independent of everything before it, so its conditional entropy is
the entropy of its row of the table; '+', '=', every digit of c and 'e' are functions of the prefix
and carry none. A model's log-loss above this floor (the excess) is what it can still learn.

  python -m data.addition --floor               # nats per predicted token, and per position
  python -m data.addition --floor --num_digits 2
"""

import argparse
import math
from collections.abc import Iterator

import numpy as np

VOCAB = "0123456789se+="  # token id = index; digits map to their own value.
VOCAB_SIZE = len(VOCAB)
START, END, PLUS, EQUALS = (VOCAB.index(ch) for ch in "se+=")
DEFAULT_NUM_DIGITS = 8

# Independent streams per split, so held-out samples never reuse a training (seed, step) stream.
SPLITS = {"train": 0, "eval": 1, "test": 2}


def sequence_length(num_digits: int = DEFAULT_NUM_DIGITS) -> int:
    """Tokens per sequence: s, n digits, +, n digits, =, n + 1 digits, e (29 for n = 8)."""
    _check_num_digits(num_digits)
    return 3 * num_digits + 5


def answer_positions(num_digits: int = DEFAULT_NUM_DIGITS) -> slice:
    """Positions of the n + 1 digits of c in a sequence ([19, 28) for n = 8)."""
    start = 2 * num_digits + 3
    return slice(start, start + num_digits + 1)


def operand_digit_probs(num_digits: int = DEFAULT_NUM_DIGITS) -> np.ndarray:
    """The generator's distribution of each operand digit, [num_digits, 10], most significant first.

    Row 0 is uniform over 1-9 (no leading zero); the other rows are uniform over 0-9. The product
    of the rows is the uniform distribution over [10^(n-1), 10^n - 1].
    """
    _check_num_digits(num_digits)
    probs = np.full((num_digits, 10), 0.1)
    probs[0] = [0.0] + [1.0 / 9.0] * 9
    return probs


def _check_num_digits(num_digits: int) -> None:
    if not isinstance(num_digits, int | np.integer) or num_digits < 1:
        raise ValueError(f"num_digits must be a positive integer, got {num_digits!r}.")


def _entropy_nats(probs: np.ndarray) -> float:
    p = probs[probs > 0]
    return float(-(p * np.log(p)).sum())


def position_entropy_nats(num_digits: int = DEFAULT_NUM_DIGITS) -> np.ndarray:
    """H(x_t | x_<t) under the generator for every position t, [sequence_length] float64, nats.

    Position 0 ('s') is not predicted and gets 0. Operand digits get the entropy of their row of
    `operand_digit_probs` (they are independent of the prefix); every other token is determined by
    the prefix and gets 0.
    """
    probs = operand_digit_probs(num_digits)
    per_digit = np.array([_entropy_nats(row) for row in probs])
    out = np.zeros(sequence_length(num_digits))
    out[1 : 1 + num_digits] = per_digit  # a
    out[2 + num_digits : 2 + 2 * num_digits] = per_digit  # b
    return out


def floor_nats_per_token(num_digits: int = DEFAULT_NUM_DIGITS) -> float:
    """The entropy floor averaged over the predicted positions (all but 's'), nats per token."""
    return float(position_entropy_nats(num_digits)[1:].mean())


def encode(a: np.ndarray, b: np.ndarray, num_digits: int = DEFAULT_NUM_DIGITS) -> np.ndarray:
    """Token ids of `s a + b = (a+b) e`, [batch, sequence_length] int32.

    Raises:
      ValueError: an operand is not an n-digit number.
    """
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    lo, hi = 10 ** (num_digits - 1), 10**num_digits - 1
    for name, x in (("a", a), ("b", b)):
        if x.size and (x.min() < lo or x.max() > hi):
            raise ValueError(f"{name} must lie in [{lo}, {hi}] for {num_digits}-digit addition.")
    tokens = np.empty((a.shape[0], sequence_length(num_digits)), np.int32)
    tokens[:, 0] = START
    tokens[:, 1 : 1 + num_digits] = _digits(a, num_digits)
    tokens[:, 1 + num_digits] = PLUS
    tokens[:, 2 + num_digits : 2 + 2 * num_digits] = _digits(b, num_digits)
    tokens[:, 2 + 2 * num_digits] = EQUALS
    tokens[:, answer_positions(num_digits)] = _digits(a + b, num_digits + 1)
    tokens[:, -1] = END
    return tokens


def decode(tokens: np.ndarray, num_digits: int = DEFAULT_NUM_DIGITS):
    """Inverse of `encode`: returns (a, b, c) int64 arrays [batch]; c is read, not recomputed.

    Raises:
      ValueError: the rows do not have the `s a + b = c e` layout.
    """
    tokens = np.asarray(tokens)
    n = num_digits
    if tokens.ndim != 2 or tokens.shape[1] != sequence_length(n):
        raise ValueError(f"Expected [batch, {sequence_length(n)}] tokens, got {tokens.shape}.")
    fixed = {0: START, 1 + n: PLUS, 2 + 2 * n: EQUALS, 3 * n + 4: END}
    digit_cols = np.ones(tokens.shape[1], bool)
    digit_cols[list(fixed)] = False
    if (
        any((tokens[:, i] != v).any() for i, v in fixed.items())
        or (tokens[:, digit_cols] > 9).any()
    ):
        raise ValueError("Rows are not of the form s a + b = c e.")
    return (
        _number(tokens[:, 1 : 1 + n]),
        _number(tokens[:, 2 + n : 2 + 2 * n]),
        _number(tokens[:, answer_positions(n)]),
    )


def to_text(tokens: np.ndarray) -> list[str]:
    """Rows of token ids as strings, e.g. 's12345678+87654321=099999999e'."""
    return ["".join(VOCAB[t] for t in row) for row in np.asarray(tokens)]


def _digits(x: np.ndarray, width: int) -> np.ndarray:
    """Decimal digits of x, most significant first, zero-padded: [batch, width]."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return (x[:, None] // powers) % 10


def _number(digits: np.ndarray) -> np.ndarray:
    powers = 10 ** np.arange(digits.shape[1] - 1, -1, -1, dtype=np.int64)
    return (digits.astype(np.int64) * powers).sum(axis=1)


def sample_operands(
    rng: np.random.Generator, batch_size: int, num_digits: int = DEFAULT_NUM_DIGITS
) -> tuple[np.ndarray, np.ndarray]:
    """Draws (a, b), each [batch_size] int64, digit by digit from `operand_digit_probs`."""
    cdf = np.cumsum(operand_digit_probs(num_digits), axis=1)  # [n, 10]
    cdf[:, -1] = 1.0  # guard against round-off leaving u > cdf[-1]

    def draw():
        u = rng.random((batch_size, num_digits))
        digits = (u[:, :, None] >= cdf[None, :, :]).sum(axis=2)  # inverse CDF per digit
        return _number(digits)

    return draw(), draw()


def sample_batch(
    batch_size: int,
    seed: int,
    step: int,
    num_digits: int = DEFAULT_NUM_DIGITS,
    split: str = "train",
) -> np.ndarray:
    """Returns a fresh batch [batch_size, sequence_length] int32 for (split, seed, step).

    A pure function of its arguments, like `data.batches.sample_windows`: a resumed run draws the
    batches it would have drawn, and the splits' streams are disjoint by construction.

    Raises:
      ValueError: unknown split.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}.")
    rng = np.random.default_rng([SPLITS[split], seed, step])
    return encode(*sample_operands(rng, batch_size, num_digits), num_digits)


def batches(
    batch_size: int,
    seed: int,
    num_digits: int = DEFAULT_NUM_DIGITS,
    split: str = "train",
    start_step: int = 0,
) -> Iterator[np.ndarray]:
    """Yields `sample_batch(batch_size, seed, step, ...)` for steps start_step, start_step + 1..."""
    step = start_step
    while True:
        yield sample_batch(batch_size, seed, step, num_digits, split)
        step += 1


def _describe_floor(num_digits: int) -> str:
    per_position = position_entropy_nats(num_digits)
    floor = floor_nats_per_token(num_digits)
    n = num_digits
    labels = ["s"] + [f"a{i}" for i in range(1, n + 1)] + ["+"]
    labels += [f"b{i}" for i in range(1, n + 1)] + ["="]
    labels += [f"c{i}" for i in range(n + 1)] + ["e"]
    lines = [
        f"{n}-digit addition, {sequence_length(n)} tokens, {sequence_length(n) - 1} predicted.",
        f"Entropy floor: {floor:.6f} nats per predicted token "
        f"({floor / math.log(2):.6f} bits); {per_position.sum():.6f} nats per sequence.",
        "Per position (nats; 's' is not predicted):",
    ]
    lines += [
        f"  {t:3d} {label:>4s} {h:.6f}"
        for t, (label, h) in enumerate(zip(labels, per_position, strict=True))
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--floor", action="store_true", help="print the entropy floor")
    parser.add_argument("--num_digits", type=int, default=DEFAULT_NUM_DIGITS)
    parser.add_argument("--examples", type=int, default=0, help="print N sample sequences")
    args = parser.parse_args(argv)
    if not args.floor and not args.examples:
        parser.error("nothing to do: pass --floor and/or --examples N")
    if args.floor:
        print(_describe_floor(args.num_digits))
    if args.examples:
        rows = sample_batch(args.examples, seed=0, step=0, num_digits=args.num_digits)
        print("\n".join(to_text(rows)))


if __name__ == "__main__":
    main()
