"""The diversity reward as one pipeline: decode -> gate -> embed -> pairwise reward, one sibling group at a time.

Library module, used by the trainer (`Distiller.diversity_rewards`), `musicgen-cfg evaluate` and the app:

    gate = reward_gate("data", symbolic=model.is_symbolic)          # or "none", "data:0.01"
    rewards, music = diversity_rewards(codes, prompts, G, codec, embedder, gate)   # [P*G, K, T] -> [P, G] x 2
    scored = group_rewards(audio, sample_rate, codes, embedder, gate)      # one group: [G, S] -> [G]

Why one group at a time: the siblings of a prompt share its prompt, hence its tempo and length, so
decoding them together needs no padding. Decoding all prompts of a batch in one call padded the faster
tempos with silence to the longest row, the embedder averaged that silence in, and a prompt's reward
depended on which prompts shared its batch (and so on the number of DDP processes). Here a group's
reward is a function of that group alone, bit for bit (tests/rl/test_reward.py).

Why a gate: a silent or near-empty clip is far from every musical sibling in the embedding, so the
pairwise reward paid the policy for producing silence. The gate marks clips outside the real data's
range as degenerate; they earn 0 and do not count as far from their siblings (`pairwise_diversity`'s
music mask), so silence earns less than copying a sibling. Two gates:

- default world (symbolic codes): a clip is music when its sounding fraction (frames where some voice
  sounds) and its onset rate (frames with an onset, per frame) are at least the `quantile` (0.1% by
  default) of the shipped dataset's segments that lie inside their piece (end-of-piece segments are
  padded with rests by the builder, so they are not the range of music). On the shipped data: sounding
  fraction >= 0.625, onset rate >= 3/128.
- real audio: a clip is music when at most half of its 100 ms windows are silent (RMS below -60 dBFS).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from musicgen_cfg.errors import UserError
from rl.diversity import pairwise_diversity
from rl.note_diversity import sounding_frames

DATA_QUANTILE = 0.001
GATE_SPECS = "'data' (clips outside the real data's range earn no reward), 'data:Q' (threshold quantile Q) or 'none'"


@dataclass(frozen=True)
class CodesGate:
    """Default world: thresholds on symbolic codes [G, 4, T] (see the module docstring)."""

    min_sounding_fraction: float
    min_onset_rate: float

    def music(self, codes: np.ndarray, audio: torch.Tensor, sample_rate: int) -> np.ndarray:
        """bool [G]: the clip is within the real data's range."""
        sounding, onset_rate = codes_statistics(codes)
        return (sounding >= self.min_sounding_fraction) & (onset_rate >= self.min_onset_rate)


@dataclass(frozen=True)
class AudioGate:
    """Real audio: at most `max_silent_fraction` of the `window_seconds` windows below `silence_dbfs` RMS."""

    window_seconds: float = 0.1
    silence_dbfs: float = -60.0
    max_silent_fraction: float = 0.5

    def music(self, codes, audio: torch.Tensor, sample_rate: int) -> np.ndarray:
        return silent_window_fraction(audio, sample_rate, self.window_seconds, self.silence_dbfs) <= self.max_silent_fraction


class OpenGate:
    """No gate: every clip counts (the paper's reward)."""

    def music(self, codes, audio: torch.Tensor, sample_rate: int) -> np.ndarray:
        return np.ones(len(audio), dtype=bool)


def codes_statistics(codes) -> tuple[np.ndarray, np.ndarray]:
    """codes [N, 4, T] -> (sounding fraction [N], onset rate [N]): shares of frames where some voice sounds / starts a note."""
    codes = np.asarray(codes)
    if codes.ndim != 3 or codes.shape[-1] == 0:
        raise ValueError(f"expected codes [N, K, T > 0], got {codes.shape}")
    sounding = sounding_frames(codes).any(axis=1).mean(axis=1)
    onset_rate = (codes >= 2).any(axis=1).mean(axis=1)
    return sounding, onset_rate


