"""`musicgen-cfg reproduce`: the whole pipeline on tiny models (train, sweep, generate, evaluate, claims), its
seeds, its parallel generation, and the checks that keep it from reusing a model trained by another recipe.

    .venv/bin/python -m pytest -q tests/experiments/test_reproduce.py
"""

import dataclasses
import json
import shutil
import sys

import numpy as np
import pytest

from musicgen_cfg.config import load_config
from musicgen_cfg.errors import UserError
from musicgen_cfg.experiments.reproduce import ReproduceConfig, reproduce

PROMPTS = ["sad piano", "a joyful jig with drums"]


@pytest.mark.slow  # the reproduce workflow end to end: training, sweeps, evaluation
def test_reproduce_end_to_end_on_tiny_models(tiny_dir, clap_dir, reward_dir, tmp_path):
    from musicgen_cfg.tiny import save_tiny_musicgen

    quality = save_tiny_musicgen(tmp_path / "quality", seed=1)
    diversity = save_tiny_musicgen(tmp_path / "diversity", seed=2)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "results"
    train_config = tmp_path / "train.yaml"  # one distillation step, so the pipeline trains beta = 5 itself
    train_config.write_text(f"prompts: {prompts}\nembedder: {reward_dir}\nprompts_per_step: 2\ngenerations: 3\n"
                            "num_frames: 5\nsteps: 1\neval_every: 1\nheldout_prompts: 1\ntensorboard: false\nthreads: 1\n")
    config = ReproduceConfig(
        out=str(out), base_model=str(tiny_dir), quality_model=str(quality), diversity_model=str(diversity),
        prompts=str(prompts), num_prompts=2, num_samples=2, duration=0.2, guidance_scales=(1.0, 3.0), temperatures=(),
        betas=(5.0,), train=True, train_config=str(train_config), lambdas=(0.0, 0.5, 1.0),
        reward_embedder=str(reward_dir), clap=str(clap_dir), bootstrap=50, device="cpu", threads=1)
    logs = []
    summary = reproduce(config, log=logs.append)
    assert json.loads((out / "models" / "beta_5" / "config.json").read_text())["musicgen_cfg"]["beta"] == 5.0
    labels = {(p.family, p.label) for p in summary["points"]}
    assert labels == {("cfg", "gamma=1"), ("cfg", "gamma=3"), ("beta", "beta=0"), ("beta", "beta=5"),
                      ("beta", "beta=15"), ("lerp", "lambda=0"), ("lerp", "lambda=0.5"), ("lerp", "lambda=1")}
    # lambda = 0 / 1 are the endpoint models' own runs; only lambda = 0.5 is merged
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        "base_g1_t1", "base_g3_t1", "beta_0_g1_t1", "beta_15_g1_t1", "beta_5_g1_t1", "lerp_0.5_g1_t1"]
    merged = json.loads((out / "models" / "lerp" / "lam_0.5" / "config.json").read_text())
    assert merged["musicgen_cfg"]["lambda"] == 0.5
    for name in ("table.md", "points.json", "hypervolume.json", "pareto.png", "claims.md", "claims.json",
                 "provenance.json", "prompts.txt"):
        assert (out / name).is_file(), name
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    claims = {c["claim"]: c for c in summary["claims"]}
    assert sorted(claims) == list(range(1, 8))
    assert all(c["status"] in ("pass", "fail") for c in claims.values())  # every family is present
    assert "LM passes ratio 0.500" in claims[2]["detail"]
    hv = json.loads((out / "hypervolume.json").read_text())
    assert set(hv["hypervolume"]) == {"cfg", "beta", "lerp"} and all(v >= 0 for v in hv["hypervolume"].values())
    text = (out / "claims.md").read_text()
    assert all(f"{n}. **" in text for n in range(1, 8))
    assert len(json.loads((out / "provenance.json").read_text())["git_commit"]) >= 7

    # resuming: nothing is generated or evaluated again
    stamps = {p.name: (p / "metrics.json").read_text() for p in (out / "runs").iterdir()}
    manifests = {p.name: (p / "manifest.jsonl").read_text() for p in (out / "runs").iterdir()}
    reproduce(config, log=logs.append)
    assert stamps == {p.name: (p / "metrics.json").read_text() for p in (out / "runs").iterdir()}
    assert manifests == {p.name: (p / "manifest.jsonl").read_text() for p in (out / "runs").iterdir()}


