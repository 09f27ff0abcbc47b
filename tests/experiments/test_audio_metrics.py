"""Offline real-audio metrics (musicgen_cfg/experiments/audio_metrics.py) and their use in `musicgen-cfg evaluate`:
FAD and KAD against closed forms and on synthetic sets, the encodec-emb embedder, CLAP diversity.

    .venv/bin/python -m pytest -q tests/experiments/test_audio_metrics.py
"""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen_cfg.cli import main
from musicgen_cfg.experiments.audio_metrics import (
    EncodecEmbedder,
    clip_features,
    fad,
    frechet_distance,
    kernel_distance,
    median_bandwidth,
)

RATE = 16000  # the tiny EnCodec's


def tones(freqs, seconds=0.5, rate=RATE, phase=0.0):
    t = np.arange(int(seconds * rate)) / rate
    return [(0.5 * np.sin(2 * np.pi * f * t + phase)).astype(np.float32) for f in freqs]


# ----------------------------------------------------------------------------------------- pure maths

def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu_a, mu_b = rng.normal(size=5), rng.normal(size=5)
    var_a, var_b = rng.uniform(0.1, 2, size=5), rng.uniform(0.1, 2, size=5)
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    assert frechet_distance(mu_a, np.diag(var_a), mu_b, np.diag(var_b)) == pytest.approx(expected, rel=1e-6)
    sigma = np.cov(rng.normal(size=(50, 5)), rowvar=False)
    assert frechet_distance(mu_a, sigma, mu_a, sigma) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_equals_the_matrix_square_root_formula():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(3)
    for dims, samples in ((4, 50), (8, 5)):  # full rank, and singular (fewer samples than dimensions)
        a, b = rng.normal(size=(samples, dims)), rng.normal(size=(samples, dims)) * 2 + 1
        (mu_a, s_a), (mu_b, s_b) = (a.mean(0), np.cov(a, rowvar=False)), (b.mean(0), np.cov(b, rowvar=False))
        direct = np.sum((mu_a - mu_b) ** 2) + np.trace(s_a + s_b - 2 * linalg.sqrtm(s_a @ s_b).real)
        assert frechet_distance(mu_a, s_a, mu_b, s_b) == pytest.approx(direct, rel=1e-5)


def test_fad_is_zero_for_one_set_and_grows_with_a_shift():
    x = np.random.default_rng(1).normal(size=(40, 4))
    assert fad(x, x) == pytest.approx(0.0, abs=1e-6)
    shifts = [fad(x + d, x) for d in (0.5, 1.0, 2.0)]
    assert shifts == pytest.approx([4 * 0.25, 4 * 1.0, 4 * 4.0], rel=1e-6)  # |shift|^2 over 4 dimensions


def test_kad_is_unbiased_symmetric_and_grows_with_a_shift():
    rng = np.random.default_rng(2)
    # both sets drawn from one distribution, fixed bandwidth: the estimator's mean is 0 (a biased MMD^2 is > 0)
    draws = [kernel_distance(rng.normal(size=(10, 3)), rng.normal(size=(10, 3)), bandwidth=1.0) for _ in range(300)]
    assert abs(np.mean(draws)) < 3 * np.std(draws) / np.sqrt(len(draws)) and min(draws) < 0
    reference = rng.normal(size=(30, 3))
    x = rng.normal(size=(30, 3))
    bw = median_bandwidth(reference)
    assert kernel_distance(x, reference, bw) == pytest.approx(kernel_distance(reference, x, bw))
    shifted = [kernel_distance(x + d, reference) for d in (0.0, 0.5, 1.0, 2.0)]
    assert shifted == sorted(shifted) and shifted[-1] > 10 * abs(shifted[0])
    with pytest.raises(ValueError):
        kernel_distance(x[:1], reference)


# ------------------------------------------------------------------------------------------ encodec-emb

def test_encodec_embedder_is_the_mean_of_the_encoder_latents(tiny_hf):
    embedder = EncodecEmbedder(tiny_hf.audio_encoder)
    low, high = tones([220])[0], tones([3000])[0]
    features = clip_features(embedder, [low, high, low, low[:4000]], RATE)  # two lengths: two batches
    assert features.shape == (4, tiny_hf.audio_encoder.config.hidden_size)
    with torch.no_grad():
        direct = tiny_hf.audio_encoder.encoder(torch.from_numpy(np.stack([low, high]))[:, None]).mean(dim=-1)
    assert np.allclose(features[:2], direct.numpy(), atol=1e-6)
    assert np.array_equal(features[0], features[2]) and np.linalg.norm(features[0] - features[1]) > 1e-4
    assert np.allclose(clip_features(embedder, [low, high, low, low[:4000]], RATE, batch_size=1), features, atol=1e-6)
    assert clip_features(embedder, tones([220], rate=32000), 32000).shape == (1, features.shape[1])  # resampled
    vectors = embedder.embed(torch.from_numpy(np.stack([low, high])), RATE)
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(2), atol=1e-5)


