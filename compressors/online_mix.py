"""Count models mixed with the online Transformer: what online recipes with `order` > 0 code with.

Beside the Transformer, the model keeps counts of what was coded so far: for each order o in
0..`order`, a table of [rows, 256] int32 counts, the row chosen by the o bytes before the position
(order 0: one row; order 1: the previous byte; orders >= 2: a hash of the last o bytes into
2**`table_bits` rows). Each order's counts become probabilities by Witten-Bell interpolation with
the order below (`interpolate`: q_o = (c_o + u_o q_{o-1}) / (n_o + u_o), n_o the row's total and
u_o its distinct symbols, q_{-1} uniform), and a small mixer (`mix`) adds the Transformer's and
each order's log-probabilities with weights that depend on each order's confidence (log(1 + n_o),
whether the row was seen, the Transformer's largest log-probability), then normalises (log-space,
"geometric" mixing as in PAQ's logistic mixing).

Exactness. Counts are integers: adding counts (a scatter-add in a jitted program) gives the same
tables whatever the order of the additions, on both sides. Counting live (`MixtureNet.live`), the
coder's step carries a copy of the tables and adds every lane's previous byte at each step (all
lanes' bytes before step t are known to both sides at step t); the learner then computes the
very rows each position saw (`group_rows`, without replaying the steps) for the mixer to train
on, and adds the group's bytes to its tables. Otherwise the tables are frozen during a group.
(Past a segment's end the coder feeds 0, which the live step counts too; the learner does not,
so a group with short segments, the last, trains its mixer on slightly other rows: the same on
both sides.) Every float that decides a table (interpolation, mixing) runs inside the coder's
jitted step (`MixtureNet.step`), the same program on both sides; nothing is computed on the host.

A lane's context at the start of its segment is zeros (a segment is coded without the bytes
before it, as the Transformer codes it), in the coding step and in the count updates alike.
"""

import dataclasses

import jax
import jax.numpy as jnp

from coding import tables as coding_tables
from models import coding_model, transformer

VOCAB = 256
_HASH_SEED = 0x9E3779B1
_HASH_MUL = 0x01000193


@dataclasses.dataclass(frozen=True)
class MixSpec:
    """The count models' shape: part of the recipe.

    Attributes:
      order: the highest context order (orders 0..order are counted).
      table_bits: log2 of the rows of each hashed table (orders >= 2).
    """

    order: int
    table_bits: int

    @property
    def inputs(self) -> int:
        """Log-probabilities mixed: the Transformer's and one per order."""
        return self.order + 2

    @property
    def features(self) -> int:
        """The mixer's confidence features: two per order, the Transformer's peak, a bias."""
        return 2 * (self.order + 1) + 2

    def rows(self, order: int) -> int:
        return 1 if order == 0 else VOCAB if order == 1 else 1 << self.table_bits


def init_counts(spec: MixSpec) -> list[jax.Array]:
    """Empty count tables, one [rows, 256] int32 per order."""
    return [jnp.zeros((spec.rows(o), VOCAB), jnp.int32) for o in range(spec.order + 1)]


def init_mixer(spec: MixSpec) -> dict:
    """Mixer weights: each input's weight is `bias` + `weights` @ features. Starts with the
    Transformer and the highest order at half each, the rest at zero."""
    bias = jnp.zeros(spec.inputs, jnp.float32).at[0].set(0.5).at[-1].set(0.5)
    return {"bias": bias, "weights": jnp.zeros((spec.features, spec.inputs), jnp.float32)}


def context_rows(spec: MixSpec, history: jax.Array) -> list[jax.Array]:
    """Each order's row for contexts `history` [..., order] (int32, the most recent byte first,
    zeros before a segment's start): one int32 [...] per order 0..order."""
    rows = [jnp.zeros(history.shape[:-1], jnp.int32)]
    if spec.order >= 1:
        rows.append(history[..., 0])
    h = jnp.full(history.shape[:-1], _HASH_SEED, jnp.uint32)
    for o in range(1, spec.order + 1):
        h = (h ^ history[..., o - 1].astype(jnp.uint32)) * jnp.uint32(_HASH_MUL)
        if o >= 2:
            mixed = (h ^ (h >> 15)) * jnp.uint32(0x2C1B3C6D)
            mixed = mixed ^ (mixed >> 12)
            rows.append((mixed >> (32 - spec.table_bits)).astype(jnp.int32))
    return rows


def row_histories(spec: MixSpec, tokens: jax.Array) -> jax.Array:
    """int32 [batch, length, order]: the `order` bytes before each position of `tokens` [batch,
    length], the most recent first, zeros before the row's start (as `MixtureNet.step` sees
    them)."""
    k = max(spec.order, 1)
    padded = jnp.pad(tokens.astype(jnp.int32), ((0, 0), (k, 0)))
    length = tokens.shape[1]
    return jnp.stack([padded[:, k - 1 - j : k - 1 - j + length] for j in range(k)], axis=-1)


