"""`musicgen-cfg reproduce`: the paper's quality-diversity sweeps, Pareto plot, hypervolumes and claim checks.

    musicgen-cfg reproduce --config configs/reproduce.yaml --out results
    musicgen-cfg reproduce --config configs/reproduce.yaml --train true      # also train beta = 5, 10 (slow on CPU)
    musicgen-cfg reproduce --config configs/gpu/reproduce.yaml               # the GPU recipe (2 seeds per beta; docs/gpu.md)
    musicgen-cfg reproduce --help-config                                     # every key

Families (each point = one `generate` run on held-out prompts + `evaluate`):
  cfg          base model, CFG gamma in guidance_scales (gamma != 1 costs 2 LM passes per step)
  temperature  base model, gamma = 1, sampling temperature in temperatures
  beta         distilled models: beta = 0 (quality_model), beta = 15 (diversity_model) and the
               intermediate betas, trained here with `train_config --beta B` when --train true; with
               --train_endpoints true beta = 0 and 15 are trained here too, from base_model
  lerp         theta(lam) = (1 - lam) theta_q + lam theta_d (merging.merge.sweep_checkpoints); lam = 0
               and 1 are the quality and diversity models themselves (the lerp is exact there)
Seeds: every trained model is trained once per training seed in `seeds` (`--seed S`; seed 0 keeps the
single-seed names models/beta_5, later seeds add _s<S>), and LERP merges each seed's own (theta_q, theta_d)
pair. A point of several seeds pools their runs on the same prompts: its mean is over seeds and prompts and
its 95% CI comes from a two-level bootstrap that resamples seeds and prompts (bootstrap.py); claims.md
also lists each seed's mean. With `jobs` > 1 the trainings, generations and evaluations run as that many parallel
`musicgen-cfg train` / `generate` / `evaluate` processes (the commands the manifests record).
Missing models (the shipped default-quality / default-diversity, untrained betas) skip their points
with a log line. Everything resumes: generation skips finished items, evaluation is cached per run
directory, merges and trained models already on disk are reused, and every evaluated point leaves a record
in OUT/records/ (reproduce_records.py; commit it) that a later session reuses without the model's weights.

OUT gets runs/ (one generate run each, with metrics.json), models/ (merges, trained betas), records/, prompts.txt,
points.json + table.md (every point, 95% bootstrap CIs over prompts), pareto.png (+ note_diversity.png: quality
against the note-level diversity of rl/note_diversity.py, default world), hypervolume.json,
claims.md + claims.json (automatic checks of the paper's claims) and provenance.json (git commit, config).

Modules: this one plans the points and runs them (models, trainings, generations, evaluations);
pareto.py holds Point, the front geometry (hypervolume's reference point explained there) and the pooling
of seeds, claims.py the claim checks, reproduce_report.py the tables, plots and claims.md.
"""

import dataclasses
import json
import random
import subprocess
import sys
import time
from pathlib import Path

from musicgen_cfg.checkpoint import write_json
from musicgen_cfg.config import field, load_config
from musicgen_cfg.errors import UserError
from musicgen_cfg.experiments.claims import check_claims
from musicgen_cfg.experiments.generate import MAX_DURATION_S, MAX_NUM_SAMPLES, check_request_size
from musicgen_cfg.experiments.pareto import (
    DIVERSITY_BETA,
    FAMILIES,
    QUALITY_BETA,
    Point,
    family_points,
    hypervolume,
    point_mean,
    pool_seeds,
    reference_point,
)
from musicgen_cfg.experiments.reproduce_records import (
    RECORDS_DIR,
    Records,
    lerp_identity,
    recipe_identity,
    record_key,
    weights_identity,
)
from musicgen_cfg.experiments.reproduce_report import plot_front, write_claims, write_tables
from musicgen_cfg.prompts import MAX_SEED