@pytest.mark.slow  # the reproduce workflow: two trainings and an evaluate process
def test_reproduce_trains_each_seed_and_pools_them(tiny_dir, clap_dir, reward_dir, tmp_path):
    """seeds (0, 1): beta = 5 trained twice (seed 0 under the single-seed name), one pooled beta = 5 point; a
    `musicgen-cfg evaluate` process with the pipeline's settings (what jobs > 1 runs) reads the cache back."""
    from musicgen_cfg.experiments.reproduce import evaluate_in_parallel
    from musicgen_cfg.tiny import save_tiny_musicgen

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    train_config = tmp_path / "train.yaml"
    train_config.write_text(f"prompts: {prompts}\nembedder: {reward_dir}\nprompts_per_step: 2\ngenerations: 3\n"
                            "num_frames: 4\nsteps: 1\neval_every: 1\nheldout_prompts: 1\ntensorboard: false\nthreads: 1\n")
    out = tmp_path / "results"
    config = ReproduceConfig(
        out=str(out), base_model=str(tiny_dir), quality_model=str(save_tiny_musicgen(tmp_path / "q", seed=1)),
        diversity_model=str(save_tiny_musicgen(tmp_path / "d", seed=2)), prompts=str(prompts), num_prompts=2,
        num_samples=2, duration=0.2, guidance_scales=(1.0, 3.0), temperatures=(), betas=(5.0,), train=True,
        train_config=str(train_config), lambdas=(0.0, 1.0), seeds="0,1", reward_embedder=str(reward_dir),
        clap=str(clap_dir), bootstrap=50, device="cpu", threads=1)
    trained = reproduce(ReproduceConfig(**{**config.__dict__, "sweeps": False}), log=[].append)["models"]
    assert set(trained) == {"base", "beta_0", "beta_15", "beta_5", "beta_5_s1"}  # given endpoints = seed 0
    assert not (out / "runs").exists() and not (out / "models" / "lerp").exists()
    summary = reproduce(config, log=[].append)
    for name, seed in (("beta_5", 0), ("beta_5_s1", 1)):
        manifest = json.loads((out / "models" / name / "manifest.json").read_text())
        assert f"--seed {seed} " in json.dumps(manifest)
    beta_5 = next(p for p in summary["points"] if p.family == "beta" and p.param == 5.0)
    assert beta_5.runs == ("beta_5_g1_t1", "beta_5_s1_g1_t1")
    assert len(beta_5.metrics["quality"]["seed_means"]) == 2
    assert [p.param for p in summary["points"] if p.family == "beta"] == [0.0, 5.0, 15.0]  # one point per beta
    assert "beta_5_g1_t1 + beta_5_s1_g1_t1" in (out / "table.md").read_text()
    assert "(seeds " in (out / "claims.md").read_text()
    assert "beta=5 - beta=0 (paired " in (out / "claims.md").read_text()  # the pipeline passes per-prompt values
    # The evaluate command of jobs > 1 uses the same settings: it finds every run up to date.
    stamps = {p.name: (p / "metrics.json").read_text() for p in (out / "runs").iterdir() if p.is_dir()}
    logs = []
    evaluate_in_parallel(config, sorted(stamps), out / "runs", logs.append)
    assert stamps == {name: (out / "runs" / name / "metrics.json").read_text() for name in stamps}
    assert any("done" in line for line in logs)

    # A new session: only OUT/records survives (trained weights and runs are not committed). Nothing is
    # trained, merged, generated or evaluated again, and the results are the same.
    table, claims = (out / "table.md").read_text(), (out / "claims.md").read_text()
    for name in ("models", "runs", "train"):
        shutil.rmtree(out / name)
    logs = []
    reproduce(config, log=logs.append)
    assert not (out / "runs").exists() and not (out / "train").exists()
    assert any("recorded: beta = 5, seed 1" in line for line in logs)
    assert (out / "table.md").read_text() == table and (out / "claims.md").read_text() == claims
    # A changed recipe makes its records stale: those models are trained again.
    train_config.write_text(train_config.read_text() + "lr: 0.0001\n")
    logs = []
    reproduce(config, log=logs.append)
    assert sum("training beta = 5" in line for line in logs) == 2
    assert sorted(p.name for p in (out / "runs").iterdir() if p.is_dir()) == ["beta_5_g1_t1", "beta_5_s1_g1_t1"]


