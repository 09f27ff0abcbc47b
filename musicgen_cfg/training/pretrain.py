"""`musicgen-cfg pretrain`: train the embedded default model (the base theta_0) on the music21 corpus.

    musicgen-cfg pretrain --config configs/default_base.yaml            # ~1 h on 2 CPU cores
    musicgen-cfg pretrain --config configs/default_base.yaml --resume   # continue a killed run

Teacher-forced cross-entropy over all 4 codebooks (delay pattern undone by scoring.score), with
per-sample condition dropout so that the model also learns the unconditional distribution that
classifier-free guidance needs. Captions are re-drawn from paraphrase templates each time, each
attribute (style, instrument, key, meter, texture, tempo) left out with its own probability
(`caption_drop_*`, captions.CaptionDropout), and segments are transposed (the caption's key follows). The final
weights are written to OUT/final (or --export) as a checkpoint with a manifest (command, config, dataset hash,
weights sha256); into the shipped musicgen_cfg/assets/ only with --rebuild-shipped true (make gpu-recipe).
"""

import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import MusicgenDecoderConfig

from musicgen_cfg.cfg import drop_condition
from musicgen_cfg.checkpoint import (
    atomic_directory,
    file_sha256,
    weight_file_hashes,
    write_json,
)
from musicgen_cfg.config import check_output_path, field
from musicgen_cfg.errors import UserError
from musicgen_cfg.export import machine
from musicgen_cfg.optim import OptimConfig, build_optimizer, check_finite, optim_option
from musicgen_cfg.prompts import MAX_SEED
from musicgen_cfg.run_layout import final_export_dir
from musicgen_cfg.scoring import score
from musicgen_cfg.training.run import (
    MetricsLog,
    TrainerState,
    load_checkpoint,
    resume_point,
    run_option,
    save_checkpoint,
    write_run_info,
)
from musicgen_cfg.training.student_weights import StudentWeights


@dataclass
class PretrainConfig:
    out: str = field("runs/default-base", "run directory (checkpoints, metrics.csv, tensorboard)")
    dataset: str | None = field(None, "dataset .npz; default: the shipped musicgen_cfg/assets/default/dataset.npz", fixed=True)
    hidden_size: int = field(256, "decoder width", min=1, fixed=True)
    num_layers: int = field(4, "decoder layers", min=1, fixed=True)
    num_heads: int = field(4, "attention heads", min=1, fixed=True)
    ffn_dim: int = field(1024, "MLP width", min=1, fixed=True)
    max_positions: int = field(1024, "longest sequence in decoder steps (frames + 3)", min=1)
    dropout: float = field(0.1, "residual dropout", min=0.0, lt=1.0, fixed=True)
    steps: int = optim_option("steps", 3000)
    batch_size: int = field(32, "segments per step", min=1, fixed=True)
    lr: float = optim_option("lr", 1e-3, fixed=True)
    warmup: int = optim_option("warmup", 200, fixed=True)
    weight_decay: float = optim_option("weight_decay", 0.01, fixed=True)
    grad_clip: float = optim_option("clip", 1.0, fixed=True)
    cond_dropout: float = field(0.2, "probability of replacing a caption by the null condition (for CFG)", min=0.0, lt=1.0, fixed=True)
    caption_drop_style: float = field(0.0, "probability that a caption leaves out the style / dance-form name")
    caption_drop_instrument: float = field(0.0, "probability that a caption leaves out the instrument")
    caption_drop_key: float = field(0.15, "probability that a caption leaves out the key")
    caption_drop_meter: float = field(0.5, "probability that a caption leaves out the meter")
    caption_drop_texture: float = field(0.5, "probability that a caption leaves out the texture (number of parts)")
    caption_drop_tempo: float = field(0.1, "probability that a caption leaves out the tempo")
    transpose: int = field(5, "random transposition range in semitones (caption key follows)", min=0)
    style_balance: float = field(0.5, "segment sampling: style share ∝ count^(1 - style_balance); 0 = as in the data, 1 = all styles equal",
                                 min=0.0, max=1.0)
    guidance_scale: float = field(3.0, "teacher CFG gamma recorded in the model config (set from the gamma sweep)", min=0.0, fixed=True)
    seed: int = field(0, "seed for init, data order, dropout", min=0, max=MAX_SEED, fixed=True)
    log_every: int = run_option("log_every", 10)
    eval_every: int = field(250, "steps between validation losses", min=1)
    eval_segments: int = field(256, "validation segments per evaluation", min=1)
    checkpoint_every: int = run_option("checkpoint_every", 250)
    keep_last: int = run_option("keep_last", 2)
    threads: int = run_option("threads", 2)
    device: str = run_option("device", "auto")
    export: str | None = field(None, "where the final model is written as a checkpoint with manifest.json; None = OUT/final")
    rebuild_shipped: bool = run_option("rebuild_shipped", False)

    def __post_init__(self):
        for key in ("out", "export"):
            check_output_path(getattr(self, key), key, self.rebuild_shipped)
        if self.hidden_size % self.num_heads:
            raise UserError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        try:
            self.caption_dropout()
        except ValueError as err:
            raise UserError(str(err).replace("caption dropout of ", "caption_drop_")) from None

    def optim(self) -> OptimConfig:
        """The base model's optimiser (musicgen_cfg/optim.py): AdamW betas (0.9, 0.95), decay to 0.1 x lr, as the
        shipped base was trained (not options: its manifest's rebuild command must stay true)."""
        return OptimConfig(steps=self.steps, lr=self.lr, warmup=self.warmup, floor=0.1, weight_decay=self.weight_decay,
                           clip=self.grad_clip, betas=(0.9, 0.95))

    def caption_dropout(self):
        """The per-attribute caption dropout of the training captions (captions.CaptionDropout)."""
        from musicgen_cfg.world.captions import CaptionDropout

        return CaptionDropout(style=self.caption_drop_style, instrument=self.caption_drop_instrument,
                              key=self.caption_drop_key, meter=self.caption_drop_meter,
                              texture=self.caption_drop_texture, tempo=self.caption_drop_tempo)