REPO = Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class ReproduceConfig:
    out: str = field("results", "output directory")
    base_model: str = field("default", "base model theta_0: CFG and temperature sweeps, teacher of the trained betas")
    quality_model: str = field("default-quality", "beta = 0 model theta_q (model spec or checkpoint dir)")
    diversity_model: str = field("default-diversity", "beta = 15 model theta_d (model spec or checkpoint dir)")
    prompts: str = field("default", "'default' = captions of the default corpus test split, or a .txt/.jsonl file")
    num_prompts: int = field(64, "held-out prompts per point", min=1)
    num_samples: int = field(4, "samples per prompt (>= 2: diversity is measured among them)", min=2,
                             max=MAX_NUM_SAMPLES)
    duration: float = field(8.0, "seconds per sample", gt=0.0, max=MAX_DURATION_S)
    seed: int = field(0, "seed of prompt selection, captions, generation and bootstrap", min=0, max=MAX_SEED)
    batch_size: int = field(32, "generation batch size", min=1)
    top_k: int | None = field(250, "sampling top-k of every point (0 or None = full distribution)", min=0)
    guidance_scales: tuple[float, ...] = field((1.0, 1.25, 1.5, 2.0, 3.0, 5.0), "CFG gammas of the base model")
    cfg_reference: float | None = field(None, "the CFG gamma the claims compare with; None = the base model's "
                                              "recorded teacher gamma (3 for real MusicGen)")
    temperatures: tuple[float, ...] = field((0.8, 1.0, 1.2), "temperature baseline (base model, gamma = 1); empty = skip")
    betas: tuple[float, ...] = field((5.0, 10.0), "intermediate betas (models/beta_<B>, trained with --train true)")
    train: bool = field(False, "train the missing intermediate-beta models (slow on CPU)")
    train_config: str = field("configs/diversity.yaml", "distillation config for the intermediate betas (beta, model, "
                                                        "embedder, out, export, threads, device are set here)")
    lambdas: tuple[float, ...] = field((0.0, 0.25, 0.5, 0.75, 1.0), "LERP lambdas between quality and diversity models", min=0.0, max=1.0)
    seeds: tuple[int, ...] = field((0,), "training seeds of every trained model (and LERP pair); a point pools its "
                                        "seeds: mean and 95% bootstrap CI over seeds and prompts")
    train_endpoints: bool = field(False, "also train beta = 0 (quality_train_config) and beta = 15 (train_config) from "
                                         "base_model for every seed that has no model; quality_model / diversity_model, "
                                         "when they exist, are seed 0's")
    sweeps: bool = field(True, "run the sweeps; false = only train the missing models (no merges, no generation)")
    quality_train_config: str = field("configs/quality.yaml", "distillation config of beta = 0 when train_endpoints")
    jobs: int = field(1, "trainings / generations / evaluations at once: > 1 runs them as parallel `musicgen-cfg "
                         "train` / `generate` / `evaluate` processes (each with `threads` threads)", min=1)
    reward_embedder: str = field("default", "diversity embedder used in training: default | DIR | clap:<dir-or-id>")
    heldout_embedder: str | None = field(None, "held-out diversity embedder (None: judges / encodec-emb of the run's codec)")
    clap: str | None = field(None, "CLAP dir or hub id (real MusicGen: quality score and held-out embedder)")
    judges_scorer: str | None = field(None, "default world: the judges' scorer directory; None = the shipped one")
    world: str = field("auto", "auto | default | real (see musicgen-cfg evaluate)")
    bootstrap: int = field(1000, "bootstrap resamples for the CIs", min=1, max=100_000)
    smooth_tolerance: float = field(0.1, "claim 4: largest step against the trend, as a fraction of the family's range", min=0.0, max=1.0)
    device: str = field("auto", "auto | cpu | cuda")
    threads: int = field(2, "torch CPU threads", min=1)

    def __post_init__(self):
        for name in ("guidance_scales", "temperatures", "betas", "lambdas"):
            values = getattr(self, name)
            values = values.split(",") if isinstance(values, str) else values
            try:
                setattr(self, name, tuple(float(v) for v in values if str(v).strip() != ""))
            except ValueError:
                raise UserError(f"config key {name!r}: expected comma-separated numbers, got {values!r}") from None
        check_request_size(self.num_prompts, self.num_samples, self.duration)  # each point is one such run
        if not self.guidance_scales:
            raise UserError("guidance_scales must list at least one gamma (the CFG front)")
        if any(not QUALITY_BETA < b < DIVERSITY_BETA for b in self.betas):
            raise UserError(f"intermediate betas must lie strictly between {QUALITY_BETA:g} and {DIVERSITY_BETA:g} "
                            f"(the quality and diversity models), got {self.betas}")
        seeds = self.seeds.split(",") if isinstance(self.seeds, str) else self.seeds
        try:
            self.seeds = tuple(int(str(v)) for v in seeds if str(v).strip() != "")
        except ValueError:
            raise UserError(f"config key 'seeds': expected comma-separated integers, got {seeds!r}") from None
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise UserError(f"seeds must be distinct non-negative integers (at least one), got {self.seeds}")


