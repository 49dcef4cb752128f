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

With `order` > 0 (the default) the Transformer is mixed with count models of byte contexts of
orders 0..`order` (`compressors.online_mix`): counts grow during a group (`live`) or after it,
and the training steps train the mixer (on the group's segments, with the counts the coder saw)
and the Transformer. `order=0` codes with the Transformer alone, as version-5 streams did (whose
recipes, without the count models' fields, still decode).

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

from compressors import online_mix
from configs import sizes
from models import coding_model, lm_coder, transformer

MAX_SEGMENT_BYTES = 4096
MAX_LANES = 256
MAX_STEPS = 16
MAX_REPLAY = 256
MAX_ORDER = 8
TABLE_BITS = (8, 18)  # 2**18 rows of 256 int32 counts: 256 MiB per order at most
# The count models' fields: a recipe without them (a version-5 stream's) has them off.
MIX_FIELDS = ("order", "table_bits", "live", "mix_learning_rate")
# A run's start (`online:RUN_DIR`): a recipe without them (a seeded start's) has them ''.
START_FIELDS = ("start", "architecture")


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
      order: the count models' highest context order (0: the Transformer alone).
      table_bits: log2 of the rows of each hashed count table (orders >= 2).
      live: 1: the counts grow at every step of a group by every lane's previous byte; 0:
        they are frozen during a group and grow after it.
      mix_learning_rate: Adam's step size for the mixer's weights.
      start: for `online:RUN_DIR`, the sha256 fingerprint of the training run whose parameters
        start the Transformer ('' : a seeded start); `size` is then ''.
      architecture: with `start`, the run's architecture (JSON of its `TransformerConfig`, the
        context replaced by `segment_bytes`).
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
    order: int = 4
    table_bits: int = 18
    live: int = 1
    mix_learning_rate: float = 0.008
    start: str = ""
    architecture: str = ""

    def check(self) -> None:
        """Raises ValueError for a field out of its bounds (a forged stream's recipe too)."""
        bounds = {
            "segment_bytes": (16, MAX_SEGMENT_BYTES),
            "lanes": (1, MAX_LANES),
            "steps": (0, MAX_STEPS),
            "replay": (0, MAX_REPLAY),
            "seed": (0, 2**31 - 1),
            "order": (0, MAX_ORDER),
            "table_bits": TABLE_BITS,
            "live": (0, 1),
        }
        if self.start or self.architecture:
            self._check_start()
        elif self.size not in sizes.PRESETS:
            raise ValueError(f"recipe size {self.size!r}: choose one of {list(sizes.PRESETS)}.")
        elif sizes.PRESETS[self.size].width > 256:
            raise ValueError(f"recipe size {self.size!r}: online coding takes up to 3.2M.")
        for name, (low, high) in bounds.items():
            value = getattr(self, name)
            if not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"recipe {name}={value!r}: must be an integer in [{low}, {high}].")
        for name in ("learning_rate", "b1", "b2", "mix_learning_rate"):
            value = getattr(self, name)
            if not isinstance(value, float) or not 0.0 < value < 1.0 or not math.isfinite(value):
                raise ValueError(f"recipe {name}={value!r}: must lie in (0, 1).")

    def _check_start(self) -> None:
        """A run's start: its fingerprint and an architecture within online coding's bounds."""
        if not isinstance(self.start, str) or len(self.start) != 64 or self.size != "":
            raise ValueError("recipe start: a run's sha256 fingerprint (64 hex digits), no size.")
        try:
            int(self.start, 16)
            fields = json.loads(self.architecture)
            config = transformer.TransformerConfig(**fields)
        except (ValueError, TypeError) as e:
            raise ValueError(f"recipe architecture: not a Transformer's ({e}).") from None
        heads = config.num_heads
        if not (
            config.vocab_size == 256
            and 1 <= config.num_layers <= 8
            and 8 <= config.width <= 256
            and 1 <= heads <= config.width
            and config.width % heads == 0
            and 1 <= config.mlp_ratio <= 8
            and config.context_length == self.segment_bytes
            and config.dtype == "float32"
        ):
            raise ValueError(
                "recipe architecture: online coding takes byte-level runs of up to 8 layers of "
                "width 256, in float32, their context the segment."
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> "Recipe":
        """A recipe from a stream's record; raises ValueError for unknown, missing or
        out-of-bounds fields."""
        names = {f.name for f in dataclasses.fields(cls)}
        if isinstance(fields, dict) and not set(START_FIELDS) & set(fields):
            fields = {**fields, "start": "", "architecture": ""}  # a seeded start's record
        if isinstance(fields, dict) and set(fields) == names - set(MIX_FIELDS):
            off = {name: getattr(cls, name) for name in MIX_FIELDS}
            fields = {**fields, **off, "order": 0}  # a version-5 stream's: the Transformer alone
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
    def parse(
        cls,
        size: str,
        overrides: str = "",
        start: str = "",
        base: transformer.TransformerConfig | None = None,
    ) -> "Recipe":
        """`online:SIZE` with `key=value,...` overrides; for `online:RUN_DIR`, size '', the
        run's fingerprint as `start` and its architecture as `base`.

        Raises:
          ValueError: an unknown key or a value that does not parse or is out of bounds.
        """
        fields = {"size": size}
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        fixed = {"size", *START_FIELDS}
        for item in filter(None, (s.strip() for s in overrides.split(","))):
            key, eq, value = item.partition("=")
            if not eq or key not in types or key in fixed:
                raise ValueError(
                    f"--recipe takes key=value,... over {sorted(set(types) - fixed)}; got {item!r}."
                )
            kind = float if types[key] in ("float", float) else int
            try:
                fields[key] = kind(value)
            except ValueError:
                raise ValueError(f"--recipe {key}={value!r}: not a {kind.__name__}.") from None
        if base is not None:
            segment = fields.get("segment_bytes", cls.segment_bytes)
            config = dataclasses.replace(base, context_length=segment, dtype="float32")
            architecture = json.dumps(dataclasses.asdict(config), sort_keys=True)
            fields |= {"start": start, "architecture": architecture}
        recipe = cls(**fields)
        recipe.check()
        return recipe

    def model_config(self) -> transformer.TransformerConfig:
        if self.architecture:
            return transformer.TransformerConfig(**json.loads(self.architecture))
        preset = sizes.PRESETS[self.size]
        return transformer.TransformerConfig(
            num_layers=preset.num_layers,
            width=preset.width,
            num_heads=preset.num_heads,
            context_length=self.segment_bytes,
        )

    def mix_spec(self) -> online_mix.MixSpec:
        return online_mix.MixSpec(self.order, self.table_bits)

    def fingerprint(self) -> str:
        """sha256 hex of the recipe: the stream's model fingerprint (without the count models'
        fields when they are off, as version-5 streams recorded it)."""
        fields = self.to_dict()
        if not self.start:  # as a seeded start's streams recorded it before runs could start
            fields = {k: v for k, v in fields.items() if k not in START_FIELDS}
        if not self.order:
            fields = {k: v for k, v in fields.items() if k not in MIX_FIELDS}
        text = json.dumps({"online": fields}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def _adams(recipe: Recipe):
    """The Transformer's and the mixer's optimisers."""
    adam = functools.partial(optax.adam, b1=recipe.b1, b2=recipe.b2)
    return adam(recipe.learning_rate), adam(recipe.mix_learning_rate)


@functools.partial(jax.jit, static_argnames=("recipe",))
def _init(start=None, *, recipe: Recipe):
    """The parameters before any group and their optimisers' states: the Transformer's
    (`start`, a run's, or seeded) alone for `order` 0, else the mixture's ({'tf', 'mix',
    'counts'}) with the Transformer's and the mixer's states."""
    tf = start
    if tf is None:
        tf = transformer.init_params(recipe.model_config(), jax.random.key(recipe.seed))
    tx_tf, tx_mix = _adams(recipe)
    if not recipe.order:
        return tf, tx_tf.init(tf)
    spec = recipe.mix_spec()
    mixer = online_mix.init_mixer(spec)
    params = {"tf": tf, "mix": mixer, "counts": online_mix.init_counts(spec)}
    return params, (tx_tf.init(tf), tx_mix.init(mixer))


@functools.partial(jax.jit, static_argnames=("recipe",))
def _train_step(params, opt_state, tokens, lengths, *, recipe: Recipe):
    """One Adam step on the mean -log p of the rows' first `lengths` bytes (rows of length 0:
    padding, no weight). The same program in encoder and decoder."""
    model = transformer.Transformer(recipe.model_config())
    tx = _adams(recipe)[0]
    valid = (jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]).astype(jnp.float32)

    def loss_fn(p):
        nll = transformer.token_nll(model.apply({"params": p}, tokens), tokens)
        return (nll * valid).sum() / jnp.maximum(valid.sum(), 1.0)

    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


@functools.partial(jax.jit, static_argnames=("recipe",))
def _mixture_train_step(trained, opt_state, tokens, lengths, counted, *, recipe: Recipe):
    """One Adam step of the Transformer and the mixer ({'tf', 'mix'} in `trained`) on the
    mixture's mean -log p of the group's rows (the first `lanes`, with `counted`: what their
    count rows were, interpolated, as they were coded, `_group_rows`) plus the Transformer's own
    on every row (replayed ones too, whose counts already hold them). The same program in
    encoder and decoder."""
    config = recipe.model_config()
    tx_tf, tx_mix = _adams(recipe)
    valid = (jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]).astype(jnp.float32)
    fresh = tokens[: recipe.lanes]

    def loss_fn(trained):
        tf = transformer.Transformer(config).apply({"params": trained["tf"]}, tokens)
        tf_nll = (transformer.token_nll(tf, tokens) * valid).sum() / jnp.maximum(valid.sum(), 1)
        tf_fresh = tf[: recipe.lanes].reshape(fresh.size, -1)
        mixed = online_mix.mix_interpolated(trained["mix"], tf_fresh, *counted)
        nll = transformer.token_nll(mixed.reshape(*fresh.shape, -1), fresh)
        fresh_valid = valid[: recipe.lanes]
        return tf_nll + (nll * fresh_valid).sum() / jnp.maximum(fresh_valid.sum(), 1)

    grads = jax.grad(loss_fn)(trained)
    up_tf, state_tf = tx_tf.update(grads["tf"], opt_state[0], trained["tf"])
    up_mix, state_mix = tx_mix.update(grads["mix"], opt_state[1], trained["mix"])
    new = {
        "tf": optax.apply_updates(trained["tf"], up_tf),
        "mix": optax.apply_updates(trained["mix"], up_mix),
    }
    return new, (state_tf, state_mix)


