"""Online (prequential) compression: a model that learns while it codes, with no parameters to ship.

The encoder starts from a seeded initialisation, codes a group of `lanes` consecutive segments of
`segment_bytes` with the current parameters (each segment on its own, as a chunk of the float
path, `models.lm_coder`), then takes `steps` training steps on what it has just coded (those
segments, and `replay` earlier segments drawn by a seeded generator from what both sides have
already seen). The decoder decodes the group with the same parameters, then takes the same steps.
Only the recipe travels in the stream (`Recipe`, with the environment that fixes the floats, as
every float-path stream records it).

Exactness: encoder and decoder run the same compiled coding step (lm_coder's shared programs) and
the same compiled training step (`_train_step`, one program per recipe) on the same values in the
same order, padded to the same shapes, so the parameters after every group are bit-identical on
both sides (`OnlineLearner.checksums` records them for the tests). Floats differ between machines,
so a decoder on another machine, jax version or instruction set is refused up front by the float
path's environment check.

Named `online:SIZE` (a `configs.sizes` preset; `compressors.model_names` resolves it), refined by
`key=value,...` overrides of the recipe's fields (compress.py's --recipe).
"""

import dataclasses
import functools
import hashlib
import json
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from configs import sizes
from models import coding_model, transformer

MAX_SEGMENT_BYTES = 4096
MAX_LANES = 256
MAX_STEPS = 16
MAX_REPLAY = 256


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything that decides an online coder's tables: recorded whole in the stream.

    Attributes:
      size: the architecture, a `configs.sizes` preset (its context is replaced by the segment).
      segment_bytes: bytes per segment: each is coded as one chunk, without earlier context.
      lanes: consecutive segments coded with the same parameters, then trained on together
        (more: faster, a little less adapted).
      steps: training steps after each group.
      replay: earlier segments added to each step's batch (drawn by a seeded generator).
      learning_rate: Adam's step size, constant.
      b1, b2: Adam's moment decays.
      seed: of the initial parameters and of the replay draws.
    """

    size: str = "200K"
    segment_bytes: int = 256
    lanes: int = 16
    steps: int = 2
    replay: int = 16
    learning_rate: float = 3e-3
    b1: float = 0.9
    b2: float = 0.99
    seed: int = 0

    def check(self) -> None:
        """Raises ValueError for a field out of its bounds (a forged stream's recipe too)."""
        bounds = {
            "segment_bytes": (16, MAX_SEGMENT_BYTES),
            "lanes": (1, MAX_LANES),
            "steps": (0, MAX_STEPS),
            "replay": (0, MAX_REPLAY),
            "seed": (0, 2**31 - 1),
        }
        if self.size not in sizes.PRESETS:
            raise ValueError(f"recipe size {self.size!r}: choose one of {list(sizes.PRESETS)}.")
        if sizes.PRESETS[self.size].width > 256:
            raise ValueError(f"recipe size {self.size!r}: online coding takes up to 3.2M.")
        for name, (low, high) in bounds.items():
            value = getattr(self, name)
            if not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"recipe {name}={value!r}: must be an integer in [{low}, {high}].")
        for name in ("learning_rate", "b1", "b2"):
            value = getattr(self, name)
            if not isinstance(value, float) or not 0.0 < value < 1.0 or not math.isfinite(value):
                raise ValueError(f"recipe {name}={value!r}: must lie in (0, 1).")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> "Recipe":
        """A recipe from a stream's record; raises ValueError for unknown, missing or
        out-of-bounds fields."""
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(fields, dict) or set(fields) != names:
            raise ValueError(f"an online recipe has the fields {sorted(names)}")
        typed = {}
        for f in dataclasses.fields(cls):
            value = fields[f.name]
            if (
                f.type in ("float", float)
                and isinstance(value, int)
                and not isinstance(value, bool)
            ):
                value = float(value)
            typed[f.name] = value
        recipe = cls(**typed)
        recipe.check()
        return recipe

    @classmethod
    def parse(cls, size: str, overrides: str = "") -> "Recipe":
        """`online:SIZE` with `key=value,...` overrides.

        Raises:
          ValueError: an unknown key or a value that does not parse or is out of bounds.
        """
        fields = {"size": size}
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        for item in filter(None, (s.strip() for s in overrides.split(","))):
            key, eq, value = item.partition("=")
            if not eq or key not in types or key == "size":
                raise ValueError(
                    f"--recipe takes key=value,... over {sorted(set(types) - {'size'})}; "
                    f"got {item!r}."
                )
            kind = float if types[key] in ("float", float) else int
            try:
                fields[key] = kind(value)
            except ValueError:
                raise ValueError(f"--recipe {key}={value!r}: not a {kind.__name__}.") from None
        recipe = cls(**fields)
        recipe.check()
        return recipe

    def model_config(self) -> transformer.TransformerConfig:
        preset = sizes.PRESETS[self.size]
        return transformer.TransformerConfig(
            num_layers=preset.num_layers,
            width=preset.width,
            num_heads=preset.num_heads,
            context_length=self.segment_bytes,
        )

    def fingerprint(self) -> str:
        """sha256 hex of the recipe: the stream's model fingerprint."""
        text = json.dumps({"online": self.to_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


@functools.partial(jax.jit, static_argnames=("recipe",))
def _train_step(params, opt_state, tokens, lengths, *, recipe: Recipe):
    """One Adam step on the mean -log p of the rows' first `lengths` bytes (rows of length 0:
    padding, no weight). The same program in encoder and decoder."""
    model = transformer.Transformer(recipe.model_config())
    tx = optax.adam(recipe.learning_rate, b1=recipe.b1, b2=recipe.b2)
    valid = (jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]).astype(jnp.float32)

    def loss_fn(p):
        nll = transformer.token_nll(model.apply({"params": p}, tokens), tokens)
        return (nll * valid).sum() / jnp.maximum(valid.sum(), 1.0)

    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


@functools.partial(jax.jit, static_argnames=("recipe",))
def _init(*, recipe: Recipe):
    params = transformer.init_params(recipe.model_config(), jax.random.key(recipe.seed))
    tx = optax.adam(recipe.learning_rate, b1=recipe.b1, b2=recipe.b2)
    return params, tx.init(params)


def params_checksum(params: Any) -> str:
    """sha256 hex of every parameter's bytes, in a fixed order."""
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(params):
        digest.update(np.asarray(leaf).tobytes())
    return digest.hexdigest()


class OnlineLearner:
    """The training side of an online model: its optimiser state, the segments seen so far, and
    the replay generator; `learn` takes the steps after a group (see the module docstring)."""

    def __init__(self, recipe: Recipe, keep_checksums: bool = False):
        self.recipe = recipe
        self.params, self.opt_state = _init(recipe=recipe)
        self._seen: list[np.ndarray] = []
        self._rng = np.random.default_rng(recipe.seed)
        self.checksums: list[str] | None = [] if keep_checksums else None

    def learn(self, segments: list[np.ndarray]) -> Any:
        """Trains on a group's segments (token arrays); returns the new parameters."""
        r = self.recipe
        rows = r.lanes + r.replay
        for _ in range(r.steps):
            batch = list(segments)
            if r.replay and self._seen:
                picks = self._rng.integers(0, len(self._seen), r.replay)
                batch += [self._seen[i] for i in picks]
            tokens = np.zeros((rows, r.segment_bytes), np.int32)
            lengths = np.zeros(rows, np.int32)
            for i, ids in enumerate(batch[:rows]):
                tokens[i, : len(ids)], lengths[i] = ids, len(ids)
            self.params, self.opt_state = _train_step(
                self.params, self.opt_state, tokens, lengths, recipe=r
            )
        self._seen.extend(np.asarray(s, np.uint8) for s in segments)  # byte tokens: a byte each
        if self.checksums is not None:
            self.checksums.append(params_checksum(self.params))
        return self.params


def load(recipe: Recipe, name: str, keep_checksums: bool = False) -> coding_model.CodingModel:
    """The `models.coding_model.CodingModel` of an online recipe: byte tokens, the float
    Transformer of the recipe's size, parameters that `learn` updates after every group."""
    learner = OnlineLearner(recipe, keep_checksums)
    model = coding_model.CodingModel(
        name=name,
        kind="online",
        net=coding_model.FloatTransformer(recipe.model_config()),
        params=learner.params,
        fingerprint_fn=recipe.fingerprint,
        tokenize=lambda data, max_tokens: (np.frombuffer(data, np.uint8).astype(np.int32), 0),
        detokenize=lambda ids, mode: np.asarray(ids, np.uint8).tobytes(),
        columns=(),
        chunk_bytes=recipe.segment_bytes,
        chunk_tokens_fn=lambda chunk: chunk,
        settings={"online": recipe.to_dict()},
        num_params=transformer.num_params(learner.params),
        lanes=recipe.lanes,
        learner=learner,
    )
    return model


class OnlineCompressor:
    """An online model as the evaluator rates it (`online:SIZE` in a compressor list): the whole
    dataset, its chunks joined in order, coded as one stream (`compressors.lm_stream`), like
    the unchunked classical rates; no parameters are sent, so its adjusted rate is its raw rate.
    The evaluator asks of it what it asks of the other model compressors
    (`compressors.language_model.RatedModel`)."""

    NAME = "online"
    COUNTS: tuple[str, ...] = ()
    CHUNKING = "unchunked"  # one stream: not split into chunks, hosts or shards

    def __init__(self, size: str, *, recipe: str = ""):
        self.name, self.recipe = f"online:{size}", Recipe.parse(size, recipe)
        self.overrides = recipe
        self.num_params = 0  # nothing is sent: the decoder rebuilds the model from the recipe
        self.devices = jax.local_devices()[:1]

    @classmethod
    def options(cls, config) -> dict:
        return {"recipe": config.online.recipe}

    @classmethod
    def check(cls, config, name: str) -> None:
        from compressors import model_names

        Recipe.parse(model_names.parse(name)[1], config.online.recipe)

    @classmethod
    def identity(cls, config, name: str, load) -> dict:
        """The recipe's fingerprint (`load` is not called: the recipe is the model)."""
        from compressors import model_names

        recipe = Recipe.parse(model_names.parse(name)[1], config.online.recipe)
        return {"model_sha256": recipe.fingerprint(), "coded_path": "float"}

    def record_fields(self, counts: dict, coded: bool) -> dict:
        return {"coded_path": "float", "recipe": json.dumps(self.recipe.to_dict())}

    def rate(self, chunks, chunk_size: int, *, log_loss=True, coded=True, verify=False,
             progress=None, prefetch: int = 4) -> dict:  # fmt: skip
        """Codes the chunks joined as one stream: {'ideal_bits' (the model's -log2 p as it
        learned), 'coded_bytes' (the stream's bytes, header included), 'coded_seconds'}; with
        `verify` the stream is decoded back and compared.

        Raises:
          compressors.language_model.VerificationError: with `verify`, it did not decode back.
        """
        import os
        import tempfile
        import time

        from compressors import language_model, lm_stream

        del chunk_size, log_loss, coded, prefetch  # one pass gives both; no chunks of its own
        with tempfile.TemporaryDirectory() as work:
            src, packed = os.path.join(work, "data"), os.path.join(work, "data.lmc")
            with open(src, "wb") as f:
                for chunk in chunks():
                    f.write(chunk)
            start = time.perf_counter()
            s = lm_stream.compress_file(self.name, src, packed, recipe=self.overrides)
            seconds = time.perf_counter() - start
            if progress is not None:
                with progress("coded") as bar:
                    if bar is not None:
                        bar.update(s["raw_bytes"])
            if verify:
                lm_stream.decompress_file(None, packed, os.path.join(work, "back"))
                with open(src, "rb") as a, open(os.path.join(work, "back"), "rb") as b:
                    if a.read() != b.read():
                        raise language_model.VerificationError(f"{self.name} did not decode back")
        return {"ideal_bits": s["ideal_bits"], "coded_bytes": s["compressed_bytes"],
                "coded_seconds": seconds}  # fmt: skip
