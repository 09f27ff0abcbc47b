"""Codecs: codes [B, K, T] <-> waveform. encodec.py for real MusicGen, symbolic.py for the default model."""
