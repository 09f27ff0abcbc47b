"""Idea 2, the diversity reward: music embedders, the pairwise 1 - cos reward and REINFORCE estimators.

Layer 3: imports the model core (musicgen_cfg) and the default world (musicgen_cfg.world); the trainer that uses
the reward (musicgen_cfg.training.distillation) sits above it.
"""
