"""The tiny real-format fixtures are not degenerate: their EnCodec tells different codes apart."""

import torch

from musicgen_cfg.tiny import tiny_musicgen


def test_tiny_encodec_decodes_different_codes_to_different_audio():
    model, _ = tiny_musicgen(seed=3)
    codes = torch.randint(0, model.config.decoder.vocab_size, (2, model.config.decoder.num_codebooks, 50),
                          generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        audio = model.audio_encoder.decode(codes[None], [None]).audio_values[:, 0]
    rms = audio.pow(2).mean(-1).sqrt()
    assert (rms > 1e-3).all(), rms
    # the two clips differ by about their own size, not by a rounding error
    assert (audio[0] - audio[1]).pow(2).mean().sqrt() > 0.5 * rms.min()
    roundtrip = model.audio_encoder.encode(audio[:1, None]).audio_codes[0]
    assert roundtrip.shape == codes[:1].shape
