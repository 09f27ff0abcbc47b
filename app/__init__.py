"""Gradio demo: a quality <-> diversity slider over live-merged weights."""