# ------------------------------------------------------------------------------- planning, running

def seed_tag(tag: str, seed: int) -> str:
    """Name of a model trained with `seed`: seed 0 keeps the single-seed name (beta_5), others add _s<seed>."""
    return tag if seed == 0 else f"{tag}_s{seed}"


def select_prompts(config: ReproduceConfig) -> list[str]:
    """num_prompts held-out prompts: captions of random test-split segments, or the head of a prompts file."""
    from musicgen_cfg.prompts import read_prompts, validate_prompts

    if config.prompts != "default":
        return validate_prompts(read_prompts(config.prompts)[: config.num_prompts])
    from musicgen_cfg.world.corpus import load_dataset

    test = load_dataset("test")
    rng = random.Random(config.seed)
    indices = rng.sample(range(len(test)), min(config.num_prompts, len(test)))
    return [test.sample_caption(i, rng) for i in indices]


def model_available(spec: str) -> bool:
    """A checkpoint directory (or shipped default) with config.json, or a hub id (checked when loaded)."""
    from musicgen_cfg.model import looks_like_hub_id, resolve_spec

    try:
        path = Path(resolve_spec(spec))
    except UserError:
        return False
    return (path / "config.json").is_file() or looks_like_hub_id(spec)


def model_identities(config: ReproduceConfig, out: Path) -> dict[str, dict]:
    """tag -> identity (reproduce_records) of every model prepare_models can provide, whether it exists yet or not."""
    base = weights_identity(config.base_model)
    identities = {"base": base}
    endpoints = {QUALITY_BETA: config.quality_model, DIVERSITY_BETA: config.diversity_model}
    trained = {*config.betas, *(endpoints if config.train_endpoints else ())}
    for seed in config.seeds:
        for beta in sorted({*config.betas, *endpoints}):
            tag = seed_tag(f"beta_{beta:g}", seed)
            if seed == 0 and beta in endpoints and model_available(endpoints[beta]):
                identities[tag] = weights_identity(endpoints[beta])
            elif beta in trained:
                train_config, overrides, _ = train_command(config, beta, seed, out, out / "models" / tag)
                identities[tag] = recipe_identity(train_config, overrides, base)
        quality, diversity = (identities.get(seed_tag(f"beta_{b:g}", seed)) for b in (QUALITY_BETA, DIVERSITY_BETA))
        if quality and diversity:
            for lam in config.lambdas:
                if 0 < lam < 1:
                    identities[seed_tag(f"lerp_{lam:g}", seed)] = lerp_identity(lam, quality, diversity)
    return identities


def recorded_models(points: list[Point], recorded: set[str]) -> set[str]:
    """The model tags whose weights no point needs any more: every point of the model (an endpoint's also
    include its seed's interior LERP points, which are merged from it) has a record in `recorded` (run names)."""
    needs: dict[str, set[str]] = {}
    for point in points:
        needs.setdefault(point.model_tag, set()).add(point.run_name)
        if point.family == "lerp" and 0 < point.param < 1:
            for beta in (QUALITY_BETA, DIVERSITY_BETA):
                needs.setdefault(seed_tag(f"beta_{beta:g}", point.seed), set()).add(point.run_name)
    return {tag for tag, runs in needs.items() if runs <= recorded}


