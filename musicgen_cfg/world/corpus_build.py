"""`musicgen-cfg corpus build`: music21's bundled public-domain scores -> the default world's dataset file.

    musicgen-cfg corpus build --out PATH [--collections NAME ...] [--limit-per-collection N] [--workers N]
    musicgen-cfg corpus build --rebuild-shipped [--workers N]     # the shipped dataset (make gpu-recipe)

Writes --out PATH + its .json manifest; the default, the shipped musicgen_cfg/assets/default/dataset.npz, only
with --rebuild-shipped. Parsed pieces are cached per piece under .cache/corpus/, so a rerun or an interrupted
build resumes where it stopped. All 14 collections take about an hour of parsing on one (busy) core;
`--workers N` parses in N processes (the same file, byte for byte). The file is read by corpus.py.

Per piece: `symbolic.score_to_codes` (token format), metadata (collection, style, form, title, key tonic and
mode, meter, tempo, number of parts). Key: the notated key when its tonic is the pitch class of the piece's
last bass (or melody) note, otherwise music21's key analysis (KeySignatures without a mode, and Essen's
many `K: C` headers, are not trusted). Scores in half- or whole-note beats get modern note values
(`normalise_beat`). Pieces with identical codes are kept once. Pieces are cut into SEGMENT_FRAMES-frame
segments every HOP_FRAMES frames (the last one padded with rests). The split (train/val/test, 90/5/5 within each style) is
by piece, ranked by a hash of the style and opening melody intervals (`split_key`), so every segment of a
piece, and every copy of a tune that opens alike (in any key), is in one split.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musicgen_cfg.config import REBUILD_SHIPPED_HELP, check_output_path, field
from musicgen_cfg.errors import UserError
from musicgen_cfg.world import symbolic
from musicgen_cfg.world.corpus import (
    DEFAULT_PATH,
    HOP_FRAMES,
    PIECE_INT_FIELDS,
    PIECE_STRING_FIELDS,
    SEGMENT_FRAMES,
    SPLITS,
)

MIN_PIECE_FRAMES = 32  # 2 bars of 4/4: shorter "pieces" are fragments (incipits, broken tunes)
SPLIT_CYCLE = ("val", "test") + ("train",) * 18  # 90/5/5 by split key, per style (see assign_splits)
DEFAULT_CACHE = Path(".cache") / "corpus"
# Bump when the parsing or the token format changes: cached pieces from another version are ignored.
CACHE_VERSION = 1
MAX_SIZE_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True)
class Collection:
    """A group of files in music21's corpus folder that share a style."""

    name: str
    style: str
    patterns: tuple[str, ...]


_GERMAN_ESSEN = ("altdeu10", "altdeu20", "ballad10", "ballad20", "ballad30", "ballad40", "ballad50",
                 "ballad60", "ballad70", "ballad80", "boehme10", "boehme20", "dva0", "erk5", "erk10",
                 "erk20", "erk30", "fink0", "kinder0", "zuccal0", "lot", "lux")

# Order matters only for the default build's listing; each collection's files are sorted.
COLLECTIONS = {c.name: c for c in [
    Collection("bach_chorales", "chorale", ("bach/bwv*.mxl", "bach/bwv*.xml")),
    Collection("essen_chinese", "chinese_folk", ("essenFolksong/han1.abc", "essenFolksong/han2.abc")),
    Collection("essen_german", "german_folk", tuple(f"essenFolksong/{n}.abc" for n in _GERMAN_ESSEN)),
    Collection("essen_irish", "irish_traditional", ("essenFolksong/irl.abc",)),
    Collection("oneills", "irish_traditional", ("oneills1850/*.abc",)),
    Collection("ryans", "american_fiddle", ("ryansMammoth/*.abc",)),
    Collection("fife", "american_fiddle", ("miscFolk/americanfifeopus.abc",)),
    Collection("airds", "scottish_air", ("airdsAirs/*.abc",)),
    Collection("northumbrian", "english_folk", ("miscFolk/northumbrianminstrelsyopus.abc",)),
    Collection("nottingham", "english_folk", ("nottingham-dataset/*.abc",)),
    Collection("palestrina", "renaissance_sacred", ("palestrina/*.krn",)),
    Collection("monteverdi", "madrigal", ("monteverdi/*.mxl",)),
    Collection("quartets", "string_quartet", ("beethoven/**/*.mxl", "mozart/**/*.mxl", "haydn/**/*.mxl")),
    Collection("trecento", "medieval", ("trecento/*.xml",)),
]}

