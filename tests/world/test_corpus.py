"""Dataset builder (corpus_build.py), loader (corpus.py) and the committed dataset file.

    pytest tests/world/test_corpus.py
"""

import hashlib
import json
import random

import numpy as np
import pytest

from musicgen_cfg import cli
from musicgen_cfg.errors import UserError
from musicgen_cfg.world import corpus, corpus_build, symbolic


@pytest.fixture(scope="module")
def small_build(tmp_path_factory):
    """A tiny dataset (3 chorales + 4 Chinese folk songs) built twice: fresh, then from the cache."""
    root = tmp_path_factory.mktemp("corpus")
    configs = [corpus_build.BuildConfig(out=root / name / "dataset.npz", collections=("bach_chorales", "essen_chinese"),
                                  limit_per_collection=4, cache_dir=root / "cache") for name in ("a", "b")]
    logs = [[], []]
    manifests = [corpus_build.build(config, log=log.append) for config, log in zip(configs, logs)]
    return configs, manifests, logs


def test_build_is_deterministic_and_resumes_from_cache(small_build):
    configs, manifests, logs = small_build
    assert configs[0].out.read_bytes() == configs[1].out.read_bytes()
    assert manifests[0] == json.loads(configs[0].out.with_suffix(".json").read_text())
    assert manifests[0]["sha256"] == hashlib.sha256(configs[0].out.read_bytes()).hexdigest()
    assert "parsed 4 now" in logs[0][0] and "parsed 0 now" in logs[1][0]
    assert manifests[0]["collections"]["bach_chorales"]["pieces"] == 4
    assert manifests[0]["command"].startswith("musicgen-cfg corpus build --out ")
    assert "--limit-per-collection 4" in manifests[0]["command"]


@pytest.mark.slow  # a corpus build in worker processes
def test_parallel_parsing_writes_the_same_file(small_build, tmp_path):
    configs, manifests, _ = small_build
    parallel = corpus_build.BuildConfig(out=tmp_path / "dataset.npz", collections=("bach_chorales", "essen_chinese"),
                                  limit_per_collection=4, cache_dir=tmp_path / "cache", workers=2)
    log = []
    assert corpus_build.build(parallel, log=log.append)["sha256"] == manifests[0]["sha256"]
    assert parallel.out.read_bytes() == configs[0].out.read_bytes()
    assert "--workers" not in manifests[0]["command"]  # the rebuild command does not depend on it
    for workers, bounds in (("0", r"\[1, 128\], got 0"), ("100000", r"\[1, 128\], got 100000")):  # checked at parse
        with pytest.raises(UserError, match="--workers must be in " + bounds):
            cli.parse(["corpus", "build", "--out", str(tmp_path / "d.npz"), "--workers", workers])


def test_loader_shapes_and_metadata(small_build):
    configs, _, _ = small_build
    dataset = corpus.load_dataset("all", configs[0].out)
    assert len(dataset) == sum(m["segments"] for m in small_build[1][0]["collections"].values())
    codes, meta = dataset.get(0)
    assert codes.dtype == np.uint8 and codes.shape == (4, corpus.SEGMENT_FRAMES)
    assert int(codes.max()) < symbolic.CARDINALITY
    assert meta["style"] in ("chorale", "chinese_folk") and meta["split"] in corpus.SPLITS
    caption = dataset.sample_caption(0, random.Random(0))
    assert isinstance(caption, str) and caption
    assert set(dataset.styles) == {"chorale", "chinese_folk"}
    assert all(len(dataset.get(i)[0].shape) == 2 for i in range(len(dataset)))


def test_augmented_items_are_transposed_with_their_key(small_build):
    configs, _, _ = small_build
    plain = corpus.load_dataset("all", configs[0].out)
    augmented = corpus.load_dataset("all", configs[0].out, augment_semitones=5)
    rng = random.Random(3)
    shifts = set()
    for i in range(len(plain)):
        codes, meta = augmented.get(i, augmented.random_transpose(i, rng))
        original, original_meta = plain.get(i)
        shifts.add(meta["transpose"])
        assert abs(meta["transpose"]) <= 5
        assert np.array_equal(codes, symbolic.transpose_codes(original, meta["transpose"]))
        assert meta["tonic"] == (original_meta["tonic"] + meta["transpose"]) % 12
    assert len(shifts) > 3


def test_segments_cover_each_piece_with_hop():
    assert corpus_build.segment_starts(128) == [0]
    assert corpus_build.segment_starts(100) == [0]
    assert corpus_build.segment_starts(300) == [0, 64, 128, 192]
    codes = np.zeros((4, 300), np.uint8)
    codes[0, 250] = symbolic.pitch_to_token(60)
    segments, starts = corpus_build.segment_piece(codes)
    assert starts == [128, 192] and segments.shape == (2, 4, 128)  # all-rest segments dropped
    assert segments[1, 0, 250 - 192] == symbolic.pitch_to_token(60)