def prepare_models(config: ReproduceConfig, out: Path, log, recorded: set[str] = frozenset()) -> dict[str, str]:
    """tag -> model spec of every model the sweeps can use: trains / merges what is missing and allowed.

    recorded: tags whose points all have records (recorded_models): not trained or merged when missing.
    """
    from musicgen_cfg.model import resolve_spec

    models = {"base": config.base_model}
    endpoints = {QUALITY_BETA: config.quality_model, DIVERSITY_BETA: config.diversity_model}
    for beta, spec in endpoints.items():  # seed 0's endpoints
        if model_available(spec):
            models[f"beta_{beta:g}"] = spec
        elif not config.train_endpoints:
            log(f"skip: model {spec!r} not found; its beta point and the LERP sweep are left out")
    trained = sorted({*config.betas, *(endpoints if config.train_endpoints else ())})
    wanted = [(beta, seed, out / "models" / seed_tag(f"beta_{beta:g}", seed)) for seed in config.seeds for beta in trained
              if seed_tag(f"beta_{beta:g}", seed) not in models]
    missing = [(beta, seed, destination) for beta, seed, destination in wanted
               if not (destination / "config.json").is_file() and destination.name not in recorded]
    if missing and config.train:
        train_betas(config, missing, out, log)
    for beta, seed, destination in wanted:
        if (destination / "config.json").is_file():
            check_trained_recipe(config, beta, seed, out, destination)
            models[seed_tag(f"beta_{beta:g}", seed)] = str(destination)
        elif destination.name in recorded:
            models[destination.name] = str(destination)
            log(f"recorded: beta = {beta:g}, seed {seed} (its points' records in {out / RECORDS_DIR}; not trained)")
        else:
            log(f"skip: beta = {beta:g} is not trained for seed {seed} ({destination} missing; pass --train true to train it)")
    if not config.sweeps:  # no merges either: the endpoints may still be training elsewhere
        return models
    interior = [lam for lam in config.lambdas if 0 < lam < 1]
    for seed in config.seeds:
        quality = models.get(seed_tag(f"beta_{QUALITY_BETA:g}", seed))
        diversity = models.get(seed_tag(f"beta_{DIVERSITY_BETA:g}", seed))
        if not (quality and diversity and interior):
            continue
        from merging.merge import sweep_checkpoints, sweep_dir_name

        sweep = out / "models" / seed_tag("lerp", seed)
        # Merged again even when a merge is on disk: it may be of other endpoints (a retrained theta_d), and a
        # merge costs seconds next to generating its point.
        unmerged = [lam for lam in interior if seed_tag(f"lerp_{lam:g}", seed) not in recorded]
        if unmerged:
            log(f"merging lambda = {', '.join(f'{lam:g}' for lam in unmerged)} into {sweep}")
            sweep_checkpoints([resolve_spec(quality), resolve_spec(diversity)], sweep, unmerged, overwrite=True)
        models.update({seed_tag(f"lerp_{lam:g}", seed): str(sweep / sweep_dir_name(lam)) for lam in interior})
    return models


def train_command(config: ReproduceConfig, beta: float, seed: int, out: Path, destination: Path) -> tuple[str, list[str], Path]:
    """(config file, `--key value` overrides, run directory) of `musicgen-cfg train` for one beta and seed.

    beta = 0 uses quality_train_config (no reward, so no embedder); the others use train_config with the
    reward embedder this pipeline evaluates diversity with, so "reward embedder" means the same model in both.
    """
    run_dir = out / "train" / destination.name
    train_config = config.quality_train_config if beta == QUALITY_BETA else config.train_config
    overrides = ["--beta", f"{beta:g}", "--seed", str(seed), "--model", config.base_model]
    if beta != QUALITY_BETA:
        overrides += ["--embedder", config.reward_embedder]
    overrides += ["--out", str(run_dir), "--export", str(destination), "--threads", str(config.threads),
                  "--device", config.device]
    return train_config, overrides, run_dir