# Dance forms named in titles or ABC `R:` fields, most specific first ("slip jig" before "jig").
_FORMS = ("slip jig", "jig", "reel", "hornpipe", "strathspey", "polka", "waltz", "march", "slide",
          "clog", "schottische", "mazurka", "quickstep", "set dance", "air", "song")


MAX_WORKERS = 128  # parsing processes: each holds a music21 parser; 100000 once spawned hundreds in seconds


@dataclass
class BuildConfig:
    """Options of `musicgen-cfg corpus build`."""

    out: Path = field(DEFAULT_PATH, "dataset .npz to write (manifest .json beside it); the default, the shipped "
                                    "dataset, only with --rebuild-shipped")
    collections: tuple[str, ...] = field(tuple(COLLECTIONS), "collections to include")
    limit_per_collection: int = field(0, "at most this many pieces per collection (0 = all)", min=0)
    cache_dir: Path = field(DEFAULT_CACHE, "per-piece parse cache")
    corpus_root: Path | None = field(None, "music21 corpus folder (default: the installed one)")
    workers: int = field(1, "parsing processes (the output does not depend on it)", min=1, max=MAX_WORKERS)
    rebuild_shipped: bool = field(False, REBUILD_SHIPPED_HELP)

    def __post_init__(self):
        self.out, self.cache_dir = Path(self.out), Path(self.cache_dir)
        unknown = [c for c in self.collections if c not in COLLECTIONS]
        if unknown:
            raise UserError(f"unknown collection {unknown[0]!r}; choose from {', '.join(COLLECTIONS)}")
        if not self.collections:
            raise UserError("no collections given")
        if self.out.suffix != ".npz":
            raise UserError(f"--out must end in .npz, got {self.out}")
        check_output_path(self.out.parent, "--out's folder", self.rebuild_shipped)
        if self.corpus_root is None:
            import music21

            self.corpus_root = Path(music21.__file__).parent / "corpus"
        self.corpus_root = Path(self.corpus_root)
        if not self.corpus_root.is_dir():
            raise UserError(f"music21 corpus folder not found: {self.corpus_root}")


# ----------------------------------------------------------------------------------------------- parsing


def _abc_tunes(text: str) -> list[tuple[str, str]]:
    """An ABC file -> [(position of the tune in the file, from 1; tune text with the file header prepended)].

    Positions, not `X:` numbers, name tunes: some files reuse a number.
    """
    header, *tunes = re.split(r"(?m)^(?=X:)", text)
    return [(str(position), header + tune) for position, tune in enumerate(tunes, start=1)]


def _abc_field(tune_text: str, letter: str) -> str:
    match = re.search(rf"(?m)^{letter}:\s*(.*)$", tune_text)
    return match.group(1).strip() if match else ""


def _form(title: str, rhythm: str, meter: str, is_tune: bool) -> str:
    """Dance form from the ABC rhythm field, the title, or (jigs of ABC tunes only) the meter; '' if unknown."""
    for text in (rhythm.lower(), title.lower()):
        for form in _FORMS:
            if re.search(rf"\b{form}s?\b", text):
                return form
    return {"6/8": "jig", "9/8": "slip jig", "12/8": "slide"}.get(meter, "") if is_tune else ""


def _last_bass_pitch_class(codes: np.ndarray) -> int | None:
    for voice in reversed(range(codes.shape[0])):
        onsets = codes[voice][codes[voice] >= 2]
        if onsets.size:
            return symbolic.token_to_pitch(int(onsets[-1])) % 12
    return None


