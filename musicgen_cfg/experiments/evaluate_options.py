"""The options of `musicgen-cfg evaluate`, in a torch-free module so that its `--help` answers at once.

    musicgen-cfg evaluate --help

musicgen_cfg/experiments/evaluate.py runs the evaluation (and imports torch, the judges and rl/).
"""

from dataclasses import dataclass, fields
from pathlib import Path

from musicgen_cfg.config import REQUIRED, check_bounds, field
from musicgen_cfg.errors import UserError
from musicgen_cfg.prompts import MAX_SEED

WORLDS = ("auto", "default", "real")
JUDGES_SPEC = "judges"
SPECTRAL_SPEC = "spectral"  # rl/spectral_embedder.py; the same name as rl.embedders.SPECTRAL_SPEC (torch-free here)
ENCODEC_EMBEDDING = "encodec-emb"  # EnCodec's mean-pooled latents (musicgen_cfg/experiments/audio_metrics.py)


@dataclass
class EvaluateConfig:
    reward_embedder: str | None = field(
        None, "diversity-reward embedder used in training: default | DIR | clap:<dir-or-id> | none; None = default "
              "(default world) or none (real MusicGen: a beta = 0 run has no reward embedder)")
    heldout_embedder: str | None = field(
        None, f"held-out diversity embedder: {SPECTRAL_SPEC} | judges | {ENCODEC_EMBEDDING} | default | DIR | "
              f"clap:<dir-or-id>; None = {SPECTRAL_SPEC} (default world: fixed chroma / flux-interval / flux-rhythm "
              f"statistics, never trained) or {ENCODEC_EMBEDDING} (real MusicGen: its own codec, no download)")
    clap: str | None = field(None, "CLAP model (dir or hub id): text-audio score and CLAP diversity of real runs")
    judges_scorer: str | None = field(None, "default world: the judges' scorer directory; None = the shipped one")
    world: str = field("auto", "auto (from the run's model config) | default (symbolic codec) | real", choices=WORLDS)
    bootstrap: int = field(1000, "bootstrap resamples over prompts for the 95% CIs", min=1, max=100_000)
    seed: int = field(0, "bootstrap seed", min=0, max=MAX_SEED)
    reward_gate: str = field("data", "degenerate-clip gate of the diversity measures (rl/reward.py): data | data:Q | none")
    reference_dir: str | None = field(None, "real MusicGen: folder of reference audio (wav/flac/ogg) for FAD and KAD")

    def __post_init__(self):
        from rl.reward import parse_gate_spec  # here, not at the top: rl/ imports torch, --help must not

        # Built in code too (reproduce, tests), not only from options already checked: the declared bounds again.
        check_bounds(EvaluateConfig, {f.name: getattr(self, f.name) for f in fields(EvaluateConfig)})
        parse_gate_spec(self.reward_gate)
        if self.clap is not None:
            from musicgen_cfg.model import looks_like_hub_id  # torch, like rl/ above

            if not Path(self.clap).expanduser().is_dir() and not looks_like_hub_id(self.clap):
                raise UserError(f"--clap {self.clap}: no such directory, and not a hub id (owner/name)")
        if self.reward_embedder == JUDGES_SPEC:
            raise UserError("the judges are the held-out embedder; the reward embedder is the one training used")


@dataclass(kw_only=True)
class EvaluateArgs(EvaluateConfig):
    """Options of `musicgen-cfg evaluate`: the runs, the metrics' settings and the CSV."""

    runs: tuple[str, ...] = field(REQUIRED, "directories written by `musicgen-cfg generate`, or folders of them "
                                            "(a demo session)", flag="runs", metavar="RUN_DIR")
    out: str | None = field(None, "also write one CSV with every run's metrics")
    force: bool = field(False, "recompute even when metrics.json is up to date")
