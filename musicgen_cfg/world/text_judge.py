"""The default world's text-music contrastive scorer ("MuLan-style"), an evaluation judge only.

    musicgen-cfg judges train-scorer [--out musicgen_cfg/assets/default/scorer] [--steps N] [--threads 1] ...

Two towers map a caption and a 4-voice segment into one unit-vector space:
- text: the frozen all-MiniLM-L6-v2 sentence embedding (token states mean-pooled over the mask, then
  L2-normalised, as sentence-transformers does) -> a 2-layer MLP projection;
- music: codes [N, 4, T] -> voice-specific token embeddings summed over voices -> a strided stem
  convolution (one step per quarter note) -> residual dilated convolutions (receptive field
  about 8 bars of 4/4) -> mean and max pooling over time -> projection.
Trained with the symmetric CLIP InfoNCE loss on (caption, segment) pairs of the TRAIN split only: pieces
drawn style-balanced, each transposed at random (the caption's key follows) and captioned with a random
paraphrase; every step pairs the caption with a random segment of its piece (MiniLM encodes each
caption once, the costly part). The music tower is also the fixed embedding of the FAD-style distance and of held-out
diversity (`embed_codes`). Finetuning never sees this model.

Held-out accuracy (test split, one seeded caption per segment, untransposed) is measured and written
into manifest.json: top-1 retrieval of the segment from its caption among random groups of 32 test
segments, and how often a segment's own caption scores above a caption of another segment.
"""

from __future__ import annotations

import math
import random
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from musicgen_cfg.checkpoint import (
    WEIGHTS_NAME,
    atomic_directory,
    file_sha256,
    load_tensors,
    read_json,
    save_tensors,
    write_json,
)
from musicgen_cfg.config import field
from musicgen_cfg.errors import UserError
from musicgen_cfg.optim import build_optimizer, check_finite
from musicgen_cfg.world import symbolic
from musicgen_cfg.world.text_judge_options import DEFAULT_DIR, ScorerTrainArgs, ScorerTrainConfig

TEXT_DIM = 384  # all-MiniLM-L6-v2 hidden size
RETRIEVAL_GROUP = 32  # held-out retrieval: one caption against this many segments
MAX_SIZE_BYTES = 5 * 1024 * 1024


@dataclass
class ScorerConfig:
    """The scorer network (saved as config.json)."""

    dim: int = field(128, "size of the shared embedding space")
    width: int = field(96, "channels of the music tower and hidden size of the text projection")
    stride: int = field(4, "frames per step after the music tower's stem convolution (kernel 2 * stride)")
    dilations: tuple[int, ...] = field((1, 2, 4, 8), "one residual kernel-3 convolution per dilation, "
                                       "after the stem")

    def __post_init__(self):
        self.dilations = tuple(int(d) for d in self.dilations)
        if self.dim < 2 or self.width < 2 or self.stride < 1:
            raise UserError(f"scorer dim, width must be >= 2 and stride >= 1, got {self.dim}, {self.width}, "
                            f"{self.stride}")
        if not self.dilations or min(self.dilations) < 1:
            raise UserError(f"scorer dilations must be positive, got {self.dilations}")


class _Residual(nn.Module):
    def __init__(self, width: int, dilation: int):
        super().__init__()
        self.norm = nn.GroupNorm(1, width)
        self.conv = nn.Conv1d(width, width, 3, padding=dilation, dilation=dilation)

    def forward(self, x):
        return x + self.conv(F.gelu(self.norm(x)))


