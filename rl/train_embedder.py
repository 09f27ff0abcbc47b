"""Train a music embedder for the diversity reward (`musicgen-cfg embedder train`).

    musicgen-cfg embedder train --audio-dir DIR --out DIR [--steps N --batch-size B --chunk-seconds S ...]   # contrastive
    musicgen-cfg embedder train --model default --out DIR      # the note embedder (rl/train_note_embedder.py)

This module is the contrastive one (`--kind contrastive`, the default with --audio-dir) and the command.

As in the paper, the embedder learns "same music" vs "different music", not text: the positives of a
clip are two non-overlapping chunks of it, the negatives are the other clips of the batch (InfoNCE, or
a semi-hard triplet loss). Held-out clips measure top-1 retrieval: does a clip's first chunk find its
own last chunk among all held-out last chunks? The output directory (config.json, model.safetensors,
manifest.json with the exact rebuild command and the weights' sha256) is written atomically.

Data: `--audio-dir` reads every .wav/.flac below DIR (one file = one clip, mixed to mono).
`--model default` renders segments of the default world's dataset with the symbolic codec, each with a
random instrument and tempo, so the embedder sees both the timbre and the notes.
"""

import hashlib
import random
import shlex
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from musicgen_cfg.checkpoint import file_sha256
from musicgen_cfg.errors import UserError
from musicgen_cfg.optim import build_optimizer, check_finite
from rl.embedders import ContrastiveEmbedderConfig, ContrastiveMusicEmbedder, resample, save_embedder
from rl.train_embedder_options import EmbedderTrainArgs, EmbedderTrainConfig

AUDIO_SUFFIXES = (".wav", ".flac")
TEMPO_RANGE_BPM = (60.0, 180.0)  # --model default: tempos of the rendered training clips


# ------------------------------------------------------------------------------------------------ losses


