"""The options of `musicgen-cfg embedder train`, in a torch-free module so that its `--help` answers at once.

    musicgen-cfg embedder train --help

rl/train_embedder.py trains the embedder (and imports torch).
"""

from dataclasses import dataclass, field
from pathlib import Path

from musicgen_cfg.errors import UserError

LOSSES = ("infonce", "triplet")
KINDS = ("notes", "contrastive")


@dataclass
class EmbedderTrainConfig:
    """Optimisation settings of `musicgen-cfg embedder train` (the network is ContrastiveEmbedderConfig)."""

    kind: str | None = field(default=None, metadata={
        "help": "notes: the note-hearing embedder (a transcriber trained on rendered scores, --model default only; "
                "the shipped reward) | contrastive: the log-mel InfoNCE embedder (any audio); "
                "None = notes with --model default, contrastive with --audio-dir",
        "argparse": {"choices": list(KINDS)}})
    steps: int = field(default=800, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=32, metadata={"help": "clips per step; each gives one positive pair"})
    chunk_seconds: float = field(default=2.0, metadata={"help": "chunk length (s); clips need two of them"})
    lr: float = field(
        default=1e-3, metadata={"help": "peak AdamW learning rate (linear warmup, cosine decay)"}
    )
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=50, metadata={"help": "linear warmup steps"})
    loss: str = field(default="infonce", metadata={"help": "infonce or triplet (semi-hard negatives)"})
    temperature: float = field(default=0.1, metadata={"help": "InfoNCE softmax temperature"})
    margin: float = field(default=0.2, metadata={"help": "triplet margin in cosine distance"})
    heldout: int = field(default=128, metadata={"help": "clips held out for retrieval accuracy"})
    same_group_batches: float = field(
        default=0.5,
        metadata={
            "help": "fraction of batches drawn from one group of clips (--model default: one instrument), "
            "so that the notes must tell them apart"
        },
    )
    clips: int = field(default=3000, metadata={"help": "--model default: training clips to render"})
    clip_seconds: float = field(default=8.0, metadata={"help": "--model default: length of a rendered clip"})
    eval_every: int = field(default=100, metadata={"help": "steps between held-out evaluations"})
    seed: int = field(default=0, metadata={"help": "seed for the split, chunk sampling and initialisation"})

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise UserError("--batch-size must be >= 2: the other clips of the batch are the negatives")
        for name in ("chunk_seconds", "lr", "temperature", "margin", "clip_seconds"):
            if not getattr(self, name) > 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not 0 <= self.same_group_batches <= 1:
            raise UserError(f"--same-group-batches must be in [0, 1], got {self.same_group_batches}")
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise UserError("--warmup-steps and --weight-decay must be >= 0")
        if self.heldout < 2 or self.clips < 2:
            raise UserError(f"--heldout and --clips must be >= 2, got {self.heldout} and {self.clips}")
        if self.clip_seconds < 2 * self.chunk_seconds:
            raise UserError(
                f"--clip-seconds {self.clip_seconds} must hold two chunks of {self.chunk_seconds} s"
            )
        if self.kind is not None and self.kind not in KINDS:
            raise UserError(f"--kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.loss not in LOSSES:
            raise UserError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")


@dataclass(kw_only=True)
class EmbedderTrainArgs(EmbedderTrainConfig):
    """Options of `musicgen-cfg embedder train`: the clips' source, the output and the optimisation."""

    audio_dir: Path | None = field(default=None, metadata={"help": "train on the .wav/.flac files below this directory"})
    model: str | None = field(default=None, metadata={"help": "train on audio rendered from the default world",
                                                      "argparse": {"choices": ["default"]}})
    out: Path = field(metadata={"help": "output directory (replaced atomically)"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads"})

    def __post_init__(self):
        super().__post_init__()
        if (self.audio_dir is None) == (self.model is None):
            raise UserError("give the clips' source with --audio-dir DIR or --model default, one of the two")
        if self.kind is None:
            self.kind = "contrastive" if self.audio_dir is not None else "notes"
        if self.kind == "notes" and self.audio_dir is not None:
            raise UserError("--kind notes learns from rendered scores, whose notes are known: use --model default "
                            "(or --kind contrastive with --audio-dir)")