def silent_window_fraction(audio: torch.Tensor, sample_rate: int, window_seconds: float = 0.1,
                           silence_dbfs: float = -60.0) -> np.ndarray:
    """audio [G, S] -> [G]: share of the whole `window_seconds` windows (one window if shorter) with RMS below `silence_dbfs`."""
    audio = torch.as_tensor(audio, dtype=torch.float64)
    if audio.dim() != 2 or audio.shape[1] == 0:
        raise ValueError(f"expected audio [G, samples > 0], got {tuple(audio.shape)}")
    window = min(max(1, round(window_seconds * sample_rate)), audio.shape[1])
    frames = audio[:, : audio.shape[1] // window * window].reshape(len(audio), -1, window)
    rms = frames.pow(2).mean(dim=2).sqrt()
    return (rms < 10.0 ** (silence_dbfs / 20.0)).double().mean(dim=1).numpy()


@functools.lru_cache(maxsize=4)
def data_codes_gate(quantile: float = DATA_QUANTILE, dataset: str | None = None) -> CodesGate:
    """CodesGate at the `quantile` of the dataset's (default: shipped) segments that lie inside their piece."""
    from musicgen_cfg.world.corpus import SEGMENT_FRAMES, read_arrays

    arrays = read_arrays(dataset)
    inside = arrays["segment_start"] + SEGMENT_FRAMES <= arrays["piece_num_frames"][arrays["segment_piece"]]
    sounding, onset_rate = codes_statistics(arrays["codes"][inside])
    return CodesGate(float(np.quantile(sounding, quantile)), float(np.quantile(onset_rate, quantile)))


def parse_gate_spec(spec: str) -> float | None:
    """'data' -> DATA_QUANTILE, 'data:Q' -> Q (0 < Q < 0.5), 'none' -> None; UserError otherwise."""
    if spec == "none":
        return None
    if spec == "data":
        return DATA_QUANTILE
    if spec.startswith("data:"):
        try:
            quantile = float(spec[len("data:"):])
        except ValueError:
            quantile = math.nan
        if 0 < quantile < 0.5:
            return quantile
        raise UserError(f"reward gate {spec!r}: the quantile after 'data:' must be a number in (0, 0.5)")
    raise UserError(f"unknown reward gate {spec!r}; use {GATE_SPECS}")


def reward_gate(spec: str, symbolic: bool):
    """The gate `spec` names: CodesGate (default world, symbolic codes), AudioGate (real audio) or OpenGate ('none')."""
    quantile = parse_gate_spec(spec)
    if quantile is None:
        return OpenGate()
    return data_codes_gate(quantile) if symbolic else AudioGate()


class GroupReward(NamedTuple):
    rewards: torch.Tensor  # [G] in [0, 2]; 0 for degenerate clips
    music: np.ndarray  # bool [G]: passed the gate
    embeddings: torch.Tensor  # [G, D]


@torch.no_grad()
def group_rewards(audio: torch.Tensor, sample_rate: int, codes, embedder, gate) -> GroupReward:
    """One prompt's G >= 2 siblings: audio [G, S] (one length: no padding), codes [G, K, T] -> GroupReward."""
    codes = codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    if audio.dim() != 2 or len(audio) < 2 or len(codes) != len(audio):
        raise ValueError(f"expected audio [G >= 2, S] and codes [G, K, T], got {tuple(audio.shape)}, {codes.shape}")
    music = np.asarray(gate.music(codes, audio, sample_rate), dtype=bool)
    embeddings = embedder.embed(audio, sample_rate)
    rewards = pairwise_diversity(embeddings[None], torch.from_numpy(music)[None])[0]
    return GroupReward(rewards, music, embeddings)


class SiblingRewards(NamedTuple):
    rewards: torch.Tensor  # [P, G] in [0, 2]; 0 for degenerate clips
    music: torch.Tensor  # bool [P, G]: passed the gate (its mean is the rate a trainer watches for reward hacking)


@torch.no_grad()
def diversity_rewards(codes: torch.Tensor, prompts: list[str], group: int, codec, embedder, gate) -> SiblingRewards:
    """codes [P*G, K, T] (the G siblings of a prompt adjacent, sharing its prompt), prompts [P*G] -> SiblingRewards.

    Each group is decoded and embedded on its own, so its rewards do not depend on the other prompts.
    """
    if group < 2 or codes.dim() != 3 or len(codes) % group or len(prompts) != len(codes):
        raise ValueError(f"expected codes [P*G, K, T] with G = {group} >= 2 and one prompt per row, got "
                         f"{tuple(codes.shape)} and {len(prompts)} prompts")
    rewards, music = [], []
    for start in range(0, len(codes), group):
        siblings = prompts[start : start + group]
        if len(set(siblings)) != 1:
            raise ValueError(f"rows {start}..{start + group - 1} are not siblings: they have different prompts")
        rows = codes[start : start + group].cpu()
        audio = codec.decode(rows, siblings)
        scored = group_rewards(audio, codec.sample_rate, rows, embedder, gate)
        rewards.append(scored.rewards)
        music.append(torch.from_numpy(scored.music))
    return SiblingRewards(torch.stack(rewards), torch.stack(music))