def info_nce_loss(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE (NT-Xent). a, b: unit vectors [B, D], row i of a and b are a positive pair;
    every other view in the batch (2B - 2 of them) is a negative."""
    views = torch.cat([a, b])
    logits = views @ views.T / temperature
    logits = logits.masked_fill(torch.eye(len(views), dtype=torch.bool, device=views.device), float("-inf"))
    batch = len(a)
    targets = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)]).to(views.device)
    return F.cross_entropy(logits, targets)


def semi_hard_triplet_loss(a: torch.Tensor, b: torch.Tensor, margin: float) -> torch.Tensor:
    """Triplet loss on cosine distance with FaceNet's semi-hard negatives. a, b: unit vectors [B, D].

    Each view is an anchor with its pair as positive; its negative is the closest view of another clip
    that is still farther than the positive, or the farthest one when none is (all negatives harder).
    """
    views = torch.cat([a, b])
    batch = len(a)
    distance = 1.0 - views @ views.T  # [2B, 2B]
    clip = torch.arange(2 * batch, device=views.device) % batch
    positive = distance[torch.arange(2 * batch), (torch.arange(2 * batch) + batch) % (2 * batch)]
    is_negative = clip[:, None] != clip[None, :]
    semi_hard = is_negative & (distance > positive[:, None])
    closest_semi_hard = distance.masked_fill(~semi_hard, float("inf")).amin(dim=1)
    farthest = distance.masked_fill(~is_negative, float("-inf")).amax(dim=1)
    negative = torch.where(semi_hard.any(dim=1), closest_semi_hard, farthest)
    return F.relu(positive - negative + margin).mean()


# -------------------------------------------------------------------------------------------------- data


def sample_positive_pairs(
    mels: list[torch.Tensor],
    batch_size: int,
    chunk_frames: int,
    generator: torch.Generator,
    candidates: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two non-overlapping chunks of each of `batch_size` distinct clips (drawn from `candidates`, default all).

    mels: log-mel [n_mels, frames_i] per clip, every frames_i >= 2 * chunk_frames.
    Returns float32 (a, b), each [batch_size, n_mels, chunk_frames]; which chunk comes first is random.
    """
    candidates = list(range(len(mels))) if candidates is None else candidates
    firsts, seconds = [], []
    for position in torch.randperm(len(candidates), generator=generator)[:batch_size].tolist():
        index = candidates[position]
        frames = mels[index].shape[1]
        start_a = int(torch.randint(0, frames - 2 * chunk_frames + 1, (1,), generator=generator))
        start_b = int(
            torch.randint(start_a + chunk_frames, frames - chunk_frames + 1, (1,), generator=generator)
        )
        if torch.rand(1, generator=generator).item() < 0.5:
            start_a, start_b = start_b, start_a
        firsts.append(mels[index][:, start_a : start_a + chunk_frames])
        seconds.append(mels[index][:, start_b : start_b + chunk_frames])
    return torch.stack(firsts).float(), torch.stack(seconds).float()


@torch.no_grad()
def retrieval_accuracy(model: ContrastiveMusicEmbedder, mels: list[torch.Tensor], chunk_frames: int) -> float:
    """Top-1 accuracy of finding each clip's last chunk from its first chunk among all clips' last chunks."""
    was_training = model.training
    model.eval()
    first = model.embed_log_mel(torch.stack([m[:, :chunk_frames] for m in mels]).float())
    last = model.embed_log_mel(torch.stack([m[:, -chunk_frames:] for m in mels]).float())
    model.train(was_training)
    hits = (first @ last.T).argmax(dim=1) == torch.arange(len(mels))
    return hits.float().mean().item()


def train(
    model: ContrastiveMusicEmbedder,
    train_mels: list[torch.Tensor],
    heldout: dict[str, list[torch.Tensor]],
    config: EmbedderTrainConfig,
    log=print,
    groups: list[str] | None = None,
) -> dict:
    """Optimise `model` in place on log-mel clips (each [n_mels, frames >= 2 chunks], at the model's
    front end). `heldout` names sets of held-out clips, each scored by `retrieval_accuracy`. `groups`
    labels the training clips (e.g. by instrument) for config.same_group_batches.
    Returns metrics: per-step losses, {set name: {step: accuracy}}, seconds."""
    chunk_frames = model.config.chunk_frames
    if len(train_mels) < 2:
        raise UserError(f"need at least 2 training clips of >= 2 chunks, got {len(train_mels)}")
    batch_size = min(config.batch_size, len(train_mels))
    generator = torch.Generator().manual_seed(config.seed)
    members = {}
    for index, group in enumerate(groups or []):
        members.setdefault(group, []).append(index)
    group_names = sorted(name for name, indices in members.items() if len(indices) >= 2)
    optimizer, scheduler = build_optimizer(model.parameters(), config.optim())
    losses, accuracies, started = [], {name: {} for name in heldout}, time.perf_counter()

    def evaluate(step):
        for name, mels in heldout.items():
            accuracies[name][step] = retrieval_accuracy(model, mels, chunk_frames)
            log(
                f"step {step}: {name} retrieval top-1 {accuracies[name][step]:.3f} over {len(mels)} clips "
                f"(chance {1 / len(mels):.3f})"
            )

    evaluate(0)
    model.train()
    for step in range(1, config.steps + 1):
        candidates = None
        if group_names and torch.rand(1, generator=generator).item() < config.same_group_batches:
            candidates = members[group_names[int(torch.randint(len(group_names), (1,), generator=generator))]]
        a, b = sample_positive_pairs(train_mels, batch_size, chunk_frames, generator, candidates)
        za, zb = model.embed_log_mel(a), model.embed_log_mel(b)
        if config.loss == "infonce":
            loss = info_nce_loss(za, zb, config.temperature)
        else:
            loss = semi_hard_triplet_loss(za, zb, config.margin)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        check_finite(step, {f"{config.loss} loss": loss}, model.parameters())
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % config.eval_every == 0 or step == config.steps:
            recent = losses[-config.eval_every :]
            log(
                f"step {step}/{config.steps}: loss {sum(recent) / len(recent):.4f} ({time.perf_counter() - started:.0f}s)"
            )
            evaluate(step)
    model.eval()
    return {
        "losses": losses,
        "heldout_accuracy": accuracies,
        "train_seconds": round(time.perf_counter() - started, 1),
    }


def clips_to_log_mels(
    model: ContrastiveMusicEmbedder, waveforms: list[torch.Tensor], sample_rate: int
) -> tuple[list[torch.Tensor], int]:
    """Log-mels of the clips long enough for two chunks (float16 [n_mels, frames] each), and the number skipped."""
    mels = []
    with torch.no_grad():
        for waveform in waveforms:
            audio = resample(waveform.float()[None], sample_rate, model.sample_rate)
            mel = model.log_mel(audio)[0]
            if mel.shape[1] >= 2 * model.config.chunk_frames:
                mels.append(mel.half())  # half storage: large clip pools fit in memory
    return mels, len(waveforms) - len(mels)


def read_audio_dir(directory: Path) -> tuple[list[tuple[torch.Tensor, int]], dict]:
    """Every .wav/.flac below `directory` as (mono float32 [samples], sample_rate), and a data record."""
    import soundfile

    if not directory.is_dir():
        raise UserError(f"--audio-dir {directory} is not a directory")
    paths = sorted(p for p in directory.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not paths:
        raise UserError(f"no .wav or .flac files found under {directory}")
    clips, listing = [], hashlib.sha256()
    for path in paths:
        try:
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        except Exception as err:  # soundfile raises its own LibsndfileError and RuntimeError
            raise UserError(f"cannot read audio file {path}: {err}") from None
        clips.append((torch.from_numpy(data.mean(axis=1)), int(rate)))
        listing.update(f"{path.relative_to(directory)}\t{path.stat().st_size}\n".encode())
    record = {
        "source": "audio-dir",
        "audio_dir": str(directory),
        "files": len(paths),
        "listing_sha256": listing.hexdigest(),
        "seconds": round(sum(len(w) / rate for w, rate in clips), 1),
    }
    return clips, record


def render_default_world(
    model: ContrastiveMusicEmbedder,
    split: str,
    count: int,
    clip_seconds: float,
    seed: int,
    prompt: str | None = None,
) -> tuple[list[torch.Tensor], list[str]]:
    """Log-mels of `count` clips of the default world's `split`, and the prompts they were rendered with.

    Each clip is a random crop of clip_seconds of a random segment, played with the symbolic codec. With
    prompt=None each clip gets a random instrument (uniform over the synth's timbres) and tempo
    (log-uniform in TEMPO_RANGE_BPM), so both timbre and notes separate clips; with a fixed prompt only the
    notes do, as for the sibling generations the diversity reward compares. Crops with fewer than one
    note onset per two beats are skipped: mostly silent audio says nothing about the music.
    """
    from musicgen_cfg.world.captions import random_render_prompt
    from musicgen_cfg.world.codec import SymbolicCodec
    from musicgen_cfg.world.corpus import load_dataset

    dataset, codec = load_dataset(split), SymbolicCodec()
    rng = random.Random(f"{seed}-{split}-{prompt}")
    mels, prompts = [], []
    for _ in range(50 * count):
        if len(mels) == count:
            break
        clip_prompt = random_render_prompt(rng, TEMPO_RANGE_BPM) if prompt is None else prompt
        codes = dataset.codes([rng.randrange(len(dataset))])[0]  # uint8 [4, SEGMENT_FRAMES]; no metadata needed
        frames = min(codes.shape[1], codec.frames_for_duration(clip_seconds, clip_prompt))
        start = rng.randrange(codes.shape[1] - frames + 1)
        crop = codes[:, start : start + frames]
        if (crop >= 2).sum() < frames / 8:  # codes >= 2 are note onsets; one frame is a 16th note
            continue
        wave = codec.decode(crop[None].astype("int64"), [clip_prompt])
        mels.append(model.log_mel(wave)[0].half())  # half storage: large clip pools fit in memory
        prompts.append(clip_prompt)
    if len(mels) < count:
        raise UserError(
            f"found only {len(mels)} of {count} clips with notes in the default dataset's {split} split"
        )
    return mels, prompts


def split_clips(mels: list[torch.Tensor], heldout: int, seed: int) -> tuple[list, list]:
    """Random train / held-out split of the clips (held-out: `heldout` clips, at most half)."""
    if len(mels) < 4:
        raise UserError(f"need at least 4 clips long enough for two chunks, got {len(mels)}")
    order = torch.randperm(len(mels), generator=torch.Generator().manual_seed(seed)).tolist()
    count = min(heldout, len(mels) // 2)
    return [mels[i] for i in order[count:]], [mels[i] for i in order[:count]]


# --------------------------------------------------------------------------------------------------- CLI


def rebuild_command(args: EmbedderTrainArgs, config: EmbedderTrainConfig) -> str:
    """The command line that reproduces this run, every setting explicit."""
    source = ["--audio-dir", str(args.audio_dir)] if args.audio_dir else ["--model", args.model]
    options = []
    for name, value in asdict(config).items():
        options += [f"--{name.replace('_', '-')}", str(value)]
    options += ["--threads", str(args.threads)]  # results are reproducible per thread count
    if args.rebuild_shipped:
        options += ["--rebuild-shipped"]
    return shlex.join(["musicgen-cfg", "embedder", "train", *source, "--out", str(args.out), *options])


def default_world_data(
    model: ContrastiveMusicEmbedder, config: EmbedderTrainConfig
) -> tuple[list, dict, dict, list[str]]:
    """Training clips (train split) with their instruments as groups, and two held-out sets (val split):
    random prompts, and one fixed prompt."""
    from musicgen_cfg.world.captions import DEFAULT_BPM, DEFAULT_INSTRUMENT, render_settings
    from musicgen_cfg.world.corpus import DEFAULT_PATH

    fixed_prompt = f"{DEFAULT_INSTRUMENT} at {DEFAULT_BPM:.0f} bpm"
    length, seed = config.clip_seconds, config.seed
    with torch.no_grad():
        train_mels, prompts = render_default_world(model, "train", config.clips, length, seed)
        varied, _ = render_default_world(model, "val", config.heldout, length, seed)
        same_prompt, _ = render_default_world(model, "val", config.heldout, length, seed, prompt=fixed_prompt)
    heldout = {"held-out": varied, "same-prompt held-out": same_prompt}
    instruments = [render_settings(prompt).instrument for prompt in prompts]
    record = {
        "source": "default world",
        "dataset": str(DEFAULT_PATH.relative_to(Path(__file__).resolve().parent.parent)),
        "dataset_sha256": file_sha256(DEFAULT_PATH),
        "train_split": "train",
        "heldout_split": "val",
        "instruments": sorted(set(instruments)),
        "tempo_range_bpm": list(TEMPO_RANGE_BPM),
        "same_prompt_heldout_prompt": fixed_prompt,
    }
    return train_mels, heldout, record, instruments


def audio_dir_data(model: ContrastiveMusicEmbedder, config: EmbedderTrainConfig, directory: Path):
    """Training clips and one held-out set from the audio files below `directory`."""
    clips, record = read_audio_dir(directory)
    mels, skipped = [], 0
    for waveform, rate in clips:
        kept, dropped = clips_to_log_mels(model, [waveform], rate)
        mels += kept
        skipped += dropped
    record["skipped_short_clips"] = skipped
    train_mels, heldout_mels = split_clips(mels, config.heldout, config.seed)
    return train_mels, {"held-out": heldout_mels}, record, None


def run_train(args: EmbedderTrainArgs) -> int:
    torch.set_num_threads(args.threads)  # the machines are shared: one core unless asked otherwise
    config = EmbedderTrainConfig(
        **{name: getattr(args, name) for name in EmbedderTrainConfig.__dataclass_fields__}
    )
    if config.kind == "notes":
        from rl.train_note_embedder import train_from_config

        model, fields = train_from_config(config)
    else:
        model, fields = train_contrastive(args, config)
    manifest = {"command": rebuild_command(args, config), "config": asdict(config), "seed": config.seed,
                "threads": args.threads, "torch": torch.__version__, **fields}
    digest = save_embedder(model, args.out, manifest=manifest)
    print(f"saved {args.out} (model.safetensors sha256 {digest})", flush=True)
    return 0


def train_contrastive(args: EmbedderTrainArgs, config: EmbedderTrainConfig) -> tuple[ContrastiveMusicEmbedder, dict]:
    """The contrastive embedder on --audio-dir clips or rendered default-world clips; (model, manifest fields)."""
    torch.manual_seed(config.seed)
    model = ContrastiveMusicEmbedder(ContrastiveEmbedderConfig(chunk_seconds=config.chunk_seconds))
    started = time.perf_counter()
    if args.audio_dir:
        train_mels, heldout, data, groups = audio_dir_data(model, config, args.audio_dir)
    else:
        train_mels, heldout, data, groups = default_world_data(model, config)
    data.update(train_clips=len(train_mels), heldout_clips={name: len(m) for name, m in heldout.items()})
    data["prepare_seconds"] = round(time.perf_counter() - started, 1)
    parameters = sum(p.numel() for p in model.parameters())
    print(
        f"{len(train_mels)} training clips ({data['prepare_seconds']}s to prepare); {parameters} parameters",
        flush=True,
    )
    metrics = train(
        model, train_mels, heldout, config, log=lambda message: print(message, flush=True), groups=groups
    )
    recent = metrics["losses"][-config.eval_every :]
    return model, {
        "embedder_config": asdict(model.config),
        "data": data,
        "parameters": parameters,
        "train_seconds": metrics["train_seconds"],
        "final_loss": sum(recent) / len(recent),
        "heldout_accuracy": metrics["heldout_accuracy"],
    }
