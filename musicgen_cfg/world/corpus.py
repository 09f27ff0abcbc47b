"""The default world's dataset at run time: the dataset file -> the segments of a split, and CaptionPrompts.

Library module (no command); the file is written by `musicgen-cfg corpus build` (corpus_build.py), the shipped
one is musicgen_cfg/assets/default/dataset.npz.

Load: `load_dataset("train").get(i) -> (codes uint8 [4, SEGMENT_FRAMES], meta dict)`.

The file holds SEGMENT_FRAMES-frame segments of 4-voice 16th-note codes (`symbolic`), cut every HOP_FRAMES
frames from music21's public-domain scores, and per piece its metadata (PIECE_STRING_FIELDS,
PIECE_INT_FIELDS) and split (train/val/test, by piece: every segment of a piece is in one split).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from musicgen_cfg.errors import UserError
from musicgen_cfg.world import symbolic

SEGMENT_FRAMES = 128
HOP_FRAMES = 64
SPLITS = ("train", "val", "test")
DEFAULT_PATH = Path(__file__).resolve().parent.parent / "assets" / "default" / "dataset.npz"
PIECE_STRING_FIELDS = ("piece_id", "collection", "style", "title", "form", "mode", "meter", "split")
PIECE_INT_FIELDS = ("tonic", "tempo_bpm", "num_parts", "num_frames", "note_value_divisor")


class SegmentDataset:
    """The segments of one split: `ds.get(i, transpose) -> (codes uint8 [4, SEGMENT_FRAMES], meta dict)`,
    `ds.sample_caption(i, rng, transpose)` a caption drawn for it (pretrain.draw_batch draws batches).

    meta: piece_id, collection, style, title, form, tonic (pitch class), mode, meter, tempo_bpm (0 = not
    notated), num_parts, texture, start (frame in the piece), transpose (semitones).
    With augment_semitones > 0, `random_transpose(i, rng)` draws a shift in that range that keeps every
    note in the pitch range (the key in meta and caption follows).
    """

    def __init__(self, arrays: dict[str, np.ndarray], split: str, augment_semitones: int = 0):
        if augment_semitones < 0:
            raise UserError(f"augment_semitones must be >= 0, got {augment_semitones}")
        piece_split = arrays["piece_split"][arrays["segment_piece"]]
        self.rows = np.flatnonzero(piece_split == split) if split != "all" else np.arange(len(piece_split))
        self.arrays = arrays
        self.split = split
        self.augment_semitones = augment_semitones

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def styles(self) -> np.ndarray:
        """Style of each segment of this split, str [N]."""
        return self.arrays["piece_style"][self.arrays["segment_piece"][self.rows]]

    def style_balanced_weights(self) -> np.ndarray:
        """Sampling weights float64 [N] summing to 1 that give every style the same share (for samplers)."""
        styles, inverse, counts = np.unique(self.styles, return_inverse=True, return_counts=True)
        return 1.0 / (len(styles) * counts[inverse])

    def codes(self, indices=None) -> np.ndarray:
        """Untransposed codes uint8 [N, 4, SEGMENT_FRAMES] of this split (or of the given indices)."""
        rows = self.rows if indices is None else self.rows[np.asarray(indices)]
        return self.arrays["codes"][rows]

    def meta(self, i: int, transpose: int = 0) -> dict:
        row = self.rows[i]
        piece = int(self.arrays["segment_piece"][row])
        meta = {name: str(self.arrays[f"piece_{name}"][piece]) for name in PIECE_STRING_FIELDS}
        meta.update({name: int(self.arrays[f"piece_{name}"][piece]) for name in PIECE_INT_FIELDS})
        meta["texture"] = texture_of(meta["num_parts"])
        meta["tonic"] = (meta["tonic"] + transpose) % 12
        meta["start"] = int(self.arrays["segment_start"][row])
        meta["transpose"] = transpose
        return meta

    def get(self, i: int, transpose: int = 0) -> tuple[np.ndarray, dict]:
        """(codes uint8 [4, SEGMENT_FRAMES] transposed by `transpose` semitones, meta without caption)."""
        codes = self.arrays["codes"][self.rows[i]]
        return symbolic.transpose_codes(codes, transpose) if transpose else codes, self.meta(i, transpose)

    def sample_caption(self, i: int, rng: random.Random, transpose: int = 0, dropout=None) -> str:
        """A caption of segment i drawn from `rng`; `dropout`: a captions.CaptionDropout (None = the default)."""
        from musicgen_cfg.world.captions import CaptionDropout, caption_for

        return caption_for(self.meta(i, transpose), rng, dropout or CaptionDropout())

    def random_transpose(self, i: int, rng: random.Random) -> int:
        """A shift in [-augment_semitones, augment_semitones] that keeps segment i in range."""
        lowest, highest = symbolic.transposition_range(self.arrays["codes"][self.rows[i]])
        lowest, highest = max(lowest, -self.augment_semitones), min(highest, self.augment_semitones)
        return rng.randint(lowest, highest) if lowest <= highest else 0


def texture_of(num_parts: int) -> str:
    return {1: "solo", 2: "two-part", 3: "three-part"}.get(num_parts, "four-part")


def read_arrays(path: Path | str | None = None) -> dict[str, np.ndarray]:
    path = Path(path) if path is not None else DEFAULT_PATH
    if not path.exists():
        raise UserError(f"dataset file not found: {path} (build it with `musicgen-cfg corpus build`)")
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    # Files built before old-notation note values were modernised (the shipped dataset, see its
    # dataset.json) have no divisor field: nothing was divided.
    arrays.setdefault("piece_note_value_divisor", np.ones(len(arrays["piece_piece_id"]), dtype=np.int32))
    return arrays


def load_dataset(split: str, path: Path | str | None = None, augment_semitones: int = 0) -> SegmentDataset:
    """Segments of `split` (train | val | test | all) from the dataset file (default: the shipped one)."""
    if split not in (*SPLITS, "all"):
        raise UserError(f"unknown split {split!r}; choose train, val, test or all")
    return SegmentDataset(read_arrays(path), split, augment_semitones=augment_semitones)


class CaptionPrompts:
    """Training prompts of the default world (`prompts: default` in a train config): captions of
    training-split segments (transposed up to 5 semitones, as pretraining saw them), and `heldout`
    fixed captions of validation segments. Same interface as `musicgen_cfg.prompts.FilePrompts`."""

    def __init__(self, heldout: int, seed: int):
        self.train, val = load_dataset("train", augment_semitones=5), load_dataset("val")
        rng = random.Random(seed + 99)
        self.heldout = [val.sample_caption(rng.randrange(len(val)), rng) for _ in range(heldout)]

    def draw(self, count: int, rng: random.Random) -> list[str]:
        prompts = []
        for _ in range(count):
            i = rng.randrange(len(self.train))
            prompts.append(self.train.sample_caption(i, rng, self.train.random_transpose(i, rng)))
        return prompts