def _piece_key(score, codes: np.ndarray) -> tuple[int, str]:
    from music21 import key

    declared = next(iter(score.recurse().getElementsByClass(key.Key)), None)
    final = _last_bass_pitch_class(codes)
    if declared is not None and declared.tonic.pitchClass == final:
        return declared.tonic.pitchClass, declared.mode
    analysed = score.analyze("key")
    return analysed.tonic.pitchClass, analysed.mode


def _piece_meta(score, codes: np.ndarray, num_parts: int, fallback_title: str, abc_text: str) -> dict:
    from music21 import meter, tempo

    time_signature = next(iter(score.recurse().getElementsByClass(meter.TimeSignature)), None)
    meter_text = time_signature.ratioString if time_signature is not None else "4/4"
    mark = next(iter(score.recurse().getElementsByClass(tempo.MetronomeMark)), None)
    try:
        tempo_bpm = int(round(mark.getQuarterBPM())) if mark is not None and mark.number else 0
    except (AttributeError, TypeError, ZeroDivisionError):
        tempo_bpm = 0
    title = (score.metadata.title if score.metadata is not None and score.metadata.title else "") or fallback_title
    tonic, mode = _piece_key(score, codes)
    return {
        "title": " ".join(str(title).split())[:120],
        "form": _form(str(title), _abc_field(abc_text, "R"), meter_text, is_tune=bool(abc_text)),
        "tonic": int(tonic),
        "mode": str(mode or "major"),
        "meter": meter_text,
        "tempo_bpm": tempo_bpm if 20 <= tempo_bpm <= 300 else 0,
        "num_parts": int(num_parts),
    }


def _parse_piece(source: str, abc_text: str | None, fallback_title: str) -> tuple[np.ndarray, dict]:
    """One piece (a score file, or one ABC tune's text) -> (codes [4, T], meta)."""
    from music21 import converter

    if abc_text is not None:
        score = converter.parse(abc_text, format="abc", forceSource=True)
    else:
        score = converter.parse(source, forceSource=True, storePickle=False)
    if hasattr(score, "scores") and len(score.scores):  # an opus: first score only
        score = score.scores[0]
    codes, num_parts = symbolic.score_to_codes(score)
    if codes.shape[1] < MIN_PIECE_FRAMES:
        raise ValueError(f"only {codes.shape[1]} frames")
    return codes, _piece_meta(score, codes, num_parts, fallback_title, abc_text or "")


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Deterministic compressed .npz (fixed zip timestamps, sorted names), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())
    tmp.replace(path)


class PieceCache:
    """Per-piece parse results under cache_dir/v<CACHE_VERSION>-<music21 version>/<source hash>/<index>.npz."""

    def __init__(self, cache_dir: Path):
        import music21

        self.root = cache_dir / f"v{CACHE_VERSION}-music21-{music21.__version__}"

    def _path(self, source_hash: str, index: str) -> Path:
        return self.root / source_hash / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', index)}.npz"

    def get(self, source_hash: str, index: str) -> tuple[np.ndarray | None, dict] | None:
        path = self._path(source_hash, index)
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(data["meta_json"].item())
            return (data["codes"] if meta.get("ok") else None), meta

    def put(self, source_hash: str, index: str, codes: np.ndarray | None, meta: dict) -> None:
        arrays = {"meta_json": np.array(json.dumps(meta, sort_keys=True))}
        arrays["codes"] = codes if codes is not None else np.zeros((symbolic.NUM_VOICES, 0), np.uint8)
        _save_npz(self._path(source_hash, index), arrays)


def _collection_sources(config: BuildConfig, collection: Collection) -> list[Path]:
    files = {p for pattern in collection.patterns for p in config.corpus_root.glob(pattern)}
    return sorted(files, key=lambda p: p.relative_to(config.corpus_root).as_posix())


