"""The finished distilled student as a hub-ready model directory (musicgen_cfg/export.py), with the model
card's metrics read from the run's metrics.csv; the last step of `musicgen-cfg train` (training/distillation.py).
"""

from dataclasses import asdict
from pathlib import Path

from musicgen_cfg.run_layout import final_export_dir
from musicgen_cfg.training import lora

STEP_TIMES = ("time_rollout", "time_reward", "time_teacher", "time_student")  # metrics.csv: the parts of a step


def export(distiller, model, config, run_dir: Path, command: str, provenance: dict) -> Path:
    """`model` (StudentWeights.export_model: the full student, LoRA merged) as a hub-ready model directory
    (musicgen_cfg/export.py) at the run's export place; with lora.export_adapter also the adapter."""
    from musicgen_cfg.export import export_model, machine

    logged = metric_rows(run_dir / "metrics.csv")
    training = {key: getattr(config, key) for key in ("steps", "prompts", "prompts_per_step", "generations",
                                                       "num_frames", "divergence", "lr", "embedder")}
    manifest = {"artifact": f"distilled student, beta={config.beta:g}", "rebuild_command": command,
                "config": asdict(config), "metrics_csv": str(run_dir / "metrics.csv"),
                "trained_on": machine(distiller.accelerator.device.type, config.threads,
                                      distiller.accelerator.num_processes),
                "step_seconds": round(step_seconds(logged, config.steps), 1)}
    out = export_model(model, final_export_dir(run_dir, config.export), {**provenance, "training": training},
                       manifest=manifest, metrics=final_metrics(logged))
    if config.lora is not None and config.lora.export_adapter:
        lora.export_adapter(distiller.student.lm, config.lora.export_adapter, {
            **manifest, "artifact": f"LoRA adapter of the distilled student, beta={config.beta:g} (merged: {out})",
            **provenance})
    return out


CARD_METRICS = {  # metrics.csv column -> how the model card names its last logged value
    "kl": "KL to the CFG teacher, last training step (nats per sequence)",
    "heldout_kl": "KL to the CFG teacher on held-out prompts (nats per sequence)",
    "reward_mean": "diversity reward, last training step",
    "heldout_diversity": "diversity on held-out prompts (reward embedder)",
    "heldout_music_rate": "fraction of held-out rollouts that pass the reward gate (not silent or degenerate)",
}


def metric_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a run's metrics.csv ([] when it has none)."""
    import csv

    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def step_seconds(rows: list[dict[str, str]], steps: int) -> float:
    """Time of a run's optimizer steps: `steps` x the mean logged step time (rollout, reward, teacher, student;
    resumed runs included, held-out evaluations and start-up not)."""
    times = [sum(float(row[k]) for k in STEP_TIMES) for row in rows if all(row.get(k) for k in STEP_TIMES)]
    return steps * sum(times) / len(times) if times else 0.0


def final_metrics(rows: list[dict[str, str]]) -> dict[str, float]:
    """The last logged value of each held-out metric and of the training KL / reward, for the model card."""
    found = {}
    for row in rows:
        for column, label in CARD_METRICS.items():
            if row.get(column) not in (None, ""):
                found[label] = float(row[column])
    return found