def gather(spec: MixSpec, counts: list[jax.Array], history: jax.Array) -> list[jax.Array]:
    """Each order's count row for contexts `history` [n, order]: int32 [n, 256] per order."""
    return [table[rows] for table, rows in zip(counts, context_rows(spec, history), strict=True)]


def interpolate(rows: list[jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
    """Witten-Bell interpolated log-probabilities of each order (float32 [n, 256]) and each
    order's total count (float32 [n]) from count rows [n, 256] (the lowest order first)."""
    q = jnp.full(rows[0].shape, 1.0 / VOCAB, jnp.float32)
    logs, totals = [], []
    for row in rows:
        c = row.astype(jnp.float32)
        n = c.sum(-1, keepdims=True)
        u = (row > 0).sum(-1, keepdims=True).astype(jnp.float32)
        q = jnp.where(n > 0, (c + u * q) / jnp.maximum(n + u, 1.0), q)
        logs.append(jnp.log(q))
        totals.append(n[:, 0])
    return logs, totals


def mix(mixer: dict, tf_log_probs: jax.Array, rows: list[jax.Array]) -> jax.Array:
    """The mixture's log-probabilities [n, 256] from the Transformer's [n, 256] and each
    order's count rows [n, 256]."""
    return mix_interpolated(mixer, tf_log_probs, *interpolate(rows))


def mix_interpolated(mixer: dict, tf_log_probs, logs, totals) -> jax.Array:
    """`mix` from each order's interpolated log-probabilities and total counts (`interpolate`,
    which the mixer's weights do not change: the training step takes them precomputed)."""
    peak = tf_log_probs.max(-1)
    feats = [jnp.log1p(n) * 0.25 for n in totals] + [(n > 0).astype(jnp.float32) for n in totals]
    feats = jnp.stack([*feats, peak * 0.25, jnp.ones_like(peak)], axis=-1)  # [n, features]
    weights = mixer["bias"] + feats @ mixer["weights"]  # [n, inputs]
    inputs = jnp.stack([tf_log_probs, *logs], axis=1)  # [n, inputs, 256]
    return jax.nn.log_softmax(jnp.einsum("ni,niv->nv", weights, inputs), axis=-1)


def add_counts(spec: MixSpec, counts: list[jax.Array], tokens, lengths) -> list[jax.Array]:
    """`counts` with the first `lengths` [batch] bytes of each row of `tokens` [batch, length]
    added, each under its context (zeros before the row's start). Integers: exact in any
    order."""
    valid = (jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]).astype(jnp.int32)
    rows = context_rows(spec, row_histories(spec, tokens))
    symbols = tokens.astype(jnp.int32)
    return [
        table.at[r.reshape(-1), symbols.reshape(-1)].add(valid.reshape(-1))
        for table, r in zip(counts, rows, strict=True)
    ]


def live_step(spec: MixSpec, counts, history, prev, weight):
    """One step of live counting: `prev` [lanes] (the byte before this position) added with
    `weight` [lanes] (int32, 0 or 1) under its context `history` [lanes, order], then the
    history shifted and this position's count rows gathered. Returns (counts, history, rows)."""
    rows_prev = context_rows(spec, history)
    prev = prev.astype(jnp.int32)
    counts = [table.at[r, prev].add(weight) for table, r in zip(counts, rows_prev, strict=True)]
    history = push(history, prev)
    return counts, history, gather(spec, counts, history)


def push(history: jax.Array, prev: jax.Array) -> jax.Array:
    """Each lane's context [lanes, order] with `prev` [lanes] as its most recent byte (token 0
    at t = 0 keeps the zeros a segment starts with)."""
    return jnp.concatenate([prev[:, None].astype(jnp.int32), history[:, :-1]], axis=1)


def group_rows(spec: MixSpec, live: bool, counts, tokens, lengths) -> tuple:
    """The count rows a group's positions were coded with and the counts after the group.

    Args:
      spec: the count models.
      live: counts were updated at every step (`MixtureNet` with `live`): position t of every
        lane saw the counts before the group plus every lane's bytes before t; otherwise the
        counts before the group.
      counts: the tables before the group.
      tokens: int32 [lanes, length], zero past each length.
      lengths: int32 [lanes].

    Returns:
      (rows: one int32 [lanes * length, 256] per order, lane-major; the counts with the group's
      bytes added).
    """
    lanes, length = tokens.shape
    history = row_histories(spec, tokens).reshape(lanes * length, -1)
    rows = gather(spec, counts, history)
    if live:
        # Each position's count of the group's earlier positions (every lane's, before its
        # step) under its context: positions sorted by (context, step), an exclusive running
        # sum of their symbols, read at the start of the position's (context, step) run less
        # at the start of its context's run. Integers: exact.
        valid = (jnp.arange(length)[None, :] < lengths[:, None]).reshape(-1)
        steps = jnp.tile(jnp.arange(length, dtype=jnp.int32), lanes)
        seen = jax.nn.one_hot(tokens.reshape(-1), VOCAB, dtype=jnp.int32) * valid[:, None]
        for o, r in enumerate(context_rows(spec, history)):
            key = r * length + steps
            order = jnp.argsort(key, stable=True)
            sorted_key = key[order]
            running = jnp.pad(jnp.cumsum(seen[order], axis=0), ((1, 0), (0, 0)))
            run_start = jnp.searchsorted(sorted_key, sorted_key, side="left")
            context_start = jnp.searchsorted(sorted_key, sorted_key // length * length, "left")
            earlier = running[run_start] - running[context_start]
            rows[o] = rows[o] + jnp.zeros_like(earlier).at[order].set(earlier)
    return rows, add_counts(spec, counts, tokens, lengths)


def log_probs(spec: MixSpec, config, params: dict, tokens: jax.Array) -> jax.Array:
    """The mixture's log-probabilities [batch, length, 256] of every position of `tokens`
    [batch, length], the counts as `params` holds them."""
    tf = transformer.Transformer(config).apply({"params": params["tf"]}, tokens)
    batch, length = tokens.shape
    history = row_histories(spec, tokens).reshape(batch * length, -1)
    rows = gather(spec, params["counts"], history)
    mixed = mix(params["mix"], tf.reshape(batch * length, VOCAB), rows)
    return mixed.reshape(batch, length, VOCAB)


@dataclasses.dataclass(frozen=True)
class MixtureNet(coding_model.FloatNet):
    """The Transformer mixed with count models (`models.coding_model.Net`). Its parameters are
    {'tf': the Transformer's, 'mix': the mixer's, 'counts': the count tables}; its cache the
    Transformer's KV cache and each lane's last `order` bytes."""

    config: transformer.TransformerConfig
    spec: MixSpec
    live: bool = True

    def attention_blocks(self, chunk_tokens: int) -> int:
        return coding_model.default_attention_blocks(chunk_tokens)

    def init_cache(self, params, lanes, length, kv_dtype):
        """The Transformer's KV cache, each lane's last bytes (zeros) and, counting live, a
        copy of the count tables that the steps add to."""
        kv = transformer.init_cache(self.config, lanes, length, kv_dtype)
        history = jnp.zeros((lanes, max(self.spec.order, 1)), jnp.int32)
        counts = [jnp.array(c) for c in params["counts"]] if self.live else []
        return kv, history, counts

    def step(self, params, prev, t, cache, kv_length, spec):
        kv, history, counts = cache
        module = transformer.Transformer(self.config)
        tf, kv = module.apply(
            {"params": params["tf"]}, prev, t, kv, kv_length, method=transformer.Transformer.decode
        )
        if self.live:  # every lane's previous byte counted: the same in both directions
            weight = jnp.broadcast_to(t > 0, prev.shape).astype(jnp.int32)
            counts, history, rows = live_step(self.spec, counts, history, prev, weight)
        else:
            history = push(history, prev)
            rows = gather(self.spec, params["counts"], history)
        mixed = mix(params["mix"], tf, rows)
        return coding_tables.FloatTables.of(mixed, spec), (kv, history, counts)

    def parallel(self, params, tokens, spec):
        mixed = log_probs(self.spec, self.config, params, tokens)
        return coding_tables.FloatTables.of(mixed.reshape(-1, VOCAB), spec)

    def _tf(self) -> coding_model.FloatTransformer:
        return coding_model.FloatTransformer(self.config)

    def cache_bytes(self, length: int, kv_dtype: str) -> int:
        return self._tf().cache_bytes(length, kv_dtype) + 4 * max(self.spec.order, 1)

    def shared_cache_bytes(self) -> int:
        """Counting live, the copy of the count tables (int32) that the steps add to."""
        rows = sum(self.spec.rows(o) for o in range(self.spec.order + 1))
        return 4 * VOCAB * rows if self.live else 0

    def work_bytes(self, length: int) -> int:
        # Each order's gathered row, its probabilities and logs, the mixer's inputs.
        return self._tf().work_bytes(length) + 16 * VOCAB * 4 * self.spec.inputs

    def parallel_row_bytes(self, length: int) -> int:
        return self._tf().parallel_row_bytes(length) + 16 * VOCAB * 4 * self.spec.inputs * length
