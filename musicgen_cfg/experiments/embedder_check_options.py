"""The options of `musicgen-cfg embedder check`, in a torch-free module so that its `--help` answers at once.

    musicgen-cfg embedder check --help

musicgen_cfg/experiments/embedder_check.py runs the check (and imports torch and rl/).
"""

from dataclasses import dataclass

from musicgen_cfg.config import REQUIRED, field
from musicgen_cfg.errors import UserError
from musicgen_cfg.experiments.evaluate_options import ENCODEC_EMBEDDING, JUDGES_SPEC


@dataclass(kw_only=True)
class EmbedderCheckArgs:
    """Options of `musicgen-cfg embedder check`: the embedder, the segments and the output."""

    spec: str = field(REQUIRED, f"embedder: default | DIR (of `embedder train`) | clap:<dir-or-id> | {JUDGES_SPEC} | "
                                f"{ENCODEC_EMBEDDING} (with --codec-model)", flag="spec", metavar="SPEC")
    codec_model: str | None = field(None, f"{ENCODEC_EMBEDDING}: the MusicGen checkpoint (dir or hub id) whose "
                                          f"EnCodec embeds the audio")
    segments: int = field(96, "test-split segments in all, spread evenly over the styles (at least 2 per style)")
    crop_seconds: float = field(8.0, "crop length at the style prompt's tempo (at most the whole 128-frame segment)")
    seed: int = field(0, "seed of the segments' order and crop starts")
    out: str | None = field(None, "output JSON; None = bench/results/embedder_check_<label>.json")
    threads: int = field(1, "torch CPU threads")

    def __post_init__(self):
        if self.segments < 2:
            raise UserError(f"--segments must be >= 2, got {self.segments}")
        if not self.crop_seconds > 0:
            raise UserError(f"--crop-seconds must be positive, got {self.crop_seconds}")
        if self.threads < 1:
            raise UserError(f"--threads must be >= 1, got {self.threads}")
        if (self.spec == ENCODEC_EMBEDDING) != (self.codec_model is not None):
            raise UserError(f"--codec-model goes with {ENCODEC_EMBEDDING}, and {ENCODEC_EMBEDDING} needs it")
