"""musicgen-cfg: diversity-rewarded CFG distillation and weight merging for MusicGen-style models.

Start at `musicgen_cfg/cli.py` (the `musicgen-cfg` command) or README.md.
"""

__version__ = "0.1.0"
