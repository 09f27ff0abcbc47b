"""The note-hearing reward embedder: its front end, onset picking, note statistics, training targets, and
what the shipped weights hear (notes, not gain or timbre)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from musicgen_cfg.errors import UserError
from rl.embedders import load_embedder, load_embedder_dir, save_embedder
from rl.note_embedder import (
    BLOCKS,
    NoteEmbedder,
    NoteEmbedderConfig,
    block_distances,
    detect_onsets,
    equal_spread_weights,
    note_statistics,
    statistics_vector,
    voice_intervals,
)
from rl.train_note_embedder import note_targets, onset_scores, render_clips

CONFIG = NoteEmbedderConfig()


def test_a_sine_peaks_in_its_semitone_bin():
    model = NoteEmbedder(CONFIG)
    t = torch.arange(16000) / 16000
    for midi in (45, 69, 84):
        sine = 0.3 * torch.sin(2 * math.pi * 440 * 2 ** ((midi - 69) / 12) * t)
        spectrogram = model.transcriber.spectrogram(sine[None])  # [1, 2, bins, T]
        peak = spectrogram[0, 0].mean(dim=1).argmax().item()
        assert peak == midi - CONFIG.lowest_pitch


def test_onsets_are_the_local_maxima_over_time_above_the_threshold():
    probs = np.zeros((3, 8))
    probs[0, 2], probs[0, 3] = 0.9, 0.6  # one onset spread over two frames: the peak counts
    probs[2, 5] = 0.7
    probs[1, 6] = 0.4  # below the threshold
    frames, pitches = detect_onsets(probs, threshold=0.5)
    assert frames.tolist() == [2, 5] and pitches.tolist() == [0, 2]


def test_note_statistics_of_a_known_phrase():
    # C4, then E4, then the chord G4 + C5 (one frame apart: one onset time), then C4.
    frames = np.array([0, 10, 20, 21, 40])
    midi = np.array([60, 64, 67, 72, 60])
    stats = note_statistics(frames, midi, CONFIG)
    pitch_classes = stats["pitch_class"]
    assert pitch_classes[0] == pytest.approx(3 / 5) and pitch_classes[4] == pytest.approx(1 / 5)
    assert pitch_classes[7] == pytest.approx(1 / 5) and pitch_classes[-1] == 0
    # E4 - C4 = +4; G4 - E4 = +3 (the nearer note takes the voice), C5 enters as a second voice;
    # C4 - G4 = -7 (the voice nearest it)
    interval = stats["interval"]
    offset = CONFIG.max_interval
    assert {i - offset: round(v * 3) for i, v in enumerate(interval[:-1]) if v} == {4: 1, 3: 1, -7: 1}
    # onset times 0, 0.2, 0.41, 0.8 s -> three inter-onset intervals, all inside the histogram's range
    assert stats["ioi"][:-1].sum() == pytest.approx(1.0)
    for histogram in stats.values():
        assert histogram.sum() == pytest.approx(1.0)


def test_voices_are_followed_through_held_notes_and_chords():
    # soprano E5 D5 C5 over a bass C3 that holds, then moves to G2 while the soprano holds
    onset_times = [[48, 76], [74], [72], [43]]
    assert voice_intervals(onset_times, max_voices=4, max_interval=12) == [-2, -2, -5]
    # the nearest pitch of the previous onset time would have measured C5 -> G2 (-29, clipped) instead
    # a voice entering an octave and more away starts a voice rather than a leap ...
    assert voice_intervals([[60], [62, 79], [64, 77]], max_voices=4, max_interval=12) == [2, 2, -2]
    # ... unless every voice is taken: then it is the nearest voice's leap, clipped
    assert voice_intervals([[60], [79]], max_voices=1, max_interval=12) == [12]


def test_the_cosine_is_the_weighted_mean_of_block_affinities():
    rng = np.random.default_rng(0)
    stats = [{name: (h := rng.random(n)) / h.sum() for name, n in zip(BLOCKS, (13, 26, 21))} for _ in range(2)]
    weights = (0.2, 0.5, 0.3)
    a, b = (statistics_vector(s, weights) for s in stats)
    assert np.linalg.norm(a) == pytest.approx(1.0)
    distances = block_distances(stats)
    expected = sum(w * (1 - distances[name][0, 1]) for name, w in zip(BLOCKS, weights))
    assert a @ b == pytest.approx(expected)


def test_equal_spread_weights_make_each_block_vary_alike():
    rng = np.random.default_rng(1)
    distances = {"pitch_class": 0.4 * rng.random(500), "interval": 0.1 * rng.random(500), "ioi": 0.2 * rng.random(500)}
    weights = equal_spread_weights(distances)
    assert sum(weights) == pytest.approx(1.0)
    spreads = [w * np.std(distances[name]) for name, w in zip(BLOCKS, weights)]
    assert max(spreads) == pytest.approx(min(spreads))
    assert weights[1] > weights[2] > weights[0]  # the narrowest block weighs most
    with pytest.raises(UserError, match="do not vary"):
        equal_spread_weights({**distances, "interval": np.full(500, 0.3)})


def test_block_weights_are_normalised_and_checked():
    assert NoteEmbedderConfig(block_weights=(2, 1, 1)).block_weights == (0.5, 0.25, 0.25)
    for bad in ((1, 1), (1, 0, 1), (1, float("nan"), 1)):
        with pytest.raises(UserError, match="block_weights"):
            NoteEmbedderConfig(block_weights=bad)


def test_silence_puts_all_mass_in_the_nothing_bins():
    stats = note_statistics(np.zeros(0, int), np.zeros(0, int), CONFIG)
    assert all(h[-1] == 1.0 for h in stats.values())
    vector = statistics_vector(stats)
    assert np.linalg.norm(vector) == pytest.approx(1.0)
    assert len(vector) == CONFIG.embedding_dim


def test_training_targets_land_on_the_notes_frames():
    codes = np.zeros((4, 16), np.int64)
    codes[0, 0], codes[0, 1:4] = 2 + (60 - 36), 1  # C4 for 4 frames
    codes[0, 8] = 2 + (67 - 36)  # G4 for 1 frame
    frame_seconds = 0.15  # 100 bpm
    onset, sounding = note_targets(codes, frame_seconds, 200, CONFIG)
    scale = frame_seconds / CONFIG.hop_seconds
    assert onset.sum() == 2
    assert onset[60 - CONFIG.lowest_pitch, 0] == 1 and onset[67 - CONFIG.lowest_pitch, round(8 * scale)] == 1
    assert sounding[60 - CONFIG.lowest_pitch].sum() == round(4 * scale)


def test_save_and_load_give_the_same_embeddings(tmp_path):
    torch.manual_seed(0)
    model = NoteEmbedder(CONFIG)
    waves = 0.1 * torch.randn(2, 16000)
    save_embedder(model, tmp_path / "notes")
    loaded = load_embedder(str(tmp_path / "notes"))
    assert isinstance(loaded, NoteEmbedder)
    assert torch.equal(loaded.embed(waves, 16000), model.embed(waves, 16000))
    (tmp_path / "notes" / "config.json").write_text('{"embedder": "nope"}')
    with pytest.raises(UserError, match="not an embedder directory"):
        load_embedder_dir(tmp_path / "notes")


@pytest.fixture(scope="module")
def shipped():
    return load_embedder("default")


@pytest.fixture(scope="module")
def segments():
    from musicgen_cfg.world.corpus import load_dataset

    dataset = load_dataset("test")
    rows = [i for i in range(0, len(dataset), max(1, len(dataset) // 40)) if (dataset.codes([i])[0] >= 2).sum() > 40]
    return dataset.codes(rows[:12]).astype(np.int64)


def render(codes, prompt):
    from musicgen_cfg.world.codec import SymbolicCodec

    return SymbolicCodec().decode(codes, [prompt] * len(codes))


def test_the_shipped_embedder_is_the_note_embedder(shipped):
    assert isinstance(shipped, NoteEmbedder)


def batched_definition(transcriber, waveforms):
    """The front end and the transcriber as defined, on the whole batch at once: (spectrograms, onset probabilities)."""
    cfg, layers = transcriber.config, []
    for name, n_fft in (("pitch", cfg.pitch_n_fft), ("time", cfg.time_n_fft)):
        spec = torch.stft(waveforms, n_fft, hop_length=cfg.hop_length, window=torch.hann_window(n_fft), center=True,
                          pad_mode="constant", return_complex=True)
        power = (spec.abs() ** 2).transpose(1, 2) @ getattr(transcriber, f"{name}_filters")
        layers.append(torch.log(power + 1e-10).transpose(1, 2))
    x = torch.stack(layers, dim=1)
    x = torch.maximum(x, x.amax(dim=(2, 3), keepdim=True) - cfg.floor_db * math.log(10) / 10)
    x = (x - x.mean(dim=(2, 3), keepdim=True)) / (x.std(dim=(2, 3), keepdim=True) + 1e-5)
    with torch.no_grad():
        return x, torch.sigmoid(transcriber.eval()(x)[0])


def test_the_reward_path_clip_by_clip_equals_the_batched_definition(shipped):
    """The embedder works one clip at a time for speed; spectrograms, onset probabilities and embeddings stay
    those of the batched definition within 1e-5 (max abs), on random codes at two tempos."""
    rng = np.random.default_rng(0)
    config = shipped.config
    for prompt in ("piano at 70 bpm", "strings at 160 bpm"):
        kind = rng.choice(3, size=(3, 4, 128), p=[0.1, 0.6, 0.3])  # rest, hold, onset
        codes = np.where(kind == 2, rng.integers(14, 42, size=kind.shape), kind)  # onsets of MIDI 48..75
        audio = render(codes, prompt)
        spectrograms, probs = batched_definition(shipped.transcriber, audio)
        assert (shipped.transcriber.spectrogram(audio) - spectrograms).abs().max() <= 1e-5
        assert (shipped.onset_probabilities(audio) - probs).abs().max() <= 1e-5
        onsets = [detect_onsets(p, config.onset_threshold) for p in probs.numpy()]
        assert min(len(frames) for frames, _ in onsets) > 20  # notes were heard: the statistics are compared
        vectors = np.stack([statistics_vector(note_statistics(frames, pitches + config.lowest_pitch, config),
                                              config.block_weights) for frames, pitches in onsets])
        assert (shipped.embed(audio, 16000) - torch.from_numpy(vectors).float()).abs().max() <= 1e-5


def test_the_shipped_transcriber_finds_most_onsets_of_every_timbre(shipped):
    waves, onsets, _, prompts = render_clips("val", 24, 4.0, seed=1, config=shipped.config)
    scores = onset_scores(shipped, waves, onsets)
    assert scores["recall"] > 0.85 and scores["precision"] > 0.6, scores
    assert len({p.split(" at ")[0] for p in prompts}) >= 5


@pytest.mark.slow  # the shipped embedder on many rendered clips
def test_the_shipped_embedder_hears_notes_not_gain_or_timbre(shipped, segments):
    from musicgen_cfg.world.symbolic import transpose_codes

    def distances(a, b):
        return 1 - (a * b).sum(dim=1)

    piano = shipped.embed(render(segments, "piano at 100 bpm"), 16000)
    louder = shipped.embed(0.5 * render(segments, "piano at 100 bpm"), 16000)
    organ = shipped.embed(render(segments, "organ at 100 bpm"), 16000)
    fifth = np.stack([transpose_codes(c, 7 if c[c >= 2].max() + 7 < 64 else -5) for c in segments])
    transposed = shipped.embed(render(fifth, "piano at 100 bpm"), 16000)
    others = piano.roll(1, dims=0)  # each segment against another segment
    assert distances(piano, louder).max() < 0.02  # per-clip standardisation: gain does not matter
    # another instrument moves an embedding much less than other notes do
    assert distances(piano, organ).mean() < 0.5 * distances(piano, others).mean()
    # a transposition moves the pitch classes and keeps the intervals and the rhythm
    blocks = {"pitch_class": slice(0, 13), "interval": slice(13, 13 + 2 * CONFIG.max_interval + 2),
              "ioi": slice(13 + 2 * CONFIG.max_interval + 2, None)}
    moved = {name: distances(F.normalize(piano[:, b], dim=1), F.normalize(transposed[:, b], dim=1)).mean().item()
             for name, b in blocks.items()}
    assert moved["pitch_class"] > 0.15 and moved["interval"] < 0.05 and moved["ioi"] < 0.05, moved