def check_trained_recipe(config: ReproduceConfig, beta: float, seed: int, out: Path, destination: Path):
    """Refuse a trained model on disk whose manifest records another training config than this pipeline's
    recipe for (beta, seed): its points would be recorded under the recipe's identity."""
    from musicgen_cfg.checkpoint import read_json
    from musicgen_cfg.training.distillation import DistillConfig

    train_config, overrides, run_dir = train_command(config, beta, seed, out, destination)
    recipe = json.loads(json.dumps(dataclasses.asdict(load_config(DistillConfig, train_config, overrides))))
    trained = read_json(destination / "manifest.json", label="trained model manifest").get("config")
    if trained != recipe:
        changed = sorted(key for key in {*recipe, *(trained or {})} if (trained or {}).get(key) != recipe.get(key))
        raise UserError(f"{destination} was trained with another recipe than {train_config} {' '.join(overrides)} "
                        f"(differs in: {', '.join(changed) or 'its manifest has no config'}); delete it and {run_dir} "
                        f"to retrain it")


def train_betas(config: ReproduceConfig, missing: list[tuple[float, int, Path]], out: Path, log):
    """Train each (beta, seed) -> destination, resuming interrupted runs; `jobs` processes at once when jobs > 1."""
    from musicgen_cfg.run_layout import checkpoints
    from musicgen_cfg.training.distillation import DistillConfig, train

    commands = []
    for beta, seed, destination in missing:
        train_config, overrides, run_dir = train_command(config, beta, seed, out, destination)
        resume = ["--resume"] if checkpoints(run_dir) else []
        command = f"musicgen-cfg train --config {train_config} {' '.join(overrides)}"
        log(f"training beta = {beta:g}, seed {seed}: {command}{' --resume' if resume else ''}")
        if config.jobs == 1:
            train(load_config(DistillConfig, train_config, overrides), resume=bool(resume), command=command)
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            commands.append(([sys.executable, "-m", "musicgen_cfg.cli", "train", "--config", train_config,
                              *overrides, *resume], run_dir / "train.log"))
    run_parallel(commands, config.jobs, log)


def run_parallel(commands: list[tuple[list[str], Path]], jobs: int, log):
    """Run the (argv, log file) commands, at most `jobs` at once; any failure -> UserError naming its log."""
    pending, running, failed = list(commands), [], []
    while pending or running:
        while pending and len(running) < jobs:
            argv, log_path = pending.pop(0)
            handle = log_path.open("w")
            running.append((subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT), handle, log_path))
        time.sleep(0.5)
        for entry in [r for r in running if r[0].poll() is not None]:
            process, handle, log_path = entry
            handle.close()
            running.remove(entry)
            if process.returncode:
                failed.append(log_path)
            log(f"{'failed' if process.returncode else 'done'}: {log_path}")
    if failed:
        raise UserError(f"{len(failed)} of {len(commands)} parallel runs failed; see {', '.join(map(str, failed))}")


def plan_points(config: ReproduceConfig, models: dict[str, str]) -> list[Point]:
    points = [Point("cfg", g, f"gamma={g:g}", "base", models["base"], guidance_scale=g) for g in config.guidance_scales]
    points += [Point("temperature", t, f"T={t:g}", "base", models["base"], temperature=t) for t in config.temperatures]
    for beta in sorted({QUALITY_BETA, DIVERSITY_BETA, *config.betas}):
        for seed in config.seeds:
            if (tag := seed_tag(f"beta_{beta:g}", seed)) in models:
                points.append(Point("beta", beta, f"beta={beta:g}", tag, models[tag], seed=seed))
    for seed in config.seeds:
        endpoints = {0.0: seed_tag(f"beta_{QUALITY_BETA:g}", seed), 1.0: seed_tag(f"beta_{DIVERSITY_BETA:g}", seed)}
        if set(endpoints.values()) <= set(models):  # prepare_models merged every interior lambda
            for lam in config.lambdas:
                tag = endpoints.get(lam, seed_tag(f"lerp_{lam:g}", seed))
                points.append(Point("lerp", lam, f"lambda={lam:g}", tag, models[tag], seed=seed))
    return points