# ---------------------------------------------------------------------------- through `evaluate`

def write_tone_run(directory, model, prompts_freqs):
    """A real-MusicGen run of known audio: prompt i has one sample per frequency in prompts_freqs[i]."""
    directory.mkdir(parents=True)
    lines = []
    for i, freqs in enumerate(prompts_freqs):
        for j, clip in enumerate(tones(freqs)):
            name = f"{i}_{j}.wav"
            sf.write(directory / name, clip, RATE)
            np.save(directory / f"{name}.codes.npy", np.zeros((4, 25), dtype=np.int16))
            lines.append(json.dumps({"file": name, "codes_file": f"{name}.codes.npy", "prompt": f"sad piano {i}",
                                     "prompt_index": i, "sample_index": j, "seed": j, "model": str(model),
                                     "model_sha256": "0" * 64, "sampling": {"guidance_scale": 1.0, "duration": 0.5},
                                     "sample_rate": RATE, "wall_time_s": 0.1}))
    (directory / "manifest.jsonl").write_text("\n".join(lines) + "\n")


def write_reference(directory, freqs, phase=0.0):
    directory.mkdir(parents=True)
    for k, clip in enumerate(tones(freqs, phase=phase)):
        sf.write(directory / f"ref{k}.flac", clip, RATE)


def evaluate(capsys, *args):
    code = main(["evaluate", *map(str, args), "--bootstrap", "20"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def test_evaluate_real_runs_offline_fad_kad_and_clap_diversity(tiny_dir, tmp_path, capsys):
    from musicgen_cfg.tiny import save_tiny_clap

    run = tmp_path / "run"
    write_tone_run(run, tiny_dir, [[220, 220, 220], [300, 600, 1200, 2400]])  # identical / distinct samples
    write_reference(tmp_path / "same", [220, 220, 220, 300, 600, 1200, 2400])
    write_reference(tmp_path / "other", [5000, 5200, 5400, 5600, 5800, 6000, 6200])
    clap = save_tiny_clap(tmp_path / "clap")

    out = evaluate(capsys, run, "--reference-dir", tmp_path / "same", "--clap", clap)
    result = json.loads((run / "metrics.json").read_text())
    assert "reward_embedder" not in result["components"]  # beta = 0 runs need none
    assert result["components"]["reference"]["embeddings"] == {"encodec-emb": "encodec-emb", "clap": f"clap:{clap}"}
    metrics = result["metrics"]
    # identical samples: diversity 0 and Vendi 1 under any embedder; distinct ones: > 0 (the random
    # EnCodec's pooled latents share a large common direction, so its cosine distances are small)
    for name in ("diversity_heldout", "diversity_clap"):
        assert result["per_prompt"][name][0] == pytest.approx(0.0, abs=1e-6)
        assert result["per_prompt"][name][1] > 1e-5
    assert result["per_prompt"]["vendi_heldout"][0] == pytest.approx(1.0, abs=1e-4)
    # the run's clips are exactly the reference set: FAD 0 (up to sqrtm's rounding of a rank-6 covariance);
    # the unbiased KAD of a set against itself is 2 (S - m^2) / (m^2 (m - 1)) <= 0, S = the kernel sum
    same = {name: metrics[name]["mean"] for name in ("fad_encodec-emb", "kad_encodec-emb", "fad_clap", "kad_clap")}
    assert same["fad_clap"] == pytest.approx(0.0, abs=1e-3)
    assert -2 / 6 <= same["kad_encodec-emb"] <= 0 and -2 / 6 <= same["kad_clap"] <= 0
    assert -1 <= metrics["clap_score"]["mean"] <= 1 and "fad_encodec-emb" in out

    evaluate(capsys, run, "--reference-dir", tmp_path / "other", "--clap", clap)  # new reference: recomputed
    other = json.loads((run / "metrics.json").read_text())["metrics"]
    # (FAD is in squared feature units: the random EnCodec's latents move little, so compare, not threshold)
    assert other["fad_encodec-emb"]["mean"] > 100 * same["fad_encodec-emb"] and other["fad_encodec-emb"]["mean"] > 0
    assert other["kad_encodec-emb"]["mean"] > max(0.0, same["kad_encodec-emb"] + 0.1), other
    assert other["fad_clap"]["mean"] > 10 * same["fad_clap"] and other["kad_clap"]["mean"] > same["kad_clap"], other