@pytest.mark.parametrize("top_k", [250, None])  # None: the processes get --top-k 0 (off)
@pytest.mark.slow  # `musicgen-cfg generate` processes
def test_parallel_generation_equals_in_process_generation(tiny_dir, tmp_path, top_k):
    """jobs > 1 runs `musicgen-cfg generate` processes: the same codes as the in-process runs."""
    from musicgen_cfg.experiments.pareto import Point
    from musicgen_cfg.experiments.reproduce import generate_points

    points = [Point("cfg", 3.0, "gamma=3", "base", str(tiny_dir), guidance_scale=3.0)]
    codes = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        out.mkdir()
        (out / "prompts.txt").write_text(PROMPTS[0] + "\n")
        config = ReproduceConfig(out=str(out), num_prompts=1, num_samples=2, duration=0.2, guidance_scales=(1.0, 3.0),
                                 jobs=jobs, device="cpu", threads=1, top_k=top_k)
        generate_points(points, [PROMPTS[0]], config, out / "runs", [].append)
        codes[jobs] = {p.run_name: sorted((e["seed"], np.load(out / "runs" / p.run_name / e["codes_file"]).tolist())
                                          for e in map(json.loads, (out / "runs" / p.run_name / "manifest.jsonl")
                                                       .read_text().splitlines()))
                       for p in points}
    assert codes[1] == codes[2] and len(codes[1]["base_g3_t1"]) == 2


def test_run_parallel_reports_the_failed_commands_logs(tmp_path):
    from musicgen_cfg.experiments.reproduce import run_parallel

    ok, bad = tmp_path / "ok.log", tmp_path / "bad.log"
    with pytest.raises(UserError, match="1 of 2 parallel runs failed; see .*bad.log"):
        run_parallel([([sys.executable, "-c", "print('fine')"], ok),
                      ([sys.executable, "-c", "import sys; print('broken'); sys.exit(3)"], bad)], 2, [].append)
    assert ok.read_text() == "fine\n" and bad.read_text() == "broken\n"


def test_reproduce_train_commands_per_beta_and_seed(tmp_path):
    from musicgen_cfg.experiments.reproduce import train_command

    config = ReproduceConfig(train_endpoints=True, seeds=(0, 3), reward_embedder="my-embedder", threads=2)
    quality_config, quality, _ = train_command(config, 0.0, 3, tmp_path, tmp_path / "models" / "beta_0_s3")
    assert quality_config == "configs/quality.yaml" and "--embedder" not in quality  # beta = 0: no reward
    assert quality[quality.index("--seed") + 1] == "3" and quality[quality.index("--beta") + 1] == "0"
    diversity_config, diversity, run_dir = train_command(config, 15.0, 0, tmp_path, tmp_path / "models" / "beta_15")
    assert diversity_config == "configs/diversity.yaml" and diversity[diversity.index("--embedder") + 1] == "my-embedder"
    assert run_dir == tmp_path / "train" / "beta_15"
    with pytest.raises(UserError, match="seeds must be distinct"):
        ReproduceConfig(seeds=(1, 1))
    with pytest.raises(UserError, match="jobs must be >= 1"):
        load_config(ReproduceConfig, None, ["--jobs", "0"])  # bounds are checked where values arrive