def point_sampling(point: Point, config: ReproduceConfig) -> dict:
    """The generation settings of a point's run (part of its record key)."""
    return {"guidance_scale": point.guidance_scale, "temperature": point.temperature, "num_samples": config.num_samples,
            "duration": config.duration, "seed": config.seed, "top_k": config.top_k, "batch_size": config.batch_size}


def generate_points(points: list[Point], prompts: list[str], config: ReproduceConfig, runs: Path, log):
    """One generate run per distinct run directory; each model is loaded once. With jobs > 1 the runs are
    `musicgen-cfg generate` processes on OUT/prompts.txt instead (top-k None is `--top-k 0`: off)."""
    import torch

    if config.jobs > 1:
        distinct = {point.run_name: point for point in points}
        runs.mkdir(parents=True, exist_ok=True)
        log(f"generating {len(distinct)} runs, {config.jobs} processes at once")
        run_parallel([([sys.executable, "-m", "musicgen_cfg.cli", "generate", "--model", point.model,
                        "--prompts-file", str(runs.parent / "prompts.txt"), "--num-samples", str(config.num_samples),
                        "--duration", f"{config.duration!r}", "--seed", str(config.seed), "--batch-size",
                        str(config.batch_size), "--guidance-scale", f"{point.guidance_scale!r}", "--temperature",
                        f"{point.temperature!r}", "--top-k", str(config.top_k or 0), "--format", "wav", "--device",
                        config.device, "--out", str(runs / name)], runs / f"{name}.log")
                      for name, point in distinct.items()], config.jobs, log)
        return

    from musicgen_cfg.experiments.generate import GenerateConfig, run_generation
    from musicgen_cfg.model import load_model, pick_device
    from musicgen_cfg.sampler import SamplingConfig

    torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    by_model: dict[str, dict[str, Point]] = {}
    for point in points:
        by_model.setdefault(point.model_tag, {})[point.run_name] = point
    for runs_of_model in by_model.values():
        first = next(iter(runs_of_model.values()))
        model = load_model(first.model, device=device)
        for name, point in runs_of_model.items():
            log(f"generate {name} ({point.model})")
            generate = GenerateConfig(point.model, config.num_samples, config.duration, config.seed, config.batch_size,
                                      "wav", config.device)
            sampling = SamplingConfig(guidance_scale=point.guidance_scale, temperature=point.temperature, top_k=config.top_k)
            run_generation(model, prompts, generate, sampling, runs / name)
        del model  # release it before the next model loads


# -------------------------------------------------------------------------------------------- main

