"""GPT-2 in Flax, with the checkpoint's parameter names and layouts.

Learned positions, LayerNorm, GELU (`gelu_new`, `gelu_pytorch_tanh`, `gelu`), Conv1D weights
stored [in, out], the output layer tied to `wte`. `GPT2(cfg)(inputs)` and `.decode` return
float32 log-probs.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import pretrained_config
from models import pretrained_layers as layers


class _GPT2Attention(nn.Module):
    cfg: pretrained_config.PretrainedConfig

    def setup(self):
        self.c_attn = layers.Conv1D(3 * self.cfg.hidden_size, self.cfg.dtype)
        self.c_proj = layers.Conv1D(self.cfg.hidden_size, self.cfg.dtype)

    def _qkv(self, x):
        cfg = self.cfg
        qkv = self.c_attn(x).reshape(*x.shape[:-1], 3, cfg.num_heads, cfg.head_dim)
        return qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]

    def _out(self, attended):
        return self.c_proj(attended.reshape(*attended.shape[:-2], -1))

    def __call__(self, x):
        return self._out(layers.attend_parallel(*self._qkv(x)))

    def decode(self, x, index, cache_k, cache_v, kv_length):
        q, k, v = self._qkv(x)
        attended, cache_k, cache_v = layers.attend_cached(
            q, k, v, index, cache_k, cache_v, kv_length
        )
        return self._out(attended), cache_k, cache_v


class _GPT2MLP(nn.Module):
    cfg: pretrained_config.PretrainedConfig

    def setup(self):
        self.c_fc = layers.Conv1D(self.cfg.intermediate_size, self.cfg.dtype)
        self.c_proj = layers.Conv1D(self.cfg.hidden_size, self.cfg.dtype)

    def __call__(self, x):
        return self.c_proj(
            nn.gelu(self.c_fc(x), approximate=pretrained_config.GELUS[self.cfg.activation])
        )


class _GPT2Block(nn.Module):
    cfg: pretrained_config.PretrainedConfig

    def setup(self):
        cfg = self.cfg
        self.ln_1 = layers.LayerNorm(cfg.norm_eps, cfg.dtype)
        self.attn = _GPT2Attention(cfg)
        self.ln_2 = layers.LayerNorm(cfg.norm_eps, cfg.dtype)
        self.mlp = _GPT2MLP(cfg)

    def __call__(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def decode(self, x, index, cache_k, cache_v, kv_length):
        attended, cache_k, cache_v = self.attn.decode(
            self.ln_1(x), index, cache_k, cache_v, kv_length
        )
        x = x + attended
        return x + self.mlp(self.ln_2(x)), cache_k, cache_v


class GPT2(nn.Module):
    """GPT-2 decoder: token ids in, float32 log-probs out."""

    cfg: pretrained_config.PretrainedConfig

    def setup(self):
        cfg = self.cfg
        self.wte = layers.Embed(cfg.vocab_size, cfg.hidden_size, cfg.dtype)
        self.wpe = layers.Embed(cfg.max_position_embeddings, cfg.hidden_size, cfg.dtype)
        self.h = [_GPT2Block(cfg) for _ in range(cfg.num_layers)]
        self.ln_f = layers.LayerNorm(cfg.norm_eps, cfg.dtype)

    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Log-probs [batch, length, vocab] of the token after each of inputs [batch, length]."""
        h = self.wte(inputs) + self.wpe(jnp.arange(inputs.shape[1]))[None]
        for block in self.h:
            h = block(h)
        return layers.log_softmax(self.wte.attend(self.ln_f(h)))

    def decode(self, inputs, index, cache: layers.Cache, kv_length: int | None = None):
        """Reads inputs [batch] at position `index`; returns (log-probs [batch, vocab], cache)."""
        h = self.wte(inputs[:, None]) + self.wpe(jnp.full((1, 1), index, jnp.int32))
        h, new_cache = layers.decode_blocks(self.h, h, index, cache, kv_length)
        return layers.log_softmax(self.wte.attend(self.ln_f(h)))[:, 0], new_cache
