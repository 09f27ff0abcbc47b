"""The options of `musicgen-cfg embedder train`, in a torch-free module so that its `--help` answers at once.

    musicgen-cfg embedder train --help

rl/train_embedder.py trains the embedder (and imports torch); rl/train_note_embedder.py the note embedder.
"""

from dataclasses import dataclass
from pathlib import Path

from musicgen_cfg.config import REBUILD_SHIPPED_HELP, check_output_path, field
from musicgen_cfg.errors import UserError
from musicgen_cfg.optim import OptimConfig, optim_option
from musicgen_cfg.prompts import MAX_SEED

LOSSES = ("infonce", "triplet")
KINDS = ("notes", "contrastive")


@dataclass
class EmbedderTrainConfig:
    """Optimisation settings of `musicgen-cfg embedder train` (the networks: NoteEmbedderConfig, ContrastiveEmbedderConfig)."""

    kind: str | None = field(None, "notes: the note-hearing embedder (a transcriber trained on rendered scores, "
                             "--model default only; the shipped reward) | contrastive: the log-mel InfoNCE embedder "
                             "(any audio); None = notes with --model default, contrastive with --audio-dir",
                             choices=KINDS)
    steps: int = optim_option("steps", 800)
    batch_size: int = field(32, "clips per step (contrastive: each gives one positive pair)", min=2)
    chunk_seconds: float = field(2.0, "chunk length (s) of the held-out retrieval (contrastive: of the positives); "
                                 "clips need two of them", gt=0.0, max=60.0)
    lr: float = optim_option("lr", 1e-3)
    weight_decay: float = optim_option("weight_decay", 1e-4)
    warmup_steps: int = optim_option("warmup", 50)
    loss: str = field("infonce", "contrastive: infonce or triplet (semi-hard negatives)", choices=LOSSES)
    temperature: float = field(0.1, "contrastive: InfoNCE softmax temperature", gt=0.0)
    margin: float = field(0.2, "contrastive: triplet margin in cosine distance", gt=0.0, max=2.0)
    heldout: int = field(128, "clips held out for the retrieval accuracy (notes: and the onset F1)", min=2)
    same_group_batches: float = field(0.5, "contrastive: fraction of batches drawn from one group of clips (--model "
                                      "default: one instrument), so that the notes must tell them apart", min=0.0, max=1.0)
    clips: int = field(3000, "--model default: training clips to render", min=2, max=100_000)
    clip_seconds: float = field(8.0, "--model default: length of a rendered clip", gt=0.0, max=60.0)
    eval_every: int = field(100, "steps between held-out evaluations", min=1)
    seed: int = field(0, "seed for the split, chunk sampling and initialisation", min=0, max=MAX_SEED)

    def __post_init__(self):
        if self.clip_seconds < 2 * self.chunk_seconds:
            raise UserError(
                f"--clip-seconds {self.clip_seconds} must hold two chunks of {self.chunk_seconds} s"
            )

    def optim(self) -> OptimConfig:
        """Either embedder's optimiser (musicgen_cfg/optim.py): decay to zero, no clipping."""
        return OptimConfig(steps=self.steps, lr=self.lr, warmup=self.warmup_steps, weight_decay=self.weight_decay)


@dataclass(kw_only=True)
class EmbedderTrainArgs(EmbedderTrainConfig):
    """Options of `musicgen-cfg embedder train`: the clips' source, the output and the optimisation."""

    audio_dir: Path | None = field(None, "train on the .wav/.flac files below this directory")
    model: str | None = field(None, "train on audio rendered from the default world", choices=("default",))
    out: Path = field(Path("runs/embedder"), "output directory (replaced atomically); the shipped reward embedder "
                      "(musicgen_cfg/assets/default/embedder) only with --rebuild-shipped")
    threads: int = field(1, "torch CPU threads", min=1)
    rebuild_shipped: bool = field(False, REBUILD_SHIPPED_HELP)

    def __post_init__(self):
        super().__post_init__()
        if (self.audio_dir is None) == (self.model is None):
            raise UserError("give the clips' source with --audio-dir DIR or --model default, one of the two")
        if self.kind is None:
            self.kind = "contrastive" if self.audio_dir is not None else "notes"
        if self.kind == "notes" and self.audio_dir is not None:
            raise UserError("--kind notes learns from rendered scores, whose notes are known: use --model default "
                            "(or --kind contrastive with --audio-dir)")
        check_output_path(self.out, "--out", self.rebuild_shipped)
