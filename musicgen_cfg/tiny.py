"""Tiny randomly initialised real-MusicGen checkpoints (T5 + EnCodec + decoder) and CLAP models, for tests
and benchmarks.

Nothing is downloaded: configs are built in code, the tokenizer is a word-level one made here, and
the result is saved in transformers' format (with a processor and a generation config at
guidance_scale 3, like facebook/musicgen-*) so it loads back through the same path as the real ones.

    .venv/bin/python -m musicgen_cfg.tiny OUT_DIR     # write one
"""

import math
import sys
from pathlib import Path

import torch

TINY_WORDS = ["<pad>", "</s>", "<unk>"] + (
    "a an the joyful sad calm fast slow jig reel hymn song piano organ fiddle guitar drums bass "
    "rock jazz pop folk lofi ambient beat melody with and for in of minor major happy dark bright"
).split()


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(TINY_WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


# The towers of facebook/musicgen-small / medium / large (their published configs): `text=` / `audio=` overrides.
T5_BASE = dict(d_model=768, d_ff=3072, num_layers=12, num_heads=12, d_kv=64, vocab_size=32128)
ENCODEC_32KHZ = dict(sampling_rate=32000, audio_channels=1, num_filters=64, hidden_size=128, codebook_dim=128,
                     upsampling_ratios=[8, 5, 4, 4], num_lstm_layers=2, num_residual_layers=1, use_causal_conv=False)


def musicgen_config(
    hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, vocab_size: int = 64, num_codebooks: int = 4,
    text_hidden_size: int = 48, ffn_dim: int | None = None, max_positions: int = 2048, text: dict | None = None,
    audio: dict | None = None,
):
    """transformers' MusicgenConfig: the tiny towers (T5 of width 48, EnCodec at 16 kHz, 50 frames/s) and a decoder
    of the given sizes.

    `text` overrides the T5 config (T5_BASE: MusicGen's; the word-level tokenizer's ids stay valid for any
    vocabulary of at least len(TINY_WORDS)), `audio` the EnCodec config (ENCODEC_32KHZ: MusicGen's); EnCodec's
    codebooks are always `vocab_size` wide and as many as `num_codebooks`.
    """
    from transformers import EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, T5Config

    text_config = T5Config(**{**dict(vocab_size=len(TINY_WORDS), d_model=text_hidden_size, d_kv=12, d_ff=64,
                                     num_layers=1, num_heads=4, pad_token_id=0, eos_token_id=1,
                                     decoder_start_token_id=0), **(text or {})})
    codec = {**dict(sampling_rate=16000, audio_channels=1, num_filters=4, hidden_size=16, upsampling_ratios=[8, 5, 4, 2],
                    codebook_dim=16, num_lstm_layers=1, num_residual_layers=1), **(audio or {})}
    # EnCodec's quantizer count is bandwidth / (frame rate x bits per code): ask for exactly K codebooks.
    frame_rate = codec["sampling_rate"] / math.prod(codec["upsampling_ratios"])
    bandwidth = num_codebooks * frame_rate * math.log2(vocab_size) / 1000
    audio_config = EncodecConfig(target_bandwidths=[bandwidth], codebook_size=vocab_size, **codec)
    decoder = MusicgenDecoderConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                                    num_attention_heads=num_heads, ffn_dim=ffn_dim or 4 * hidden_size,
                                    num_codebooks=num_codebooks, max_position_embeddings=max_positions,
                                    pad_token_id=vocab_size, bos_token_id=vocab_size, dropout=0.0)
    return MusicgenConfig(text_encoder=text_config.to_dict(), audio_encoder=audio_config.to_dict(),
                          decoder=decoder.to_dict())


def tiny_musicgen(seed: int = 0, device: str | torch.device = "cpu", **sizes):
    """(MusicgenForConditionalGeneration with random weights, tokenizer) of `musicgen_config(**sizes)`, built on
    `device`, with random EnCodec codebooks (randomize_codebooks)."""
    from transformers import MusicgenForConditionalGeneration

    torch.manual_seed(seed)
    config = musicgen_config(**sizes)
    vocab_size = config.decoder.vocab_size
    with torch.device(device):
        model = MusicgenForConditionalGeneration(config).eval()
    randomize_codebooks(model.audio_encoder, seed)
    model.generation_config.decoder_start_token_id = vocab_size
    model.generation_config.pad_token_id = vocab_size
    model.generation_config.bos_token_id = vocab_size
    model.generation_config.guidance_scale = 3.0  # facebook/musicgen-*'s: the default teacher gamma
    return model, tiny_tokenizer()


@torch.no_grad()
def randomize_codebooks(encodec, seed: int = 0, scale: float = 30.0) -> None:
    """Make a randomly initialised transformers EncodecModel decode different codes to different audio, in place.

    Its codebooks start as zeros (they are learned by k-means on real audio), so every code sequence
    would decode to the same waveform and any reward or metric computed on audio would be blind to
    the codes. Random codebooks fix that; the decoder's random biases are zeroed too, because they
    otherwise dominate the output (codes would move it by ~0.5 %). With `scale` 30 the audio of
    random codes has an RMS of ~0.025 and differs between code sequences by about its own size.
    """
    generator = torch.Generator().manual_seed(seed + 1)
    for layer in encodec.quantizer.layers:
        embed = scale * torch.randn(layer.codebook.embed.shape, generator=generator)
        layer.codebook.embed.copy_(embed)
        layer.codebook.embed_avg.copy_(embed)
        layer.codebook.cluster_size.fill_(1.0)
    for name, parameter in encodec.decoder.named_parameters():
        if name.endswith("bias"):
            parameter.zero_()


def save_tiny_musicgen(path: str | Path, **kwargs) -> Path:
    from musicgen_cfg.export import write_processor

    model, tokenizer = tiny_musicgen(**kwargs)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    write_processor(Path(path), model.config.to_dict())
    return Path(path)


def save_tiny_clap(path: str | Path, fusion: bool = False, seed: int = 0) -> Path:
    """A tiny random transformers CLAP (audio + text towers, 16-d projections), its feature extractor
    (1 s windows) and the word-level tokenizer: loads as `clap:PATH` and scores text against audio."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    torch.manual_seed(seed)
    config = ClapConfig(
        text_config=dict(vocab_size=99, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16, max_position_embeddings=64, projection_dim=16),
        audio_config=dict(window_size=4, num_mel_bins=32, spec_size=64, patch_size=4, patch_stride=(4, 4),
                          hidden_size=32, projection_dim=16, depths=[1, 1], num_attention_heads=[2, 2],
                          patch_embeds_hidden_size=16, enable_fusion=fusion, fusion_type="aff_2d" if fusion else None),
        projection_dim=16,
    )
    # 1-second windows at a coarse hop keep the spectrogram inside the tiny model's 64 x 64 input.
    extractor = ClapFeatureExtractor(feature_size=32, hop_length=960, max_length_s=1,
                                     truncation="fusion" if fusion else "rand_trunc")
    ClapModel(config).save_pretrained(path)
    extractor.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return Path(path)


if __name__ == "__main__":
    print(save_tiny_musicgen(sys.argv[1]))
