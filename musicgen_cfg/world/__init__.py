"""The offline default world: the 4-voice symbolic format, its codec and synthesizer, the corpus, the judges.

Layer 2: imports the model core (musicgen_cfg) only; nothing of training, rewards, merging or experiments.
"""