def decoder_config(config: PretrainConfig) -> MusicgenDecoderConfig:
    from musicgen_cfg.world.symbolic import CARDINALITY, NUM_VOICES

    return MusicgenDecoderConfig(
        vocab_size=CARDINALITY, num_codebooks=NUM_VOICES, hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads, ffn_dim=config.ffn_dim,
        max_position_embeddings=config.max_positions, dropout=config.dropout, pad_token_id=CARDINALITY,
        bos_token_id=CARDINALITY, decoder_start_token_id=CARDINALITY,
    )


def style_cumulative_weights(dataset, style_balance: float) -> list[float]:
    """Cumulative per-segment sampling weights giving each style a share ∝ count^(1 - style_balance).

    Palestrina and German folk songs are over half the corpus; full balancing would instead repeat
    the few hundred English folk segments endlessly, so the default (0.5) is the square-root middle.
    """
    _, inverse, counts = np.unique(dataset.styles, return_inverse=True, return_counts=True)
    return np.cumsum(counts[inverse].astype(np.float64) ** -style_balance).tolist()


def draw_batch(dataset, batch_size: int, rng: random.Random, cum_weights: list[float],
               dropout=None) -> tuple[torch.Tensor, list[str]]:
    """Random segments, each randomly transposed, with a freshly drawn caption: codes [B, 4, T], captions.

    dropout: the per-attribute caption dropout (captions.CaptionDropout; None = the default)."""
    codes, captions = [], []
    for i in rng.choices(range(len(dataset)), cum_weights=cum_weights, k=batch_size):
        shift = dataset.random_transpose(i, rng) if dataset.augment_semitones else 0
        segment, _ = dataset.get(i, shift)
        codes.append(torch.from_numpy(segment.astype(np.int64)))
        captions.append(dataset.sample_caption(i, rng, shift, dropout))
    return torch.stack(codes), captions