def test_splits_are_90_5_5_per_style_and_follow_split_keys():
    rng = np.random.default_rng(0)
    pieces = [_piece(f"p{i}", rng.integers(40, 80, size=20).tolist(), style=("a", "b")[i % 2]) for i in range(400)]
    pieces.append({**pieces[0], "piece_id": "copy-of-p0"})
    splits = corpus_build.assign_splits(pieces)
    assert splits == corpus_build.assign_splits(pieces)
    assert splits[-1] == splits[0]
    for style in ("a", "b"):
        style_splits = [s for s, p in zip(splits, pieces[:400]) if p["style"] == style]
        assert (style_splits.count("val"), style_splits.count("test")) == (10, 10)


def _piece(piece_id, melody, style="irish_traditional"):
    codes = np.zeros((4, 2 * len(melody)), np.uint8)
    codes[0, ::2] = [symbolic.pitch_to_token(p) for p in melody]
    return {"piece_id": piece_id, "style": style, "codes": codes}


def test_copies_and_transposed_variants_share_a_split_and_exact_copies_are_dropped():
    tune = [60, 62, 64, 65, 67, 65, 64, 62, 60, 67, 69, 71, 72, 71, 69, 67, 65, 64]
    original, copy = _piece("a.abc#1", tune), _piece("b.abc#7", tune)
    transposed_variant = _piece("c.abc#2", [p + 5 for p in tune[:17]] + [40])
    other = _piece("a.abc#2", tune[::-1])
    keys = [corpus_build.split_key(p) for p in (original, copy, transposed_variant, other)]
    assert keys[0] == keys[1] == keys[2] != keys[3]
    assert corpus_build.split_key(_piece("short#1", tune[:5])) == "short#1"
    kept, dropped = corpus_build.drop_duplicates([original, copy, transposed_variant, other])
    assert [p["piece_id"] for p in kept] == ["a.abc#1", "c.abc#2", "a.abc#2"] and dropped == 1


def test_style_balanced_weights(small_build):
    dataset = corpus.load_dataset("all", small_build[0][0].out)
    weights = dataset.style_balanced_weights()
    assert weights.shape == (len(dataset),) and np.isclose(weights.sum(), 1.0)
    for style in ("chorale", "chinese_folk"):
        assert np.isclose(weights[dataset.styles == style].sum(), 0.5)


def test_bad_options_raise_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown collection 'nope'"):
        corpus_build.BuildConfig(out=tmp_path / "d.npz", collections=("nope",))
    with pytest.raises(UserError, match="--limit-per-collection must be >= 0"):
        cli.parse(["corpus", "build", "--out", str(tmp_path / "d.npz"), "--limit-per-collection", "-1"])
    with pytest.raises(UserError, match="split"):
        corpus.load_dataset("dev", tmp_path / "d.npz")
    with pytest.raises(UserError, match="not found"):
        corpus.load_dataset("train", tmp_path / "missing.npz")


def test_committed_dataset_loads_and_splits_are_disjoint_by_piece():
    manifest = json.loads(corpus.DEFAULT_PATH.with_suffix(".json").read_text())
    data = corpus.DEFAULT_PATH.read_bytes()
    assert len(data) <= corpus_build.MAX_SIZE_BYTES
    assert hashlib.sha256(data).hexdigest() == manifest["sha256"]
    pieces = {}
    for split in corpus.SPLITS:
        dataset = corpus.load_dataset(split)
        assert len(dataset) == manifest["segments_per_split"][split] > 0
        pieces[split] = set(dataset.arrays["segment_piece"][dataset.rows].tolist())
        codes = dataset.codes()
        assert codes.dtype == np.uint8 and codes.shape[1:] == (4, corpus.SEGMENT_FRAMES)
        assert codes.max() < symbolic.CARDINALITY
    assert not (pieces["train"] & pieces["val"]) and not (pieces["train"] & pieces["test"])
    assert not (pieces["val"] & pieces["test"])
    sample_codes, meta = corpus.load_dataset("val").get(0)
    assert meta["style"] in manifest["segments_per_style"]
    assert corpus.load_dataset("val").sample_caption(0, random.Random(0))


def test_old_note_values_are_modernised():
    codes = np.zeros((4, 64), np.uint8)
    codes[0, ::16] = symbolic.pitch_to_token(60)  # whole notes in 4/2
    for meter, new_meter, divisor in [("4/2", "4/4", 2), ("3/1", "3/4", 4), ("2/2", "2/2", 1), ("6/8", "6/8", 1)]:
        shortened, got_meter, got_divisor = corpus_build.normalise_beat(codes, meter)
        assert (got_meter, got_divisor) == (new_meter, divisor)
        assert shortened.shape == (4, 64 // divisor)
        assert (shortened[0] >= 2).sum() == 4