@functools.partial(jax.jit, static_argnames=("recipe",), donate_argnums=(0,))
def _group_rows(counts, tokens, lengths, *, recipe: Recipe):
    """What the count rows a group was coded with say (`online_mix.interpolate`'s log-probs and
    totals) and the count tables with its segments added (in place: the old tables are
    donated), by `online_mix.group_rows`."""
    spec = recipe.mix_spec()
    rows, counts = online_mix.group_rows(spec, bool(recipe.live), counts, tokens, lengths)
    return online_mix.interpolate(rows), counts


def params_checksum(params: Any) -> str:
    """sha256 hex of every parameter's bytes, in a fixed order."""
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(params):
        digest.update(np.asarray(leaf).tobytes())
    return digest.hexdigest()


def _padded(segments: list[np.ndarray], rows: int, length: int) -> tuple:
    """(int32 tokens [rows, length], lengths [rows]) of at most `rows` segments, zero-padded as
    the coder pads a group (`models.lm_coder.group_chunks`)."""
    group = next(lm_coder.group_chunks(segments, rows, length))
    return group.tokens, group.lengths


class OnlineLearner:
    """The training side of an online model: its optimiser state, the segments seen so far, and
    the replay generator; `learn` takes the steps after a group (see the module docstring)."""

    def __init__(self, recipe: Recipe, keep_checksums: bool = False, start: Any = None):
        self.recipe = recipe
        self.params, self.opt_state = _init(start, recipe=recipe)
        self._seen: list[np.ndarray] = []
        self._rng = np.random.default_rng(recipe.seed)
        self.checksums: list[str] | None = [] if keep_checksums else None

    def learn(self, segments: list[np.ndarray]) -> Any:
        """Trains on a group's segments (token arrays); returns the new parameters."""
        r = self.recipe
        if r.order:  # the counts the group was coded with, and the group's added
            tokens, lengths = _padded(segments, r.lanes, r.segment_bytes)
            counted, counts = _group_rows(self.params["counts"], tokens, lengths, recipe=r)
            self.params = {"tf": self.params["tf"], "mix": self.params["mix"]}  # counts donated
        for _ in range(r.steps):
            batch = list(segments)
            if r.replay and self._seen:
                picks = self._rng.integers(0, len(self._seen), r.replay)
                batch += [self._seen[i] for i in picks]
            tokens, lengths = _padded(batch, r.lanes + r.replay, r.segment_bytes)
            if r.order:
                self.params, self.opt_state = _mixture_train_step(
                    self.params, self.opt_state, tokens, lengths, counted, recipe=r
                )
            else:
                self.params, self.opt_state = _train_step(
                    self.params, self.opt_state, tokens, lengths, recipe=r
                )
        if r.order:
            self.params = {**self.params, "counts": counts}
        self._seen.extend(np.asarray(s, np.uint8) for s in segments)  # byte tokens: a byte each
        if self.checksums is not None:
            self.checksums.append(params_checksum(self.params))
        return self.params


