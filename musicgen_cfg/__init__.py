"""musicgen-cfg: diversity-rewarded CFG distillation and weight merging for MusicGen-style models.

The model core's public API (loaded on first use, so `import musicgen_cfg` and `musicgen-cfg --help`
stay free of torch):

    from musicgen_cfg import load_model, SamplingConfig
    model = load_model("default")   # or a checkpoint / run directory, or a hub id
    out = model.generate(["a joyful Irish jig"], seeds=[0], duration=8.0, sampling=SamplingConfig())

Layer 1, the model core (the modules of this folder): imports musicgen_cfg.codecs only. The subpackages above
it (world, training, experiments, cli) say their layers in their own docstrings; docs/architecture.md draws them. Commands: `musicgen-cfg --help`
(musicgen_cfg/cli/__init__.py).
"""

import importlib

__version__ = "0.1.0"

_API = {
    "load_model": "musicgen_cfg.model", "MusicGen": "musicgen_cfg.model", "resolve_spec": "musicgen_cfg.model",
    "SamplingConfig": "musicgen_cfg.sampler", "sample": "musicgen_cfg.sampler",
    "score": "musicgen_cfg.scoring", "Condition": "musicgen_cfg.cfg", "export_model": "musicgen_cfg.export",
    "UserError": "musicgen_cfg.errors",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'musicgen_cfg' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)
