"""Experiments: generate, evaluate, reproduce the paper's sweeps and claims, the embedder and judge checks.

Layer 5: imports every layer below (core, world, merging, rl, training); only the app and the command table
sit above it.
"""
