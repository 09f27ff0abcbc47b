"""The default model's codec: 4-voice score codes [B, 4, T] -> audio, played by the built-in synthesizer.

Library module (the codec protocol of docs/architecture.md); `python bench/codec.py` times it.

Codes follow `musicgen_cfg.world.symbolic` (0 = rest, 1 = hold, 2.. = note onsets; one frame = one 16th note).
Each prompt picks the instrument and tempo (`captions.render_settings`), so the same codes last
longer at a slower tempo: a row lasts T * 15 / tempo_bpm seconds. In a batch whose prompts ask for
different tempos, shorter rows are padded with silence to the longest row.
"""

from __future__ import annotations

import numpy as np
import torch

from musicgen_cfg.errors import UserError
from musicgen_cfg.world import symbolic, synth
from musicgen_cfg.world.captions import render_settings


def frame_seconds(tempo_bpm: float) -> float:
    """Seconds per frame (a 16th note) at a quarter-note tempo."""
    return 60.0 / (tempo_bpm * symbolic.FRAMES_PER_QUARTER)


class SymbolicCodec:
    """Decode-only codec of the default model (its "tokenizer" is the score reduction of corpus_build.py)."""

    sample_rate = 16000
    num_codebooks = symbolic.NUM_VOICES
    cardinality = symbolic.CARDINALITY

    def render_info(self, prompt: str) -> dict:
        """What a prompt renders as: {'instrument', 'tempo_bpm'} (recorded in generation manifests)."""
        settings = render_settings(prompt)
        return {"instrument": settings.instrument, "tempo_bpm": settings.tempo_bpm}

    def frames_for_duration(self, seconds: float, prompt: str) -> int:
        """Frames that last `seconds` at the prompt's tempo (at least 1)."""
        if not seconds > 0:
            raise UserError(f"duration must be > 0 seconds, got {seconds}")
        return max(1, int(round(seconds / frame_seconds(render_settings(prompt).tempo_bpm))))

    def decode_one(self, codes: np.ndarray, prompt: str) -> np.ndarray:
        """codes [4, T] -> float32 [round(T * frame_seconds * sample_rate)] in [-1, 1]."""
        settings = render_settings(prompt)
        seconds_per_frame = frame_seconds(settings.tempo_bpm)
        num_samples = int(round(codes.shape[-1] * seconds_per_frame * self.sample_rate))
        events = symbolic.codes_to_notes(codes)
        return synth.render(events, num_samples, seconds_per_frame, settings.instrument, self.sample_rate)

    def decode(self, codes, prompts: list[str]) -> torch.Tensor:
        """codes [B, 4, T] (torch or numpy ints in [0, cardinality)) -> float32 [B, N] in [-1, 1]."""
        array = codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
        if array.ndim != 3 or array.shape[1] != self.num_codebooks:
            raise UserError(f"codes must have shape [B, {self.num_codebooks}, T], got {list(array.shape)}")
        if len(prompts) != array.shape[0]:
            raise UserError(f"got {len(prompts)} prompts for {array.shape[0]} code sequences")
        if array.size and (array.min() < 0 or array.max() >= self.cardinality):
            raise UserError(f"codes must lie in [0, {self.cardinality}), got {array.min()}..{array.max()}")
        waves = [self.decode_one(row, prompt) for row, prompt in zip(array, prompts)]
        out = np.zeros((len(waves), max((len(w) for w in waves), default=0)), dtype=np.float32)
        for row, wave in enumerate(waves):
            out[row, : len(wave)] = wave
        return torch.from_numpy(out)

    def encode(self, *args, **kwargs):
        raise UserError("the symbolic codec encodes from scores, not audio (see `musicgen-cfg corpus build`)")
