"""Idea 3, weight merging: theta(lam) = (1 - lam) theta_q + lam theta_d, offline (streaming) and live.

Layer 2: imports the model core (musicgen_cfg) only: a merge reads and writes checkpoints, it trains nothing.
"""
