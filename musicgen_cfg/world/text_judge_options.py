"""The options of `musicgen-cfg judges train-scorer`, in a torch-free module so that its `--help` answers
at once.

    musicgen-cfg judges train-scorer --help

musicgen_cfg/world/text_judge.py is the scorer and its training (and imports torch).
"""

from dataclasses import dataclass
from pathlib import Path

from musicgen_cfg.config import field
from musicgen_cfg.errors import UserError

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "assets" / "default" / "scorer"


@dataclass
class ScorerTrainConfig:
    """Options of `musicgen-cfg judges train-scorer`."""

    steps: int = field(1000, "optimizer steps")
    batch_size: int = field(128, "(caption, segment) pairs per step; the other pairs are the negatives")
    pairs: int = field(8000, "training captions (each encoded once by MiniLM, the costly part)")
    transpose: int = field(6, "random transposition of a training piece, in semitones either way")
    lr: float = field(2e-3, "peak AdamW learning rate (linear warmup, cosine decay)")
    weight_decay: float = field(0.01, "AdamW weight decay")
    warmup_steps: int = field(50, "linear warmup steps")
    eval_every: int = field(200, "steps between held-out evaluations")
    seed: int = field(0, "seed for the pairs, initialisation and batches")

    def __post_init__(self):
        for name in ("steps", "pairs", "eval_every"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 2 <= self.batch_size <= self.pairs:
            raise UserError(f"--batch-size must be in 2..pairs ({self.pairs}), got {self.batch_size}")
        if self.transpose < 0 or self.warmup_steps < 0 or self.weight_decay < 0:
            raise UserError("--transpose, --warmup-steps and --weight-decay must be >= 0")
        if not self.lr > 0:
            raise UserError(f"--lr must be positive, got {self.lr}")


@dataclass(kw_only=True)
class ScorerTrainArgs(ScorerTrainConfig):
    """Options of `musicgen-cfg judges train-scorer`: the optimisation, the data and the output."""

    out: Path = field(DEFAULT_DIR, "output directory (replaced atomically)")
    dataset: Path | None = field(None, "dataset .npz (default: the shipped one)")
    threads: int = field(1, "torch CPU threads")
