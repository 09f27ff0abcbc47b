"""Training: run plumbing (run.py), LoRA and FSDP students, pretraining of the default base, and idea 1,
CFG distillation with the diversity reward (distillation.py: `musicgen-cfg train`).

Layer 4: imports the model core, the default world (musicgen_cfg.world) and the reward (rl).
"""
