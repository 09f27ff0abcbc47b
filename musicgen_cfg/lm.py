"""Compact MusicGen decoder LM: loads transformers' MusicGen decoder weights, adds a static KV cache.

Same architecture and parameter names as transformers' `MusicgenForConditionalGeneration` decoder
part (`decoder.model.decoder.*`, `decoder.lm_heads.*`, `enc_to_dec_proj.*`), so a state dict moves
between the two unchanged (tests/core/test_lm_equivalence.py proves the logits equal). What it adds is a
lean forward for training and a preallocated KV cache for sampling (musicgen_cfg/sampler.py).

    tokens [B, K, L] (delayed, BOS first) + text states [B, S, Dt] -> logits [B, K, L, V]
"""

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from transformers import MusicgenDecoderConfig
from transformers.activations import ACT2FN

from musicgen_cfg.cfg import Condition


def sinusoidal_positions(num_positions: int, dim: int) -> torch.Tensor:
    """[num_positions, dim]: cos half then sin half, as transformers' MusicGen (tensor2tensor style)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.int64).float() * -(math.log(10000) / (half - 1)))
    angles = torch.arange(num_positions, dtype=torch.int64).float()[:, None] * freqs[None, :]
    table = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    if dim % 2 == 1:
        table = torch.cat([table, torch.zeros(num_positions, 1)], dim=1)
    return table


class Attention(nn.Module):
    """Multi-head attention without biases (MusicGen's), over SDPA."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads, self.head_dim, self.dropout = num_heads, dim // num_heads, dropout
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.out_proj = nn.Linear(dim, dim, bias=False)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, D] -> [B, H, L, hd]"""
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def attend(self, q, k, v, mask=None, causal=False) -> torch.Tensor:
        """q [B, H, Lq, hd], k/v [B, H, Lk, hd], additive mask broadcastable to [B, H, Lq, Lk]."""
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1))


class DecoderLayer(nn.Module):
    """Pre-LN block: causal self-attention, cross-attention to the text, GELU MLP."""

    def __init__(self, config: MusicgenDecoderConfig):
        super().__init__()
        dim = config.hidden_size
        self.self_attn = Attention(dim, config.num_attention_heads, config.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.encoder_attn = Attention(dim, config.num_attention_heads, config.attention_dropout)
        self.encoder_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, config.ffn_dim, bias=False)
        self.fc2 = nn.Linear(config.ffn_dim, dim, bias=False)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.activation = ACT2FN[config.activation_function]
        self.dropout, self.activation_dropout = config.dropout, config.activation_dropout

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.activation(self.fc1(self.final_layer_norm(x)))
        h = F.dropout(h, self.activation_dropout, self.training)
        return x + F.dropout(self.fc2(h), self.dropout, self.training)

    def forward(self, x, cross_k, cross_v, cross_mask) -> torch.Tensor:
        """Full-sequence pass (training / scoring). x [B, L, D]."""
        h = self.self_attn_layer_norm(x)
        sa = self.self_attn
        h = sa.attend(sa.heads(sa.q_proj(h)), sa.heads(sa.k_proj(h)), sa.heads(sa.v_proj(h)), causal=True)
        x = x + F.dropout(h, self.dropout, self.training)
        h = self.encoder_attn_layer_norm(x)
        h = self.encoder_attn.attend(self.encoder_attn.heads(self.encoder_attn.q_proj(h)), cross_k, cross_v, cross_mask)
        x = x + F.dropout(h, self.dropout, self.training)
        return self.feed_forward(x)

    def step(self, x, position, self_mask, qkv_weight, cache_kv, cross_k, cross_v, cross_mask, length=None) -> torch.Tensor:
        """One decoding step with the static cache. x [B, 1, D]; position [1] long tensor.

        qkv_weight [3D, D] is cat(q, k, v weights) (KVCache.qkv, derived per request): one matmul
        instead of three. The new key/value is written at `position` of cache_kv [2, B, H, max_steps, hd]
        in place (one copy); attention runs over the whole preallocated cache with `self_mask` hiding
        the future, so shapes never change (CUDA graphs). With `length` (a Python int, = position + 1;
        eager callers only) it runs over the first `length` cache entries instead, unmasked: half the
        attention work on average.
        """
        sa = self.self_attn
        batch = x.shape[0]
        # [B, 1, 3D] -> [B, 3, H, 1, hd]: a view, since the step has one position
        qkv = F.linear(self.self_attn_layer_norm(x), qkv_weight).view(batch, 3, sa.num_heads, 1, sa.head_dim)
        cache_kv.index_copy_(3, position, qkv[:, 1:].transpose(0, 1))
        keys, values = cache_kv[0], cache_kv[1]
        if length is not None:
            keys, values = keys[:, :, :length], values[:, :, :length]
        x = x + sa.attend(qkv[:, 0], keys, values, self_mask)
        h = self.encoder_attn_layer_norm(x)
        x = x + self.encoder_attn.attend(self.encoder_attn.heads(self.encoder_attn.q_proj(h)), cross_k, cross_v, cross_mask)
        return self.feed_forward(x)


class DecoderStack(nn.Module):
    """transformers' MusicgenDecoder: K summed token embeddings + sinusoidal positions + layers."""

    def __init__(self, config: MusicgenDecoderConfig):
        super().__init__()
        self.embed_tokens = nn.ModuleList(
            nn.Embedding(config.vocab_size + 1, config.hidden_size) for _ in range(config.num_codebooks)
        )
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.layer_norm = nn.LayerNorm(config.hidden_size)
        table = sinusoidal_positions(config.max_position_embeddings, config.hidden_size)
        self.register_buffer("positions", table, persistent=False)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, K, L] -> [B, L, D] (sum over codebooks; transformers applies no embed scale)."""
        return sum(emb(tokens[:, k]) for k, emb in enumerate(self.embed_tokens))


class MusicgenLM(nn.Module):
    """The trainable part of MusicGen: decoder stack, K LM heads and the text projection.

    `text_hidden_size` is the text encoder's width; when it differs from the decoder's (and the
    config sets no cross_attention_hidden_size) an `enc_to_dec_proj` Linear maps it, as transformers does.
    """

    def __init__(self, config: MusicgenDecoderConfig, text_hidden_size: int):
        super().__init__()
        self.config = config
        self.num_codebooks, self.vocab_size = config.num_codebooks, config.vocab_size
        self.pad_id = config.pad_token_id if config.pad_token_id is not None else config.vocab_size
        stack = DecoderStack(config)
        heads = nn.ModuleList(
            nn.Linear(config.hidden_size, config.vocab_size, bias=False) for _ in range(config.num_codebooks)
        )
        # Nested containers only to reproduce transformers' parameter names.
        self.decoder = nn.ModuleDict({"model": nn.ModuleDict({"decoder": stack}), "lm_heads": heads})
        needs_proj = text_hidden_size != config.hidden_size and config.cross_attention_hidden_size is None
        self.enc_to_dec_proj = nn.Linear(text_hidden_size, config.hidden_size) if needs_proj else None
        self.text_hidden_size = text_hidden_size
        # Recompute each layer in backward instead of storing its activations (forward with grad only).
        self.gradient_checkpointing = False

    @classmethod
    def on_meta(cls, config: MusicgenDecoderConfig, text_hidden_size: int) -> "MusicgenLM":
        """The LM with its parameters on the meta device (no memory, no random initialisation), for
        `load_state_dict(state, assign=True)`, which makes the state's tensors themselves its weights: a
        loader then holds one decoder, not a fresh one plus the tensors copied into it. The positions
        buffer, which no checkpoint holds, is real (on the CPU, as the plain constructor makes it)."""
        with torch.device("meta"):
            lm = cls(config, text_hidden_size)
        table = sinusoidal_positions(config.max_position_embeddings, config.hidden_size)
        lm.stack.register_buffer("positions", table, persistent=False)
        return lm

    @property
    def stack(self) -> DecoderStack:
        return self.decoder["model"]["decoder"]

    @property
    def device(self) -> torch.device:
        return self.stack.layer_norm.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.stack.layer_norm.weight.dtype

    def project_condition(self, cond: Condition) -> tuple[torch.Tensor, torch.Tensor]:
        """Condition -> (text states [B, S, D] in decoder width, additive mask [B, 1, 1, S])."""
        states = cond.hidden.to(self.dtype)
        if self.enc_to_dec_proj is not None:
            states = self.enc_to_dec_proj(states)
        states = states * cond.mask[..., None].to(states.dtype)  # transformers zeroes padded states
        additive = (1.0 - cond.mask.to(states.dtype)) * torch.finfo(states.dtype).min
        return states, additive[:, None, None, :]

    def cross_keys_values(self, states: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer cross-attention (K, V) [B, H, S, hd]: computed once per request."""
        return [
            (layer.encoder_attn.heads(layer.encoder_attn.k_proj(states)), layer.encoder_attn.heads(layer.encoder_attn.v_proj(states)))
            for layer in self.stack.layers
        ]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[B, L, D] -> [B, K, L, V]"""
        hidden = self.stack.layer_norm(hidden)
        return torch.stack([head(hidden) for head in self.decoder["lm_heads"]], dim=1)

    def forward(self, tokens: torch.Tensor, cond: Condition) -> torch.Tensor:
        """Teacher-forced pass. tokens [B, K, L] (BOS-prefixed delayed codes) -> logits [B, K, L, V].

        With `gradient_checkpointing` and grad enabled, only each layer's input [B, L, D] is kept for
        backward and the layer is run again there: activation memory / ~layers, one more forward.
        """
        stack = self.stack
        length = tokens.shape[-1]
        if length > stack.positions.shape[0]:
            raise ValueError(f"sequence of {length} steps exceeds max_position_embeddings {stack.positions.shape[0]}")
        states, cross_mask = self.project_condition(cond)
        x = stack.embed(tokens) + stack.positions[:length].to(self.dtype)
        x = F.dropout(x, self.config.dropout, self.training)
        recompute = self.gradient_checkpointing and torch.is_grad_enabled()
        for layer, (ck, cv) in zip(stack.layers, self.cross_keys_values(states)):
            if recompute:
                x = torch.utils.checkpoint.checkpoint(layer, x, ck, cv, cross_mask, use_reentrant=False)
            else:
                x = layer(x, ck, cv, cross_mask)
        return self.logits(x)

    def step(self, tokens: torch.Tensor, position: torch.Tensor, cache: "KVCache", length: int | None = None) -> torch.Tensor:
        """One decoding step. tokens [B, K] at `position` ([1] long tensor) -> logits [B, K, V].

        Uses the request's fused weights held by `cache` (one embedding lookup for the K codebooks,
        one QKV matmul per layer, one matmul for the K heads); the values are those of `forward`.
        `length` (optional Python int, must equal position + 1): attend to the filled part of the
        cache only, without a mask (eager decoding; a CUDA graph needs the fixed-shape default).
        """
        stack = self.stack
        x = F.embedding(tokens + cache.embed_offsets, cache.embed_table).sum(1, keepdim=True)  # [B, 1, D]
        x = x + stack.positions.index_select(0, position).to(self.dtype)
        self_mask = cache.future_mask(position) if length is None else None
        for i, layer in enumerate(stack.layers):
            x = layer.step(x, position, self_mask, cache.qkv[i], cache.kv[i], *cache.cross[i], cache.cross_mask, length=length)
        logits = F.linear(stack.layer_norm(x), cache.heads)  # [B, 1, K * V]
        return logits.view(x.shape[0], self.num_codebooks, self.vocab_size)


def compute_dtype(lm: MusicgenLM) -> torch.dtype:
    """The dtype the projections produce: the autocast dtype inside autocast (k/v are bf16 there), else the weights'."""
    device_type = lm.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else lm.dtype


