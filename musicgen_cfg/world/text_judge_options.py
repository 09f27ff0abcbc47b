"""The options of `musicgen-cfg judges train-scorer`, in a torch-free module so that its `--help` answers
at once.

    musicgen-cfg judges train-scorer --help

musicgen_cfg/world/text_judge.py is the scorer and its training (and imports torch).
"""

from dataclasses import dataclass
from pathlib import Path

from musicgen_cfg.config import REBUILD_SHIPPED_HELP, check_output_path, field
from musicgen_cfg.errors import UserError
from musicgen_cfg.optim import OptimConfig, optim_option
from musicgen_cfg.prompts import MAX_SEED

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "assets" / "default" / "scorer"


@dataclass
class ScorerTrainConfig:
    """Options of `musicgen-cfg judges train-scorer`."""

    steps: int = optim_option("steps", 1000)
    batch_size: int = field(128, "(caption, segment) pairs per step; the other pairs are the negatives", min=2)
    pairs: int = field(8000, "training captions (each encoded once by MiniLM, the costly part)", min=1)
    transpose: int = field(6, "random transposition of a training piece, in semitones either way", min=0)
    lr: float = optim_option("lr", 2e-3)
    weight_decay: float = optim_option("weight_decay", 0.01)
    warmup_steps: int = optim_option("warmup", 50)
    eval_every: int = field(200, "steps between held-out evaluations", min=1)
    seed: int = field(0, "seed for the pairs, initialisation and batches", min=0, max=MAX_SEED)

    def __post_init__(self):
        if self.batch_size > self.pairs:
            raise UserError(f"--batch-size must be at most --pairs ({self.pairs}), got {self.batch_size}")

    def optim(self) -> OptimConfig:
        """The scorer's optimiser (musicgen_cfg/optim.py): decay to zero, no clipping."""
        return OptimConfig(steps=self.steps, lr=self.lr, warmup=self.warmup_steps, weight_decay=self.weight_decay)


@dataclass(kw_only=True)
class ScorerTrainArgs(ScorerTrainConfig):
    """Options of `musicgen-cfg judges train-scorer`: the optimisation, the data and the output."""

    out: Path = field(Path("runs/scorer"), "output directory (replaced atomically); the shipped scorer "
                      "(musicgen_cfg/assets/default/scorer) only with --rebuild-shipped")
    dataset: Path | None = field(None, "dataset .npz (default: the shipped one)")
    threads: int = field(1, "torch CPU threads", min=1)
    rebuild_shipped: bool = field(False, REBUILD_SHIPPED_HELP)

    def __post_init__(self):
        super().__post_init__()
        check_output_path(self.out, "--out", self.rebuild_shipped)