def git_commit() -> str:
    """HEAD of this checkout, '+dirty' when tracked files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("+dirty" if dirty else "")


def evaluate_in_parallel(config: ReproduceConfig, run_names: list[str], runs: Path, log):
    """`musicgen-cfg evaluate` over the runs in `jobs` processes, with this pipeline's evaluation settings, so
    that the in-process evaluation below reads their metrics.json back (its cache key is the same)."""
    options = ["--reward-embedder", config.reward_embedder, "--world", config.world, "--bootstrap",
               str(config.bootstrap), "--seed", str(config.seed)]
    for flag, value in (("--heldout-embedder", config.heldout_embedder), ("--clap", config.clap),
                        ("--judges-scorer", config.judges_scorer)):
        if value is not None:
            options += [flag, value]
    chunks = [run_names[i :: config.jobs] for i in range(min(config.jobs, len(run_names)))]
    log(f"evaluating {len(run_names)} runs in {len(chunks)} processes")
    run_parallel([([sys.executable, "-m", "musicgen_cfg.cli", "evaluate", *(str(runs / name) for name in chunk),
                    *options], runs / f"evaluate-{i}.log") for i, chunk in enumerate(chunks)], config.jobs, log)


def reproduce(config: ReproduceConfig, command: str = "", log=print, judges=None) -> dict:
    """Run every sweep, evaluate, plot, check the claims; returns {"points", "hypervolume", "claims"}
    (with sweeps false: only trains the missing models and returns {"models": tag -> spec})."""
    from musicgen_cfg.experiments.evaluate import EVALUATION_VERSION, Evaluator
    from musicgen_cfg.experiments.evaluate_options import EvaluateConfig
    from musicgen_cfg.model import load_model

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    base = load_model(config.base_model)
    reference_gamma = base.default_guidance_scale if config.cfg_reference is None else config.cfg_reference
    world = config.world if config.world != "auto" else "default" if base.is_symbolic else "real"
    del base
    if reference_gamma not in config.guidance_scales:
        raise UserError(f"the claims compare with CFG gamma = {reference_gamma:g}, which is not in guidance_scales "
                        f"{config.guidance_scales}; add it or set cfg_reference")
    evaluator = Evaluator(EvaluateConfig(config.reward_embedder, config.heldout_embedder, config.clap,
                                         config.judges_scorer, config.world, config.bootstrap, config.seed), judges=judges)
    evaluator.embedder(config.reward_embedder)  # a missing embedder fails now, not after all the generation
    prompts = select_prompts(config)
    (out / "prompts.txt").write_text("\n".join(prompts) + "\n")
    identities = model_identities(config, out)
    evaluation = {"version": EVALUATION_VERSION, "components": evaluator.components(world, config.base_model),
                  "bootstrap": config.bootstrap, "seed": config.seed}
    candidates = plan_points(config, dict.fromkeys(identities, ""))  # every point the config can produce
    keys = {point.run_name: record_key(identities[point.model_tag], point_sampling(point, config), prompts, evaluation)
            for point in candidates}
    records = Records(out / RECORDS_DIR)
    recorded = {name: result for name, key in keys.items() if (result := records.read(name, key)) is not None}
    if recorded:
        log(f"{len(recorded)} points recorded in {records.directory}: not generated or evaluated again")
    models = prepare_models(config, out, log, recorded_models(candidates, set(recorded)))
    if not config.sweeps:
        log(f"trained models in {out / 'models'}; sweeps: false, so no sweeps")
        return {"models": models}
    points = plan_points(config, models)
    todo = [point for point in points if point.run_name not in recorded]
    generate_points(todo, prompts, config, out / "runs", log)
    if config.jobs > 1 and todo:
        evaluate_in_parallel(config, sorted({p.run_name for p in todo}), out / "runs", log)
    per_prompt = {}
    for point in points:
        result = recorded.get(point.run_name)
        if result is None:
            result = evaluator.evaluate(out / "runs" / point.run_name)  # read back when evaluated in parallel
            records.write(point.run_name, keys[point.run_name], point.model, result)
            recorded[point.run_name] = result
        point.metrics, per_prompt[point.run_name] = result["metrics"], result["per_prompt"]
        log(f"evaluated {point.family} {point.label} (seed {point.seed}): quality {point_mean(point, 'quality'):.4f}, "
            f"diversity {point_mean(point, 'diversity_reward'):.4f}")
    points = pool_seeds(points, per_prompt, config.bootstrap, config.seed)
    coordinates = {id(p): (point_mean(p, "quality"), point_mean(p, "diversity_reward")) for p in points}
    reference = reference_point(list(coordinates.values()))
    hypervolumes = {family: hypervolume([coordinates[id(p)] for p in family_points(points, family)], reference)
                    for family in FAMILIES if family_points(points, family)}
    claims = check_claims(points, reference_gamma, hypervolumes, config.smooth_tolerance, per_prompt, config.bootstrap,
                          config.seed)
    write_tables(points, hypervolumes, reference, out)
    plots = ["pareto.png"]
    plot_front(points, hypervolumes, out / "pareto.png")
    if all("note_diversity" in p.metrics for p in points):
        plots.append("note_diversity.png")
        plot_front(points, {}, out / "note_diversity.png", "note_diversity",
                   "note-level diversity (mean pairwise total variation of pitch-class, interval, rhythm histograms)")
    write_claims(claims, out)
    write_json({"git_commit": git_commit(), "command": command, "config": dataclasses.asdict(config),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}, out / "provenance.json")
    for c in claims:
        log(f"claim {c['claim']}: {c['status']}: {c['statement']}")
    log(f"results in {out}: table.md, {', '.join(plots)}, claims.md")
    return {"points": points, "hypervolume": hypervolumes, "claims": claims}