def token_cross_entropy(lm, codes: torch.Tensor, cond) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean CE over all valid (codebook, frame) tokens; also per-codebook CE [K]."""
    scores = score(lm, codes, cond)
    ce = F.cross_entropy(scores.logits.flatten(0, 2).float(), codes.flatten(), reduction="none").view(codes.shape)
    mask = scores.mask.float()
    return (ce * mask).sum() / mask.sum(), (ce * mask).sum(dim=(0, 2)) / mask.sum(dim=(0, 2))


@torch.no_grad()
def validation_loss(model, segments: torch.Tensor, captions: list[str], batch_size: int) -> float:
    model.lm.eval()
    total = 0.0
    for start in range(0, len(segments), batch_size):
        chunk = segments[start : start + batch_size]
        loss, _ = token_cross_entropy(model.lm, chunk.to(model.device), model.condition(captions[start : start + batch_size]))
        total += loss.item() * len(chunk)
    return total / len(segments)


def create_symbolic_model(decoder_config: MusicgenDecoderConfig, guidance_scale: float, seed: int = 0):
    """A freshly initialised default-world model (MiniLM text encoder + symbolic codec), for pretraining."""
    from musicgen_cfg.conditioning import MINILM_NAME, minilm_text_encoder
    from musicgen_cfg.lm import MusicgenLM
    from musicgen_cfg.model import MusicGen
    from musicgen_cfg.world.codec import SymbolicCodec

    torch.manual_seed(seed)
    text_encoder = minilm_text_encoder(cache_size=8192)
    lm = MusicgenLM(decoder_config, text_encoder.hidden_size)
    for module in lm.modules():  # transformers' MusicGen init: N(0, initializer_factor), zero biases
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            module.weight.data.normal_(0.0, decoder_config.initializer_factor)
            if getattr(module, "bias", None) is not None:
                module.bias.data.zero_()
    config = {"decoder": decoder_config.to_dict(),
              "musicgen_cfg": {"codec": "symbolic", "text_encoder": MINILM_NAME, "guidance_scale": guidance_scale}}
    return MusicGen(lm, text_encoder, SymbolicCodec(), config, "new")


def pretrain(config: PretrainConfig, resume: bool = False, command: str = "") -> Path:
    from musicgen_cfg.model import pick_device
    from musicgen_cfg.world.corpus import DEFAULT_PATH, load_dataset

    torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    run_dir = Path(config.out)
    checkpoint = resume_point(run_dir, resume, config=config)
    train = load_dataset("train", config.dataset, augment_semitones=config.transpose)
    cum_weights = style_cumulative_weights(train, config.style_balance)
    val = load_dataset("val", config.dataset)
    val_rng = random.Random(1234)
    val_idx = sorted(val_rng.sample(range(len(val)), min(config.eval_segments, len(val))))
    val_codes = torch.stack([torch.from_numpy(val.get(i)[0].astype(np.int64)) for i in val_idx])
    caption_dropout = config.caption_dropout()
    val_captions = [val.sample_caption(i, val_rng, dropout=caption_dropout) for i in val_idx]

    model = create_symbolic_model(decoder_config(config), config.guidance_scale, seed=config.seed).to(device)
    optim = config.optim()
    optimizer, scheduler = build_optimizer(model.lm.parameters(), optim)
    generator = torch.Generator().manual_seed(config.seed)
    data_rng = random.Random(config.seed)
    weights, trainer = StudentWeights(model), TrainerState(optimizer, scheduler, generator, data_rng)
    start, state = 0, {}
    if checkpoint is not None:  # restored before run.json is written: a failed resume changes nothing
        state = load_checkpoint(checkpoint, weights, trainer)
        start = state["step"]
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_info(run_dir, config, command)
    log = MetricsLog(run_dir)
    log.truncate_after(start)
    elapsed = state.get("elapsed_s", 0.0)
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc="pretrain", dynamic_ncols=True)
    for step in bar:
        began = time.perf_counter()
        model.lm.train()
        codes, captions = draw_batch(train, config.batch_size, data_rng, cum_weights, caption_dropout)
        cond = model.condition(captions)
        drop = torch.rand(len(captions), generator=generator) < config.cond_dropout
        loss, per_codebook = token_cross_entropy(model.lm, codes.to(device), drop_condition(cond, drop.to(device)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.lm.parameters(), optim.clip)
        check_finite(step + 1, {"cross-entropy": loss, "gradient norm": grad_norm})
        optimizer.step()
        scheduler.step()
        elapsed += time.perf_counter() - began
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            metrics = {"loss": loss.item(), "grad_norm": grad_norm.item(), "lr": scheduler.get_last_lr()[0],
                       "elapsed_s": elapsed, **{f"loss_voice{k}": v.item() for k, v in enumerate(per_codebook)}}
            if done % config.eval_every == 0 or done == config.steps:
                metrics["val_loss"] = validation_loss(model, val_codes, val_captions, config.batch_size)
            log.log(done, metrics)
            bar.set_postfix(loss=f"{loss.item():.3f}", val=f"{metrics.get('val_loss', float('nan')):.3f}")
        if done % config.checkpoint_every == 0 or done == config.steps:
            save_checkpoint(run_dir, done, weights, trainer, {"elapsed_s": elapsed}, config.keep_last)
    export(model, config, run_dir, command, elapsed, Path(config.dataset) if config.dataset else DEFAULT_PATH)
    return run_dir


def export(model, config: PretrainConfig, run_dir: Path, command: str, elapsed: float, dataset_path: Path):
    """Write the shipped checkpoint + manifest.json (how to rebuild it, what it was trained on)."""
    with atomic_directory(final_export_dir(run_dir, config.export)) as tmp:
        model.write_files(tmp)
        write_json({
            "artifact": "default base model (theta_0)",
            "rebuild_command": command,
            "config": asdict(config),
            "dataset": str(dataset_path.name),
            "dataset_sha256": file_sha256(dataset_path),
            "weights_sha256": model.weights_sha256(refresh=True),
            **weight_file_hashes(tmp),
            "parameters": sum(p.numel() for p in model.lm.parameters()),
            "train_seconds": round(elapsed, 1),
            "trained_on": machine(next(model.lm.parameters()).device.type, config.threads),
            "metrics_csv": "metrics.csv",  # the training and validation curve, shipped beside the weights
        }, tmp / "manifest.json")
        shutil.copyfile(run_dir / "metrics.csv", tmp / "metrics.csv")