def _parse_unit(unit: tuple[str, str | None, str]) -> tuple[np.ndarray | None, dict]:
    """(score path, ABC tune text or None, fallback title) -> (codes or None, meta with ok / error / parse_seconds)."""
    source, abc_text, fallback_title = unit
    start = time.perf_counter()
    try:
        codes, meta = _parse_piece(source, abc_text, fallback_title)
        meta["ok"] = True
    except Exception as err:  # noqa: BLE001 - a broken score is skipped, not fatal
        codes, meta = None, {"ok": False, "error": f"{type(err).__name__}: {err}"[:200]}
    meta["parse_seconds"] = round(time.perf_counter() - start, 4)
    return codes, meta


def _collection_units(config: BuildConfig, collection: Collection) -> list[dict]:
    """Every piece of a collection in build order: {piece_id, source_hash, index, unit (for _parse_unit)}."""
    units = []
    for source in _collection_sources(config, collection):
        relative = source.relative_to(config.corpus_root).as_posix()
        data = source.read_bytes()
        source_hash = hashlib.sha256(data).hexdigest()[:16]
        tunes = _abc_tunes(data.decode("latin-1")) if source.suffix == ".abc" else [("0", None)]
        for index, abc_text in tunes:
            units.append({"piece_id": f"{relative}#{index}" if abc_text is not None else relative,
                          "source_hash": source_hash, "index": index,
                          "unit": (str(source), abc_text, str(Path(relative).with_suffix("")))})
    return units


def parse_collection(config: BuildConfig, collection: Collection, cache: PieceCache, log=print,
                     pool=None) -> list[dict]:
    """Parse (or read from cache) the pieces of one collection -> [{'piece_id', 'codes', meta...}].

    With a process `pool`, uncached pieces are parsed in batches in parallel; the pieces kept (in order,
    up to limit_per_collection) are the same as without one.
    """
    pieces, failures, parsed, parse_seconds = [], 0, 0, 0.0
    units = _collection_units(config, collection)
    batch_size = 1 if pool is None else 8 * config.workers
    for start in range(0, len(units), batch_size):
        if config.limit_per_collection and len(pieces) >= config.limit_per_collection:
            break
        batch = units[start : start + batch_size]
        results = [cache.get(u["source_hash"], u["index"]) for u in batch]
        todo = [i for i, result in enumerate(results) if result is None]
        fresh = (pool.map if pool is not None else map)(_parse_unit, [batch[i]["unit"] for i in todo])
        for i, (codes, meta) in zip(todo, fresh):
            parse_seconds += meta["parse_seconds"]
            parsed += 1
            cache.put(batch[i]["source_hash"], batch[i]["index"], codes, meta)
            results[i] = (codes, meta)
        for unit, (codes, meta) in zip(batch, results):
            if config.limit_per_collection and len(pieces) >= config.limit_per_collection:
                break
            if codes is None:
                failures += 1
                continue
            pieces.append({**{k: v for k, v in meta.items() if k not in ("ok", "parse_seconds")},
                           "piece_id": unit["piece_id"], "collection": collection.name, "style": collection.style,
                           "codes": codes})
    per_piece = parse_seconds / parsed if parsed else 0.0
    log(f"{collection.name}: {len(pieces)} pieces ({failures} unparsable), parsed {parsed} now "
        f"in {parse_seconds:.1f}s ({per_piece * 1000:.0f} ms/piece)")
    return pieces


# ------------------------------------------------------------------- pieces -> splits, segments, the file


MELODY_KEY_NOTES = 16  # a tune is recognised by the intervals between its first 16 top-voice notes


def split_key(piece: dict) -> str:
    """What decides a piece's split: its style and the intervals of its opening melody.

    Tunes that open alike (the same chorale melody harmonised twice, a tune in two O'Neill files or two
    transcriptions, Essen variants, in any key) share a key, hence a split, so none leaks from train into
    val/test. Pieces whose top voice has too few notes fall back to their piece id.
    """
    top = piece["codes"][0]
    onsets = top[top >= 2].astype(np.int16)[: MELODY_KEY_NOTES + 1]
    if len(onsets) <= MELODY_KEY_NOTES // 2:
        return piece["piece_id"]
    return piece["style"] + ":" + ",".join(str(i) for i in np.diff(onsets).tolist())