class ContrastiveScorer(nn.Module):
    """Text tower (on MiniLM sentence embeddings) + music tower (on codes), both -> unit vectors [N, dim]."""

    def __init__(self, config: ScorerConfig | None = None):
        super().__init__()
        self.config = config or ScorerConfig()
        width = self.config.width
        self.text_proj = nn.Sequential(nn.Linear(TEXT_DIM, width), nn.GELU(), nn.Linear(width, self.config.dim))
        self.token_embed = nn.EmbeddingBag(symbolic.NUM_VOICES * symbolic.CARDINALITY, width, mode="sum")
        stride = self.config.stride
        # The stem sees two strides of 16ths, so onset positions inside a beat survive the downsampling.
        self.stem = nn.Conv1d(width, width, 2 * stride, stride=stride, padding=stride // 2)
        self.blocks = nn.Sequential(*[_Residual(width, d) for d in self.config.dilations])
        self.music_proj = nn.Linear(2 * width, self.config.dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.register_buffer("voice_offset", torch.arange(symbolic.NUM_VOICES) * symbolic.CARDINALITY,
                             persistent=False)
        self._text_encoder = None

    def music(self, codes: torch.Tensor) -> torch.Tensor:
        """codes long [N, 4, T] -> unit vectors [N, dim]."""
        n, voices, frames = codes.shape
        tokens = (codes + self.voice_offset[None, :, None]).transpose(1, 2).reshape(n * frames, voices)
        x = self.token_embed(tokens).view(n, frames, -1)  # voice-specific embeddings summed over voices
        x = self.blocks(self.stem(x.transpose(1, 2)))  # [N, width, ~T / stride]
        pooled = torch.cat([x.mean(-1), x.amax(-1)], dim=-1)
        return F.normalize(self.music_proj(pooled), dim=-1)

    def text(self, sentence: torch.Tensor) -> torch.Tensor:
        """MiniLM sentence embeddings [N, 384] -> unit vectors [N, dim]."""
        return F.normalize(self.text_proj(sentence), dim=-1)

    def sentence_embeddings(self, prompts: list[str], batch: int = 64) -> torch.Tensor:
        """Prompts -> frozen MiniLM sentence embeddings [N, 384] (the encoder is loaded on first use and
        memoises prompts: an evaluation scores the same prompts at every guidance scale)."""
        if self._text_encoder is None:
            from musicgen_cfg.conditioning import minilm_text_encoder

            self._text_encoder = minilm_text_encoder(cache_size=8192)
        return minilm_sentence_embeddings(self._text_encoder, prompts, batch)

    @torch.no_grad()
    def embed_codes(self, codes, batch: int = 256) -> np.ndarray:
        """codes int [N, 4, T] (numpy or torch) -> float32 unit vectors [N, dim]."""
        codes = torch.as_tensor(np.asarray(codes), dtype=torch.long)
        if codes.ndim != 3 or codes.shape[1] != symbolic.NUM_VOICES:
            raise UserError(f"codes must have shape [N, {symbolic.NUM_VOICES}, T], got {list(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= symbolic.CARDINALITY):
            raise UserError(f"codes must lie in [0, {symbolic.CARDINALITY}), got {codes.min()}..{codes.max()}")
        if len(codes) == 0:
            return np.zeros((0, self.config.dim), np.float32)
        return torch.cat([self.music(part) for part in codes.split(batch)]).numpy()

    @torch.no_grad()
    def embed_prompts(self, prompts: list[str]) -> np.ndarray:
        """Prompts -> float32 unit vectors [N, dim]."""
        if not prompts:
            return np.zeros((0, self.config.dim), np.float32)
        return self.text(self.sentence_embeddings(list(prompts))).numpy()

    def save(self, directory: Path, manifest: dict) -> str:
        """Atomically write config.json, model.safetensors and manifest.json (+ weights sha256); returns it."""
        with atomic_directory(directory) as tmp:
            write_json(asdict(self.config), tmp / "config.json")
            save_tensors(self.state_dict(), tmp / WEIGHTS_NAME)
            digest = file_sha256(tmp / WEIGHTS_NAME)
            write_json({**manifest, "weights_sha256": digest}, tmp / "manifest.json")
        return digest

    @classmethod
    def load(cls, directory: str | Path | None = None) -> ContrastiveScorer:
        directory = Path(directory) if directory is not None else DEFAULT_DIR
        data = read_json(directory / "config.json")
        try:
            config = ScorerConfig(**data)
        except TypeError as err:
            raise UserError(f"{directory / 'config.json'} is not a scorer config: {err}") from None
        model = cls(config)
        try:
            model.load_state_dict(load_tensors(directory / WEIGHTS_NAME))
        except RuntimeError as err:
            raise UserError(f"scorer weights in {directory} do not match its config: "
                            f"{str(err).splitlines()[0]}") from None
        return model.eval()


def minilm_sentence_embeddings(text_encoder, prompts: list[str], batch: int = 64) -> torch.Tensor:
    """Mean-pooled, L2-normalised MiniLM token states [N, 384]; prompts are batched by length (less padding)."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = torch.zeros((len(prompts), TEXT_DIM))
    for start in range(0, len(order), batch):
        rows = order[start : start + batch]
        cond = text_encoder.encode([prompts[i] for i in rows])
        mask = cond.mask.unsqueeze(-1).float()
        pooled = (cond.hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        out[rows] = F.normalize(pooled.float().cpu(), dim=-1)
    return out


def clip_loss(text: torch.Tensor, music: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of pairs: unit vectors [B, D] each, row i of both is a pair."""
    logits = logit_scale.clamp(max=math.log(100.0)).exp() * text @ music.T
    targets = torch.arange(len(text), device=text.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


# ------------------------------------------------------------------------------------------------ data


@dataclass
class Pairs:
    """Training pairs: a caption of a whole piece, paired at each step with a random segment of that piece
    (captions describe pieces, not segments), every segment shifted by the pair's transposition."""

    segments: torch.Tensor  # long [S, 4, T]: all segments of the split, untransposed
    rows: list[np.ndarray]  # per pair: the rows of `segments` from its piece
    shifts: torch.Tensor  # long [P]: semitones, valid for every segment of the piece
    captions: list[str]  # [P]

    def batch(self, pairs: torch.Tensor, rng: random.Random) -> torch.Tensor:
        """Codes long [B, 4, T] for pair indices [B]: one random segment of each pair's piece, transposed."""
        rows = torch.tensor([int(rng.choice(self.rows[int(i)])) for i in pairs])
        codes = self.segments[rows]
        return codes + self.shifts[pairs][:, None, None] * (codes >= 2)


def training_pairs(dataset, count: int, transpose: int, seed: int) -> Pairs:
    """`count` (piece, transposition, caption) pairs of `dataset`: pieces drawn through their segments
    with style-balanced weights, shifts uniform in [-transpose, transpose] within the piece's range."""
    rng = random.Random(seed)
    segments = dataset.codes()
    piece_of = dataset.arrays["segment_piece"][dataset.rows]
    piece_rows = {int(piece): np.flatnonzero(piece_of == piece) for piece in np.unique(piece_of)}
    indices = np.random.default_rng(seed).choice(len(dataset), size=count, p=dataset.style_balanced_weights())
    rows, shifts, captions = [], [], []
    for i in indices.tolist():
        members = piece_rows[int(piece_of[i])]
        lowest, highest = symbolic.transposition_range(segments[members])
        shift = rng.randint(max(lowest, -transpose), min(highest, transpose)) if lowest <= highest else 0
        rows.append(members)
        shifts.append(shift)
        captions.append(dataset.sample_caption(i, rng, shift))
    return Pairs(torch.from_numpy(segments.astype(np.int64)), rows, torch.tensor(shifts), captions)


def heldout_captions(dataset, seed: int = 0) -> list[str]:
    """One deterministic caption per segment of `dataset` (untransposed)."""
    rng = random.Random(seed)
    return [dataset.sample_caption(i, rng) for i in range(len(dataset))]


@torch.no_grad()
def heldout_accuracy(model: ContrastiveScorer, codes: torch.Tensor, sentences: torch.Tensor, seed: int = 0) -> dict:
    """Held-out metrics of (segment, caption) pairs: codes long [N, 4, T], sentence embeddings [N, 384].

    retrieval_top1: a caption finds its segment among a random group of RETRIEVAL_GROUP segments (chance
    1/32); own_vs_other: a segment scores its own caption above a random other segment's caption (chance
    0.5; captions of two segments of the same piece can be identical, so 1.0 is out of reach).
    """
    was_training = model.training
    model.eval()
    music = torch.cat([model.music(part) for part in codes.split(256)])
    text = model.text(sentences)
    model.train(was_training)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(codes), generator=generator)
    hits, total = 0, 0
    for group in order.split(RETRIEVAL_GROUP):
        if len(group) < 2:
            continue
        scores = text[group] @ music[group].T
        hits += int((scores.argmax(1) == torch.arange(len(group))).sum())
        total += len(group)
    other = (torch.arange(len(codes)) + torch.randint(1, len(codes), (len(codes),), generator=generator)) % len(codes)
    own = (text * music).sum(-1)
    versus = (text[other] * music).sum(-1)
    return {"retrieval_top1": hits / max(total, 1), "retrieval_chance": 1 / RETRIEVAL_GROUP,
            "own_vs_other": float((own > versus).float().mean()), "segments": len(codes)}


# ---------------------------------------------------------------------------------------------- training


def train(model: ContrastiveScorer, pairs: Pairs, sentences: torch.Tensor, heldout: tuple, config:
          ScorerTrainConfig, log=print) -> dict:
    """Optimise `model` in place on `pairs` with their captions' sentence embeddings [P, 384]; heldout =
    (codes long [N, 4, T], sentences [N, 384]) of the test split.
    Returns {'losses', 'heldout': {step: metrics}, 'train_seconds'}."""
    generator = torch.Generator().manual_seed(config.seed)
    rng = random.Random(config.seed)
    optimizer, scheduler = build_optimizer(model.parameters(), config.optim())
    losses, evaluations, started = [], {}, time.perf_counter()
    model.train()
    for step in range(1, config.steps + 1):
        batch = torch.randperm(len(sentences), generator=generator)[: config.batch_size]
        loss = clip_loss(model.text(sentences[batch]), model.music(pairs.batch(batch, rng)), model.logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        check_finite(step, {"contrastive loss": loss}, model.parameters())
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % config.eval_every == 0 or step == config.steps:
            evaluations[step] = heldout_accuracy(model, *heldout)
            recent = losses[-config.eval_every :]
            log(f"step {step}/{config.steps}: loss {sum(recent) / len(recent):.3f}, held-out retrieval top-1 "
                f"{evaluations[step]['retrieval_top1']:.3f} (chance {1 / RETRIEVAL_GROUP:.3f}), own caption above "
                f"another {evaluations[step]['own_vs_other']:.3f} ({time.perf_counter() - started:.0f}s)")
    model.eval()
    return {"losses": losses, "heldout": evaluations, "train_seconds": round(time.perf_counter() - started, 1)}


def rebuild_command(args: ScorerTrainArgs, config: ScorerTrainConfig) -> str:
    """The command line that reproduces this run, every setting explicit (results depend on --threads)."""
    options = []
    for name, value in asdict(config).items():
        options += [f"--{name.replace('_', '-')}", str(value)]
    if args.dataset is not None:
        options += ["--dataset", str(args.dataset)]
    out = Path(args.out).resolve()
    shown_out = out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out
    return shlex.join(["musicgen-cfg", "judges", "train-scorer", "--out", str(shown_out), *options,
                       "--threads", str(args.threads), *(["--rebuild-shipped"] if args.rebuild_shipped else [])])


def run_train(args: ScorerTrainArgs) -> int:
    from musicgen_cfg.conditioning import minilm_text_encoder
    from musicgen_cfg.world.corpus import DEFAULT_PATH, load_dataset

    torch.set_num_threads(args.threads)  # the machines are shared: one core unless asked otherwise
    config = ScorerTrainConfig(**{name: getattr(args, name) for name in ScorerTrainConfig.__dataclass_fields__})
    dataset_path = Path(args.dataset) if args.dataset is not None else DEFAULT_PATH
    say = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    started = time.perf_counter()
    dataset_sha256 = file_sha256(dataset_path)  # now, not at the end: the file may be rebuilt meanwhile
    train_set, test_set = load_dataset("train", dataset_path), load_dataset("test", dataset_path)
    pairs = training_pairs(train_set, config.pairs, config.transpose, config.seed)
    text_encoder = minilm_text_encoder()
    sentences = minilm_sentence_embeddings(text_encoder, pairs.captions)
    test_sentences = minilm_sentence_embeddings(text_encoder, heldout_captions(test_set))
    prepare_seconds = round(time.perf_counter() - started, 1)
    say(f"{len(pairs.captions)} training pairs, {len(test_set)} held-out test segments ({prepare_seconds}s to encode)")
    torch.manual_seed(config.seed)
    model = ContrastiveScorer()
    metrics = train(model, pairs, sentences,
                    (torch.from_numpy(test_set.codes().astype(np.int64)), test_sentences), config, log=say)
    final = metrics["heldout"][config.steps]
    manifest = {
        "artifact": "default-world text-music contrastive scorer (evaluation judge; never used in finetuning)",
        "command": rebuild_command(args, config),
        "config": asdict(config),
        "dataset_sha256": dataset_sha256,
        "train_split": "train", "heldout_split": "test",
        "parameters": sum(p.numel() for p in model.parameters()),
        "prepare_seconds": prepare_seconds, "train_seconds": metrics["train_seconds"],
        "threads": args.threads, "torch": torch.__version__,
        "final_loss": float(np.mean(metrics["losses"][-config.eval_every :])),
        "heldout": final, "heldout_by_step": {str(k): v for k, v in metrics["heldout"].items()},
    }
    digest = model.save(Path(args.out), manifest)
    size = (Path(args.out) / WEIGHTS_NAME).stat().st_size
    if size > MAX_SIZE_BYTES:
        say(f"warning: {Path(args.out) / WEIGHTS_NAME} is {size / 2**20:.1f} MB, over the 5 MB budget")
    say(f"saved {args.out} (model.safetensors sha256 {digest}); held-out retrieval top-1 "
        f"{final['retrieval_top1']:.3f}, own caption above another {final['own_vs_other']:.3f}")
    return 0
