"""Gradio demo: a quality <-> diversity slider over live-merged weights (`musicgen-cfg demo` / `app`).

Layer 6: imports every layer below (core, world, merging, rl, experiments' generate and evaluate).
"""