@pytest.mark.slow  # the reproduce workflow on tiny models
def test_reproduce_skips_missing_models_and_checks_its_config(tiny_dir, clap_dir, reward_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    config = ReproduceConfig(
        out=str(tmp_path / "r"), base_model=str(tiny_dir), quality_model=str(tmp_path / "no-quality"),
        diversity_model=str(tmp_path / "no-diversity"), prompts=str(prompts), num_prompts=2, num_samples=2,
        duration=0.2, guidance_scales=(1.0, 3.0), temperatures=(1.5,), betas=(10.0,), reward_embedder=str(reward_dir),
        clap=str(clap_dir), bootstrap=20, device="cpu", threads=1)
    logs = []
    claims = {c["claim"]: c["status"] for c in reproduce(config, log=logs.append)["claims"]}
    assert any("no-quality" in line and "skip" in line for line in logs)
    assert any("beta = 10 is not trained" in line for line in logs)
    assert claims[1] in ("pass", "fail") and claims[7] in ("pass", "fail")
    assert [claims[n] for n in (2, 3, 4, 5, 6)] == ["skipped"] * 5
    with pytest.raises(UserError, match="not an embedder directory"):
        reproduce(ReproduceConfig(**{**config.__dict__, "out": str(tmp_path / "r2"), "reward_embedder": str(tmp_path)}))
    assert not (tmp_path / "r2" / "runs").exists()  # nothing generated before the check
    with pytest.raises(UserError, match="not in guidance_scales"):
        reproduce(ReproduceConfig(**{**config.__dict__, "guidance_scales": (1.0, 2.0)}), log=logs.append)
    with pytest.raises(UserError, match=r"num_samples must be in \[2, 1000\]"):
        load_config(ReproduceConfig, None, ["--num-samples", "1"])
    with pytest.raises(UserError, match="guidance_scales"):
        ReproduceConfig(guidance_scales="1,x")


def test_recipe_identity_ignores_where_the_run_writes_but_not_what_it_trains(tmp_path):
    """The same training recipe under another OUT keeps its records; a changed setting does not."""
    from musicgen_cfg.experiments.reproduce_records import recipe_identity

    train_config = tmp_path / "train.yaml"
    train_config.write_text("steps: 2\n")
    base = {"weights": "abc"}

    def identity(out: str, threads: str = "1") -> dict:
        return recipe_identity(str(train_config), ["--beta", "5", "--out", f"{out}/train/beta_5", "--export",
                                                   f"{out}/models/beta_5", "--threads", threads], base)

    assert identity("results") == identity("/elsewhere/results")
    assert identity("results")["overrides"] == ["--beta", "5", "--threads", "1"]
    assert identity("results") != identity("results", threads="2")


def test_a_trained_model_of_another_recipe_is_refused_not_reused(tmp_path):
    """A model on disk under OUT/models is reused only when its manifest records this pipeline's recipe:
    its points would otherwise be recorded under an identity that is not theirs."""
    from musicgen_cfg.experiments.reproduce import ReproduceConfig, check_trained_recipe, train_command
    from musicgen_cfg.training.distillation import DistillConfig

    config = load_config(ReproduceConfig, "configs/reproduce.yaml", ["--out", str(tmp_path)])
    destination = tmp_path / "models" / "beta_0_s1"
    destination.mkdir(parents=True)
    train_config, overrides, _ = train_command(config, 0.0, 1, tmp_path, destination)
    recipe = json.loads(json.dumps(dataclasses.asdict(load_config(DistillConfig, train_config, overrides))))
    (destination / "manifest.json").write_text(json.dumps({"config": recipe}))
    check_trained_recipe(config, 0.0, 1, tmp_path, destination)  # the same recipe: reused
    (destination / "manifest.json").write_text(json.dumps({"config": {**recipe, "lr": 1e-3}}))
    with pytest.raises(UserError, match=r"beta_0_s1 was trained with another recipe .*differs in: lr\); delete it"):
        check_trained_recipe(config, 0.0, 1, tmp_path, destination)