def _linear_weight(module: nn.Module, in_features: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The [out, in] matrix a bias-free linear module applies: `.weight` of a plain nn.Linear; for a
    wrapper (a peft LoRA layer, whose `.weight` is the base weight WITHOUT its adapter) the module
    applied to the identity, so the fused step uses exactly what the module's forward would."""
    if type(module) is nn.Linear:
        return module.weight
    return module(torch.eye(in_features, device=device, dtype=dtype)).T


def _embedding_table(module: nn.Module, num_embeddings: int, device: torch.device) -> torch.Tensor:
    """[num_embeddings, D]: `.weight` of a plain nn.Embedding, else every id through the module (adapters included)."""
    if type(module) is nn.Embedding:
        return module.weight
    return module(torch.arange(num_embeddings, device=device))


class KVCache:
    """Per-request decoding state: the self-attention cache, the cross-attention K/V and the step's fused weights.

    Sized once per request: memory does not grow per step. Per layer, `kv[i]` [2, B, H, max_steps, hd]
    holds keys (`keys[i]`, a view) and values (`values[i]`). The fused weights (`embed_table`, `qkv`,
    `heads`) are copies derived from the module's parameters HERE, once per request: the parameters
    keep transformers' names and layout (checkpoints, LoRA, merging) and anything that rewrites them
    in place between requests (merging.live.LiveMerge, an optimizer step) is seen by the next request. They
    are cast to the compute dtype once (autocast would otherwise cast them at every step).
    """

    def __init__(self, lm: MusicgenLM, cond: Condition, max_steps: int):
        config = lm.config
        batch = len(cond)
        head_dim = config.hidden_size // config.num_attention_heads
        shape = (2, batch, config.num_attention_heads, max_steps, head_dim)
        dtype = compute_dtype(lm)
        layers = lm.stack.layers
        self.kv = [torch.zeros(shape, device=lm.device, dtype=dtype) for _ in layers]
        self.keys = [kv[0] for kv in self.kv]
        self.values = [kv[1] for kv in self.kv]
        states, self.cross_mask = lm.project_condition(cond)
        self.cross = lm.cross_keys_values(states)
        self.steps = torch.arange(max_steps, device=lm.device)
        self.max_steps = max_steps
        with torch.no_grad():  # stack + flatten: the [K * V, D] of cat (one copy)
            rows = config.vocab_size + 1  # the codes and the pad / BOS id
            self.embed_table = torch.stack([_embedding_table(emb, rows, lm.device)
                                            for emb in lm.stack.embed_tokens]).flatten(0, 1)  # [K * (V + 1), D]
            self.embed_offsets = torch.arange(config.num_codebooks, device=lm.device) * rows  # [K]
            self.qkv = [torch.stack([_linear_weight(getattr(layer.self_attn, name), config.hidden_size, lm.device, lm.dtype)
                                     for name in ("q_proj", "k_proj", "v_proj")]).flatten(0, 1).to(dtype)
                        for layer in layers]  # [3D, D]
            self.heads = torch.stack([_linear_weight(head, config.hidden_size, lm.device, lm.dtype)
                                      for head in lm.decoder["lm_heads"]]).flatten(0, 1).to(dtype)  # [K * V, D]

    def future_mask(self, position: torch.Tensor) -> torch.Tensor:
        """Additive mask [1, 1, 1, max_steps]: 0 up to `position`, -inf after."""
        return torch.where(self.steps <= position, 0.0, float("-inf")).to(self.keys[0].dtype)[None, None, None, :]