def load(
    recipe: Recipe, name: str, keep_checksums: bool = False, start: Any = None
) -> coding_model.CodingModel:
    """The `models.coding_model.CodingModel` of an online recipe: byte tokens, the float
    Transformer of the recipe's size (`start`: its first parameters, a run's), parameters that
    `learn` updates after every group."""
    learner = OnlineLearner(recipe, keep_checksums, start)
    if recipe.order:
        net = online_mix.MixtureNet(recipe.model_config(), recipe.mix_spec(), bool(recipe.live))
        trained = {k: v for k, v in learner.params.items() if k != "counts"}
    else:
        net, trained = coding_model.FloatTransformer(recipe.model_config()), learner.params
    model = coding_model.CodingModel(
        name=name,
        kind="online",
        net=net,
        params=learner.params,
        fingerprint_fn=recipe.fingerprint,
        tokenize=lambda data, max_tokens: (np.frombuffer(data, np.uint8).astype(np.int32), 0),
        detokenize=lambda ids, mode: np.asarray(ids, np.uint8).tobytes(),
        columns=(),
        chunk_bytes=recipe.segment_bytes,
        chunk_tokens_fn=lambda chunk: chunk,
        settings={"online": recipe.to_dict()},
        num_params=transformer.num_params(trained),
        lanes=recipe.lanes,
        learner=learner,
    )
    return model


def load_from_run(
    run: coding_model.CodingModel, overrides: str = "", recipe: Recipe | None = None
) -> coding_model.CodingModel:
    """`online:RUN_DIR`: an online model whose Transformer starts from a training run's
    parameters (`run`, loaded by `compressors.model_names`), with `overrides` of the default
    recipe (compress) or a stream's `recipe` (decompress; it must start from this run).

    Raises:
      ValueError: a run with a tokenizer (online coding is byte-level), or a recipe that does
        not start from this run.
    """
    if run.columns:
        raise ValueError(f"{run.name}: online coding takes byte-level runs, not tokenizer runs.")
    if recipe is None:
        recipe = Recipe.parse("", overrides, start=run.fingerprint, base=run.net.config)
    else:
        segment = f"segment_bytes={recipe.segment_bytes}"
        own = Recipe.parse("", segment, start=run.fingerprint, base=run.net.config)
        if (recipe.start, recipe.architecture) != (own.start, own.architecture):
            raise ValueError(f"{run.name} is not the run this recipe starts from.")
    return load(recipe, f"online:{run.name}", start=run.params)


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