def assign_splits(pieces: list[dict]) -> list[str]:
    """Split of each piece: within each style, split keys ranked by their hash go val, test, then 18 x train.

    So every style (even one with a few dozen pieces) has val and test pieces, about 5% each, and pieces
    sharing a split key share a split. Deterministic for a given set of pieces.
    """
    keys = [split_key(piece) for piece in pieces]
    split_of_key = {}
    for style in sorted({piece["style"] for piece in pieces}):
        style_keys = {key for key, piece in zip(keys, pieces) if piece["style"] == style}
        ranked = sorted(style_keys, key=lambda key: hashlib.sha256(key.encode()).hexdigest())
        for rank, key in enumerate(ranked):
            split_of_key[key] = SPLIT_CYCLE[rank % len(SPLIT_CYCLE)]
    return [split_of_key[key] for key in keys]


def drop_duplicates(pieces: list[dict]) -> tuple[list[dict], int]:
    """Keep the first of pieces with identical codes (files in the corpus overlap); returns (kept, dropped)."""
    seen, kept = set(), []
    for piece in pieces:
        digest = hashlib.sha256(piece["codes"].tobytes() + bytes(str(piece["codes"].shape), "ascii")).digest()
        if digest not in seen:
            seen.add(digest)
            kept.append(piece)
    return kept, len(pieces) - len(kept)


def segment_starts(num_frames: int) -> list[int]:
    """Segment start frames: every HOP_FRAMES, plus one (padded) that covers the piece's end."""
    starts = list(range(0, max(num_frames - SEGMENT_FRAMES, 0) + 1, HOP_FRAMES))
    if starts[-1] + SEGMENT_FRAMES < num_frames:
        starts.append(starts[-1] + HOP_FRAMES)
    return starts


