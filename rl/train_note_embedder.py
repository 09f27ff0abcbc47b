"""Train the note embedder's transcriber on scores rendered by the default world (`musicgen-cfg embedder train --kind notes`).

    musicgen-cfg embedder train --kind notes --model default --out DIR [--steps N --batch-size B --clips C ...]

Supervised, because the world knows the notes it renders: each training clip is a random crop of a
train-split segment, randomly transposed, played by a random instrument at a random tempo, and the
targets are its note onsets and sounding notes at the spectrogram's frames. Every timbre and tempo is
seen, so the transcriber hears notes through vibrato, slow attacks and fast reels alike. Held out (val
split): onset precision / recall / F1 (an onset found within one frame of a true one, same pitch), and the
chunk-retrieval top-1 of the contrastive embedder's report (a clip's first chunk finds its own last chunk),
both with random prompts and under one fixed prompt.

After training, the statistics' block weights are fitted (`fit_block_weights`): crops of the train split
grouped by style and rendered under one prompt per style, as a prompt's sibling generations sound, and
each block weighted by the inverse spread of its distances over those pairs (note_embedder.equal_spread_weights).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F

from musicgen_cfg.errors import UserError
from musicgen_cfg.optim import OptimConfig, build_optimizer, check_finite
from rl.note_embedder import (
    BLOCKS,
    NoteEmbedder,
    NoteEmbedderConfig,
    block_distances,
    detect_onsets,
    equal_spread_weights,
    note_statistics,
)

TEMPO_RANGE_BPM = (60.0, 190.0)
TRANSPOSE_SEMITONES = 5
WEIGHT_FIT_SEGMENTS = 220  # train-split crops the block weights are fitted on (20 per style of 11)
WEIGHT_FIT_CROP_SECONDS = 8.0  # the crop length of `musicgen-cfg embedder check`


def note_targets(codes: np.ndarray, frame_seconds: float, num_frames: int, config: NoteEmbedderConfig):
    """codes [4, T] played at frame_seconds per code frame -> (onset, sounding) float32 [num_pitches, num_frames].

    A note's onset lands on the spectrogram frame nearest its start time; it sounds until its end.
    """
    from musicgen_cfg.world import symbolic

    onset = np.zeros((config.num_pitches, num_frames), np.float32)
    sounding = np.zeros_like(onset)
    scale = frame_seconds / config.hop_seconds
    for event in symbolic.codes_to_notes(codes):
        pitch = event.pitch - config.lowest_pitch
        if not 0 <= pitch < config.num_pitches:
            continue
        start = int(round(event.onset * scale))
        if start < num_frames:
            onset[pitch, start] = 1.0
            sounding[pitch, start : int(round((event.onset + event.duration) * scale))] = 1.0
    return onset, sounding


def render_clips(split: str, count: int, clip_seconds: float, seed: int, config: NoteEmbedderConfig,
                 prompt: str | None = None):
    """`count` rendered crops of `split`: (waveforms [count, samples], onset targets, sounding targets, prompts).

    prompt=None: a random instrument, tempo (log-uniform in TEMPO_RANGE_BPM) and transposition per clip;
    a fixed prompt: that instrument and tempo, no transposition. Crops with fewer than 4 onsets are redrawn.
    """
    from musicgen_cfg.world.captions import random_render_prompt, render_settings
    from musicgen_cfg.world.codec import SymbolicCodec, frame_seconds
    from musicgen_cfg.world.corpus import load_dataset

    dataset, codec = load_dataset(split, augment_semitones=TRANSPOSE_SEMITONES), SymbolicCodec()
    rng = random.Random(f"notes-{seed}-{split}-{prompt}")
    samples = int(round(clip_seconds * config.sample_rate))
    frames = 1 + samples // config.hop_length
    waves, onsets, soundings, prompts = [], [], [], []
    for _ in range(50 * count):
        if len(waves) == count:
            break
        clip_prompt = random_render_prompt(rng, TEMPO_RANGE_BPM) if prompt is None else prompt
        index = rng.randrange(len(dataset))
        transpose = dataset.random_transpose(index, rng) if prompt is None else 0
        codes, _ = dataset.get(index, transpose)
        step = frame_seconds(render_settings(clip_prompt).tempo_bpm)
        length = min(codes.shape[1], max(1, math.ceil(clip_seconds / step)))
        start = rng.randrange(codes.shape[1] - length + 1)
        crop = np.asarray(codes[:, start : start + length])
        if (crop >= 2).sum() < 4:
            continue
        wave = codec.decode(crop[None].astype("int64"), [clip_prompt])[0, :samples]
        wave = F.pad(wave, (0, samples - len(wave)))
        onset, sounding = note_targets(crop, step, frames, config)
        waves.append(wave)
        onsets.append(onset)
        soundings.append(sounding)
        prompts.append(clip_prompt)
    if len(waves) < count:
        raise UserError(f"found only {len(waves)} of {count} clips with notes in the default dataset's {split} split")
    return torch.stack(waves), torch.from_numpy(np.stack(onsets)), torch.from_numpy(np.stack(soundings)), prompts


def onset_scores(model: NoteEmbedder, waves: torch.Tensor, onsets: torch.Tensor) -> dict[str, float]:
    """Onset precision, recall and F1 over clips: a detection counts when a true onset of its pitch is within one frame."""
    probs = model.onset_probabilities(waves).numpy()
    hits = found = true = 0
    for prob, target in zip(probs, onsets.numpy()):
        frames, pitches = detect_onsets(prob, model.config.onset_threshold)
        near = np.maximum(target, np.maximum(np.pad(target, ((0, 0), (1, 0)))[:, :-1], np.pad(target, ((0, 0), (0, 1)))[:, 1:]))
        hits += int(near[pitches, frames].sum())
        found += len(frames)
        true += int(target.sum())
    precision, recall = hits / max(found, 1), min(hits, true) / max(true, 1)
    return {"precision": precision, "recall": recall, "f1": 2 * precision * recall / max(precision + recall, 1e-9)}


def chunk_retrieval(model: NoteEmbedder, waves: torch.Tensor, chunk_seconds: float) -> float:
    """Top-1 accuracy of finding each clip's last chunk from its first chunk among all clips' last chunks."""
    size = int(round(chunk_seconds * model.sample_rate))
    first = model.embed(waves[:, :size], model.sample_rate)
    last = model.embed(waves[:, -size:], model.sample_rate)
    return ((first @ last.T).argmax(dim=1) == torch.arange(len(waves))).float().mean().item()


def train_transcriber(model: NoteEmbedder, train_data, heldout: dict, optim: OptimConfig, batch_size: int,
                      eval_every: int, seed: int, log=print) -> dict:
    """Optimise the transcriber in place: BCE on onsets (positives weighted up, they are rare) + BCE on sounding notes.

    train_data: (waveforms [N, S], onset targets [N, P, T], sounding targets [N, P, T]); heldout: name ->
    (waveforms, onsets) scored by onset_scores. Returns per-step losses, held-out scores by step, seconds.
    """
    waves, onsets, soundings = train_data
    with torch.no_grad():
        spectrograms = torch.cat([model.transcriber.spectrogram(part) for part in waves.split(32)]).half()
    generator = torch.Generator().manual_seed(seed)
    optimizer, scheduler = build_optimizer(model.transcriber.parameters(), optim)
    positive_weight = torch.tensor(float((onsets.numel() - onsets.sum()) / max(onsets.sum(), 1)) ** 0.5)
    losses, scores, started = [], {name: {} for name in heldout}, time.perf_counter()
    model.train()
    steps = optim.steps
    for step in range(1, steps + 1):
        rows = torch.randint(len(waves), (min(batch_size, len(waves)),), generator=generator)
        onset_logits, sounding_logits = model.transcriber(spectrograms[rows].float())
        loss = (F.binary_cross_entropy_with_logits(onset_logits, onsets[rows], pos_weight=positive_weight)
                + F.binary_cross_entropy_with_logits(sounding_logits, soundings[rows]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        check_finite(step, {"onset + sounding loss": loss}, model.transcriber.parameters())
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % eval_every == 0 or step == steps:
            recent = losses[-eval_every:]
            log(f"step {step}/{steps}: loss {sum(recent) / len(recent):.4f} ({time.perf_counter() - started:.0f}s)")
            for name, (held_waves, held_onsets) in heldout.items():
                scores[name][step] = onset_scores(model, held_waves, held_onsets)
                log(f"  {name}: onset " + ", ".join(f"{k} {v:.3f}" for k, v in scores[name][step].items()))
            model.train()
    model.eval()
    return {"losses": losses, "heldout_onsets": scores, "train_seconds": round(time.perf_counter() - started, 1)}


def fit_block_weights(model: NoteEmbedder, dataset, segments: int, seed: int) -> dict:
    """Set model.config.block_weights to equal spread over the within-style pairs of `dataset`'s crops.

    dataset: a corpus.SegmentDataset; crops chosen and rendered as `musicgen-cfg embedder check` does (one
    prompt per style). Returns the fit's record for the manifest (pairs, spreads, weights).
    """
    from musicgen_cfg.world.codec import SymbolicCodec
    from rl.embedder_check import select_style_groups

    codec = SymbolicCodec()
    pairs = {name: [] for name in BLOCKS}
    for group in select_style_groups(dataset, segments, WEIGHT_FIT_CROP_SECONDS, seed):
        waveforms = codec.decode(group.codes, [group.prompt] * len(group.codes))
        stats = [note_statistics(frames, midi, model.config) for frames, midi in model.notes(waveforms, codec.sample_rate)]
        upper = np.triu_indices(len(stats), k=1)
        for name, distances in block_distances(stats).items():
            pairs[name].append(distances[upper])
    pairs = {name: np.concatenate(values) for name, values in pairs.items()}
    model.config.block_weights = equal_spread_weights(pairs)
    return {"segments": segments, "crop_seconds": WEIGHT_FIT_CROP_SECONDS, "pairs": len(pairs[BLOCKS[0]]),
            "spread": {name: float(np.std(values)) for name, values in pairs.items()},
            "weights": dict(zip(BLOCKS, model.config.block_weights))}


def train_from_config(config) -> tuple[NoteEmbedder, dict]:
    """`musicgen-cfg embedder train --kind notes --model default`: render, train, score; (model, manifest fields)."""
    from musicgen_cfg.checkpoint import file_sha256
    from musicgen_cfg.world.captions import DEFAULT_BPM, DEFAULT_INSTRUMENT
    from musicgen_cfg.world.corpus import DEFAULT_PATH, load_dataset

    torch.manual_seed(config.seed)
    model = NoteEmbedder(NoteEmbedderConfig())
    started = time.perf_counter()
    fixed_prompt = f"{DEFAULT_INSTRUMENT} at {DEFAULT_BPM:.0f} bpm"
    train_waves, train_onsets, train_soundings, prompts = render_clips(
        "train", config.clips, config.clip_seconds, config.seed, model.config)
    varied = render_clips("val", config.heldout, config.clip_seconds, config.seed, model.config)
    same = render_clips("val", config.heldout, config.clip_seconds, config.seed, model.config, prompt=fixed_prompt)
    prepare_seconds = round(time.perf_counter() - started, 1)
    print(f"{len(train_waves)} training clips ({prepare_seconds}s to prepare); "
          f"{sum(p.numel() for p in model.parameters())} parameters", flush=True)
    heldout = {"held-out": varied[:2], "same-prompt held-out": same[:2]}
    metrics = train_transcriber(model, (train_waves, train_onsets, train_soundings), heldout, config.optim(),
                                config.batch_size, config.eval_every, config.seed, log=lambda m: print(m, flush=True))
    weight_fit = {"split": "train", **fit_block_weights(model, load_dataset("train"), WEIGHT_FIT_SEGMENTS, config.seed)}
    print(f"block weights {weight_fit['weights']} (spreads {weight_fit['spread']}, {weight_fit['pairs']} pairs)", flush=True)
    retrieval = {name: chunk_retrieval(model, waves, config.chunk_seconds) for name, (waves, _) in heldout.items()}
    print("chunk retrieval top-1: " + ", ".join(f"{k} {v:.3f}" for k, v in retrieval.items()), flush=True)
    recent = metrics["losses"][-config.eval_every:]
    fields = {
        "data": {"source": "default world", "dataset": str(DEFAULT_PATH.name), "dataset_sha256": file_sha256(DEFAULT_PATH),
                 "train_split": "train", "heldout_split": "val", "tempo_range_bpm": list(TEMPO_RANGE_BPM),
                 "transpose_semitones": TRANSPOSE_SEMITONES, "train_clips": len(train_waves),
                 "instruments": sorted({p.split(" at ")[0] for p in prompts}), "same_prompt_heldout_prompt": fixed_prompt,
                 "heldout_clips": {name: len(w) for name, (w, _) in heldout.items()}, "prepare_seconds": prepare_seconds},
        "embedder_config": asdict(model.config),
        "block_weight_fit": weight_fit,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": metrics["train_seconds"],
        "final_loss": sum(recent) / len(recent),
        "heldout_onsets": metrics["heldout_onsets"],
        "heldout_accuracy": {name: {str(config.steps): value} for name, value in retrieval.items()},
    }
    return model, fields
