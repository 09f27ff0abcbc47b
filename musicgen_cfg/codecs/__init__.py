"""Codecs: codes [B, K, T] <-> waveform (encodec.py: real MusicGen's 32 kHz EnCodec via transformers).

Layer 0: imports nothing of this project (the default world's symbolic codec lives in musicgen_cfg.world and is
reached through model.CODECS by name, never imported here).
"""