def segment_piece(codes: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """codes [4, T] -> (segments uint8 [n, 4, SEGMENT_FRAMES], starts); all-rest segments are dropped.

    A segment that starts inside a note begins with HOLD, which the codec reads as a rest, exactly as
    it reads a generated sequence.
    """
    padded = np.pad(codes, ((0, 0), (0, SEGMENT_FRAMES)), constant_values=symbolic.REST)
    kept = [s for s in segment_starts(codes.shape[1]) if (padded[:, s : s + SEGMENT_FRAMES] >= 2).any()]
    segments = np.stack([padded[:, s : s + SEGMENT_FRAMES] for s in kept]) if kept else np.zeros(
        (0, symbolic.NUM_VOICES, SEGMENT_FRAMES), np.uint8)
    return segments, kept


def normalise_beat(codes: np.ndarray, meter: str) -> tuple[np.ndarray, str, int]:
    """Scores in half- or whole-note beats (3/2, 4/2, 3/1 ..., not alla-breve 2/2) -> quarter-note beats.

    Returns (codes, meter, divisor): note values divided by 2 (x/2) or 4 (x/1) and the meter rewritten
    (4/2 -> 4/4), so a frame is a 16th of the beat in every style. Renaissance polyphony would otherwise
    fill a 128-frame segment with two bars of whole notes.
    """
    numerator, _, denominator = meter.partition("/")
    if meter == "2/2" or denominator not in ("1", "2"):
        return codes, meter, 1
    divisor = 4 // int(denominator)
    return symbolic.shorten_note_values(codes, divisor), f"{numerator}/4", divisor


def build(config: BuildConfig, log=print) -> dict:
    """Parse, segment and write the dataset file and its manifest; returns the manifest."""
    import music21

    cache = PieceCache(config.cache_dir)
    pieces = []
    pool = None
    if config.workers > 1:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(config.workers)
    try:
        for name in config.collections:
            pieces += parse_collection(config, COLLECTIONS[name], cache, log=log, pool=pool)
    finally:
        if pool is not None:
            pool.terminate()
    pieces.sort(key=lambda p: p["piece_id"])
    for piece in pieces:
        piece["codes"], piece["meter"], piece["note_value_divisor"] = normalise_beat(piece["codes"], piece["meter"])
        piece["tempo_bpm"] //= piece["note_value_divisor"]  # the new quarter note is the old half note
    pieces, duplicates = drop_duplicates(pieces)
    segments, segment_piece_index, starts = [], [], []
    for index, (piece, split) in enumerate(zip(pieces, assign_splits(pieces))):
        piece["num_frames"] = piece["codes"].shape[1]
        piece["split"] = split
        piece_segments, piece_starts = segment_piece(piece["codes"])
        segments.append(piece_segments)
        segment_piece_index += [index] * len(piece_starts)
        starts += piece_starts
    if not starts:
        raise UserError("no segments: the chosen collections gave no parsable pieces")
    arrays = {
        "codes": np.concatenate(segments).astype(np.uint8),
        "segment_piece": np.array(segment_piece_index, dtype=np.int32),
        "segment_start": np.array(starts, dtype=np.int32),
    }
    for name in PIECE_STRING_FIELDS:
        arrays[f"piece_{name}"] = np.array([str(p[name]) for p in pieces], dtype=str)
    for name in PIECE_INT_FIELDS:
        arrays[f"piece_{name}"] = np.array([int(p[name]) for p in pieces], dtype=np.int32)
    _save_npz(config.out, arrays)
    size = config.out.stat().st_size
    if size > MAX_SIZE_BYTES:
        log(f"warning: {config.out} is {size / 2**20:.1f} MB, over the {MAX_SIZE_BYTES / 2**20:.0f} MB budget")
    piece_split = arrays["piece_split"][arrays["segment_piece"]]
    piece_style = arrays["piece_style"][arrays["segment_piece"]]
    manifest = {
        "command": rebuild_command(config),
        "music21_version": music21.__version__,
        "token_format": {"num_voices": symbolic.NUM_VOICES, "frames_per_quarter": symbolic.FRAMES_PER_QUARTER,
                         "rest": symbolic.REST, "hold": symbolic.HOLD, "lowest_pitch": symbolic.LOWEST_PITCH,
                         "cardinality": symbolic.CARDINALITY, "segment_frames": SEGMENT_FRAMES,
                         "hop_frames": HOP_FRAMES},
        "sha256": hashlib.sha256(config.out.read_bytes()).hexdigest(),
        "size_bytes": size,
        "collections": {
            name: {"pieces": int((arrays["piece_collection"] == name).sum()),
                   "segments": int((arrays["piece_collection"][arrays["segment_piece"]] == name).sum())}
            for name in config.collections
        },
        "duplicates_dropped": duplicates,
        "segments_per_split": {s: int((piece_split == s).sum()) for s in SPLITS},
        "pieces_per_split": {s: int((arrays["piece_split"] == s).sum()) for s in SPLITS},
        "segments_per_style": {s: int((piece_style == s).sum()) for s in sorted(set(piece_style.tolist()))},
    }
    config.out.with_suffix(".json").write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"wrote {config.out} ({size / 2**20:.2f} MB, {len(starts)} segments from {len(pieces)} pieces)")
    return manifest


def rebuild_command(config: BuildConfig) -> str:
    parts = ["musicgen-cfg corpus build"]
    if config.out.resolve() != DEFAULT_PATH.resolve():
        parts += ["--out", str(config.out)]
    if tuple(config.collections) != tuple(COLLECTIONS):
        parts += ["--collections", *config.collections]
    if config.limit_per_collection:
        parts += ["--limit-per-collection", str(config.limit_per_collection)]
    if config.rebuild_shipped:
        parts += ["--rebuild-shipped"]
    return " ".join(parts)


# ------------------------------------------------------------------------------------------------- CLI


def run_build(config: BuildConfig) -> int:
    """`musicgen-cfg corpus build`."""
    build(config, log=lambda message: print(message, file=sys.stderr, flush=True))
    return 0
