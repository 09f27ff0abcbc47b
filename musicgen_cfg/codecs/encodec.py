"""EnCodec codec of real MusicGen checkpoints (transformers' EncodecModel): codes [B, K, T] <-> 32 kHz audio."""

import torch


class EncodecCodec:
    def __init__(self, model):
        self.model = model.eval().requires_grad_(False)
        self.sample_rate = model.config.sampling_rate
        self.frame_rate = model.config.frame_rate
        self.num_codebooks = model.quantizer.num_quantizers if hasattr(model, "quantizer") else None
        self.cardinality = model.config.codebook_size

    def frames_for_duration(self, seconds: float, prompt: str = "") -> int:
        return max(1, round(seconds * self.frame_rate))

    def render_info(self, prompt: str = "") -> dict:
        return {"codec": "encodec", "sample_rate": self.sample_rate, "frame_rate": self.frame_rate}

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, prompts: list[str] | None = None) -> torch.Tensor:
        """codes [B, K, T] -> float32 [B, N] in [-1, 1]."""
        device = next(self.model.parameters()).device
        audio = self.model.decode(codes.to(device)[None], [None]).audio_values
        return audio[:, 0].float().clamp(-1, 1).cpu()

    @torch.no_grad()
    def encode(self, waveform: torch.Tensor) -> torch.Tensor:
        """float [B, N] at sample_rate -> codes [B, K, T]."""
        device = next(self.model.parameters()).device
        return self.model.encode(waveform[:, None].to(device)).audio_codes[0]
