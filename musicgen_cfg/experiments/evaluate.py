"""`musicgen-cfg evaluate`: quality, diversity and cost of `musicgen-cfg generate` runs, with 95% bootstrap CIs.

    musicgen-cfg evaluate runs/base_g3 runs/quality --out table.csv                  # default world
    musicgen-cfg evaluate runs/base-cfg3 runs/merged-gen --reference-dir my_reference_audio   # real, offline
    musicgen-cfg evaluate runs/merged-gen --clap laion/clap-htsat-unfused \
        --reward-embedder clap:laion/clap-htsat-unfused                                # + CLAP score / diversity
    musicgen-cfg evaluate /tmp/musicgen-cfg-app-XXXX/session-abc                     # a demo session folder

Per run directory (one model, one sampling setting; the manifest written by `generate` or the demo, read and
checked by evaluate_runs.py; a folder of such directories, e.g. a demo session, is evaluated directory by
directory):
- quality and the world's own measures: one metric set per world (world_metrics.py): the default world's
  judges on the codes, its note-level diversity and `distribution_distance`; real MusicGen's CLAP score
  (--clap) and FAD / KAD against --reference-dir.
- diversity: per prompt, the mean pairwise 1 - cos among its samples (the training reward,
  rl/reward.py) and the Vendi score, under the reward embedder (when one is given; the default
  world's is the shipped one) AND a held-out embedder training never saw (default world: `spectral`, fixed
  chroma / flux-interval / flux-rhythm statistics of the audio, rl/spectral_embedder.py; `judges` = the
  judges' code embedder; real: `encodec-emb`, the mean-pooled EnCodec latents of the run's own codec, no
  download; specs resolved by embedder_specs.py); with --clap also under the CLAP audio tower
  (`diversity_clap`).
  Clips the reward gate calls degenerate (--reward-gate) add no diversity: pairs with one count 0 and
  the Vendi scores count the music samples only. degenerate_rate, silent_rate (every 100 ms window
  below -60 dBFS) and silent_window_fraction report how often that happens.
- cost: LM row-forward passes per generated second (one per decoder step and sequence; CFG runs the
  conditional and the null row, so 2 per step when gamma != 1) and measured wall seconds per generated
  second (manifest wall_time_s over the audio's length).

Every metric is a per-prompt value (samples of a prompt averaged), then averaged over the prompts where
it is defined (a judge of an attribute the prompt does not state gives NaN); the CI resamples those
prompts with replacement. `distribution_distance` compares whole sets, so it has no CI.
Writes RUN/metrics.json (with the embedders' and the run's weights sha256) and RUN/metrics.csv; a run
whose manifest and evaluation settings are unchanged is read back from metrics.json, not recomputed.
"""

import csv
import hashlib
import json
import time
from collections import defaultdict
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from musicgen_cfg.checkpoint import file_sha256, write_json
from musicgen_cfg.delay import num_steps
from musicgen_cfg.errors import UserError
from musicgen_cfg.experiments.audio_metrics import embed_files, reference_files
from musicgen_cfg.experiments.bootstrap import bootstrap_ci
from musicgen_cfg.experiments.embedder_specs import embed_clips, embedder_identity, load_spec_embedder
from musicgen_cfg.experiments.evaluate_options import ENCODEC_EMBEDDING, EvaluateArgs, EvaluateConfig
from musicgen_cfg.experiments.evaluate_runs import (
    Sample,
    detect_world,
    expand_runs,
    read_cached,
    read_entries,
    read_samples,
)
from musicgen_cfg.experiments.generate import MANIFEST
from musicgen_cfg.experiments.world_metrics import NO_EMBEDDER, WORLD_METRICS
from rl.diversity import pairwise_diversity, vendi_from_similarity
from rl.reward import reward_gate, silent_window_fraction

# Bump when a metric's definition changes: cached metrics.json files of older versions are recomputed.
EVALUATION_VERSION = 2
METRICS_JSON, METRICS_CSV = "metrics.json", "metrics.csv"
CSV_COLUMNS = ("run", "metric", "mean", "ci_low", "ci_high", "num_prompts")


# ----------------------------------------------------------------------------------------- metrics

def mean_pairwise_distance(embeddings: np.ndarray, music: np.ndarray | None = None) -> float:
    """Mean 1 - cos over the pairs of one prompt's samples, embeddings [G >= 2, D]: the training reward's mean.

    music: bool [G] from the reward gate; pairs with a degenerate sample count 0 (None = all music).
    """
    mask = None if music is None else torch.as_tensor(np.asarray(music, dtype=bool))[None]
    return float(pairwise_diversity(torch.as_tensor(np.asarray(embeddings, dtype=np.float32))[None], mask).mean())


def vendi_score(embeddings: np.ndarray) -> float:
    """exp(entropy of the eigenvalues of K / n), K the cosine-similarity matrix of [n, D] embeddings.

    The effective number of distinct items: 1 when all are identical, n when all are orthogonal.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return vendi_from_similarity(x @ x.T)


def forward_passes(num_frames: int, num_codebooks: int, guidance_scale: float) -> int:
    """LM row-forward passes that generate one sequence: one per decoder step, two (cond + null) with CFG."""
    return num_steps(num_frames, num_codebooks) * (1 if guidance_scale == 1.0 else 2)


# ---------------------------------------------------------------------------------------- evaluator

class ClapScore:
    """Cosine between CLAP's text embedding of the prompt and its audio embedding of the sample."""

    def __init__(self, source: str):
        from transformers import AutoTokenizer

        from rl.embedders import ClapAudioEmbedder

        self.source = source
        self.audio = ClapAudioEmbedder.from_pretrained(source)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
        except Exception as err:  # transformers raises many types (OSError, ValueError, HF errors)
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"cannot load the CLAP tokenizer of '{source}': {reason}") from None
        # RoBERTa positions start after the padding index, so two positions are not usable.
        self.max_tokens = min(self.tokenizer.model_max_length, self.audio.model.config.text_config.max_position_embeddings - 2)

    @torch.no_grad()
    def text(self, prompts: list[str]) -> np.ndarray:
        inputs = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        features = self.audio.model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        return features.pooler_output.float().numpy()  # unit vectors (get_text_features normalises)


class Evaluator:
    """Holds the embedders, judges and CLAP (each loaded on first use) and evaluates run directories."""

    def __init__(self, config: EvaluateConfig, judges=None):
        self.config = config
        self._judges = judges  # tests pass a stand-in with the DefaultWorldJudges API
        self._loaded: dict[str, object] = {}

    def judges(self):
        if self._judges is None:
            from musicgen_cfg.world.judges import DefaultWorldJudges

            self._judges = DefaultWorldJudges(scorer_dir=self.config.judges_scorer)
        return self._judges

    def clap(self) -> ClapScore:
        if "clap-score" not in self._loaded:
            self._loaded["clap-score"] = ClapScore(self.config.clap)
        return self._loaded["clap-score"]

    def embedder(self, spec: str, model_source: str | None = None):
        """An embedder by spec (load_spec_embedder); the CLAP tower of --clap is shared with the CLAP score,
        not loaded twice; encodec-emb is the codec of `model_source` (the run's model)."""
        if self.config.clap and spec == f"clap:{self.config.clap}":
            return self.clap().audio
        key = f"{spec}@{model_source}" if spec == ENCODEC_EMBEDDING else spec
        if key not in self._loaded:
            self._loaded[key] = load_spec_embedder(spec, model_source, judges=self.judges)
        return self._loaded[key]

    def reward_spec(self, world: str) -> str | None:
        spec = self.config.reward_embedder or WORLD_METRICS[world].default_reward_spec
        return None if spec == NO_EMBEDDER else spec

    def heldout_spec(self, world: str) -> str:
        spec = self.config.heldout_embedder or WORLD_METRICS[world].default_heldout_spec
        if spec == self.reward_spec(world):
            raise UserError(f"the held-out embedder must differ from the reward embedder (both {spec!r})")
        WORLD_METRICS[world].check_heldout(spec)
        return spec

    def components(self, world: str, model_source: str) -> dict[str, dict]:
        """What scores this run and its identity (sha256 of the weights): recorded and part of the cache key."""
        metrics = WORLD_METRICS[world]
        metrics.check_options(self.config)
        used = {}
        reward = self.reward_spec(world)
        if reward is not None:
            used["reward_embedder"] = {"spec": reward, **embedder_identity(self.embedder(reward))}
        heldout = self.heldout_spec(world)
        used["heldout_embedder"] = {"spec": heldout, **embedder_identity(self.embedder(heldout, model_source))}
        quality = metrics.quality_component(self)
        if quality is not None:
            used["quality"] = quality
        gate = reward_gate(self.config.reward_gate, symbolic=metrics.symbolic)
        used["reward_gate"] = {"spec": self.config.reward_gate, "class": type(gate).__name__, **vars(gate)}
        if self.config.reference_dir:
            files = reference_files(self.config.reference_dir)
            digest = hashlib.sha256("".join(f"{p.name}:{file_sha256(p)}" for p in files).encode()).hexdigest()
            used["reference"] = {"dir": str(self.config.reference_dir), "num_files": len(files), "sha256": digest,
                                 "embeddings": self.distance_embeddings(heldout)}
        return used

    def distance_embeddings(self, heldout: str) -> dict[str, str]:
        """Name -> embedder spec of the embeddings FAD and KAD are computed in: the held-out one, and CLAP."""
        names = {ENCODEC_EMBEDDING if heldout == ENCODEC_EMBEDDING else "heldout": heldout}
        if self.config.clap:
            names["clap"] = f"clap:{self.config.clap}"
        return names

    def evaluate(self, run_dir: str | Path, force: bool = False) -> dict:
        """metrics.json content of one run (computed, or read back when nothing it depends on changed)."""
        run_dir = Path(run_dir)
        entries = read_entries(run_dir)
        first = entries[0]
        world = detect_world(run_dir, first, self.config.world)
        components = self.components(world, first["model"])
        key = hashlib.sha256(json.dumps({
            "version": EVALUATION_VERSION, "manifest": file_sha256(run_dir / MANIFEST), "components": components,
            "bootstrap": self.config.bootstrap, "seed": self.config.seed}, sort_keys=True).encode()).hexdigest()
        cached = run_dir / METRICS_JSON
        for name in (METRICS_JSON, METRICS_CSV):  # refused before the work, not when writing its result
            if (run_dir / name).exists() and not (run_dir / name).is_file():
                raise UserError(f"{run_dir / name} is not a file (evaluate writes its results there); move it away")
        previous = None if force else read_cached(cached)
        if previous is not None and previous.get("cache_key") == key:
            return previous
        groups = read_samples(run_dir, entries, WORLD_METRICS[world].codes_shape())
        per_prompt, whole_set = self._metrics(groups, world, components, first["model"])
        counts = sorted({len(samples) for samples in groups.values()})
        result = {
            "run": str(run_dir), "world": world, "num_prompts": len(groups), "samples_per_prompt": counts,
            "checkpoint": {"model": first["model"], "model_sha256": first["model_sha256"]},
            "beta": first.get("beta"), "lambda": first.get("lambda"),
            "teacher_guidance_scale": first.get("teacher_guidance_scale"), "sampling": first["sampling"],
            "components": components, "metrics": summarise(per_prompt, self.config.bootstrap, self.config.seed),
            "per_prompt": {name: [None if np.isnan(v) else float(v) for v in values] for name, values in per_prompt.items()},
            "prompts": [samples[0].entry["prompt"] for samples in groups.values()],
            "cache_key": key, "evaluated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        for name, value in whole_set.items():
            result["metrics"][name] = {"mean": value, "ci_low": None, "ci_high": None, "num_prompts": len(groups)}
        write_json(result, cached)
        write_csv(csv_rows(result), run_dir / METRICS_CSV)
        return result

    def _metrics(self, groups: dict[int, list[Sample]], world: str, components: dict, model_source: str
                 ) -> tuple[dict, dict]:
        """Per-prompt metric values {name: [P]} and whole-set metrics {name: float}."""
        if min(len(samples) for samples in groups.values()) < 2:
            raise UserError("diversity needs >= 2 samples per prompt; generate with --num-samples 2 or more")
        metrics = WORLD_METRICS[world]
        embedders = {}  # name -> audio embedder of the diversity metrics
        if "reward_embedder" in components:
            embedders["reward"] = self.embedder(components["reward_embedder"]["spec"])
        embedders["heldout"] = self.embedder(components["heldout_embedder"]["spec"], model_source)
        embedders.update(metrics.extra_embedders(self))
        gate = reward_gate(self.config.reward_gate, symbolic=metrics.symbolic)
        per_prompt = defaultdict(list)
        for samples in groups.values():
            prompts = [s.entry["prompt"] for s in samples]
            rate = samples[0].entry["sample_rate"]
            audio = _pad_stack([s.audio for s in samples])
            codes = _pad_stack([s.codes for s in samples])  # samples of one prompt have one length
            music = np.asarray(gate.music(codes, torch.from_numpy(audio), rate), dtype=bool)  # [G]
            vectors, computed = {}, {}  # one embedder may serve two roles (CLAP as reward and as clap): embed once
            for which, embedder in embedders.items():
                if id(embedder) not in computed:
                    computed[id(embedder)] = embed_clips(embedder, codes, torch.from_numpy(audio), rate)
                vectors[which] = computed[id(embedder)]
            for name, value in metrics.prompt_metrics(self, codes, prompts, vectors, music).items():
                per_prompt[name].append(value)
            for which, emb in vectors.items():
                per_prompt[f"diversity_{which}"].append(mean_pairwise_distance(emb, music))
                per_prompt[f"vendi_{which}"].append(vendi_score(emb[music]) if music.any() else 0.0)
            silent = silent_window_fraction(torch.from_numpy(audio), rate)
            per_prompt["degenerate_rate"].append(float(1.0 - music.mean()))
            per_prompt["silent_rate"].append(float((silent == 1.0).mean()))
            per_prompt["silent_window_fraction"].append(float(silent.mean()))
            seconds = sum(len(s.audio) for s in samples) / rate
            gamma = float(samples[0].entry["sampling"]["guidance_scale"])
            passes = sum(forward_passes(s.codes.shape[-1], s.codes.shape[0], gamma) for s in samples)
            per_prompt["lm_passes_per_second"].append(passes / seconds)
            per_prompt["seconds_per_second"].append(sum(s.entry["wall_time_s"] for s in samples) / seconds)
        everything = [s for samples in groups.values() for s in samples]
        return dict(per_prompt), metrics.whole_set_metrics(self, everything, components, model_source)

    def reference_embeddings(self, spec: str, model_source: str, files) -> np.ndarray:
        """The reference set's embeddings [M, D], computed once per embedder for all runs evaluated."""
        key = f"reference:{spec}@{model_source if spec == ENCODEC_EMBEDDING else ''}"
        if key not in self._loaded:
            self._loaded[key] = embed_files(self.embedder(spec, model_source), files)
        return self._loaded[key]


def _pad_stack(arrays: list[np.ndarray]) -> np.ndarray:
    """Stack along a new first axis, zero-padding the last axis to the longest."""
    length = max(a.shape[-1] for a in arrays)
    return np.stack([np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, length - a.shape[-1])]) for a in arrays])


# ------------------------------------------------------------------------------------------- output

def summarise(per_prompt: dict[str, list[float]], resamples: int, seed: int) -> dict[str, dict]:
    """Mean and CI of each metric over the prompts where it is defined (not NaN)."""
    summary = {}
    for name, values in per_prompt.items():
        values = np.asarray(values, dtype=np.float64)
        values = values[~np.isnan(values)]
        if len(values) == 0:
            summary[name] = {"mean": None, "ci_low": None, "ci_high": None, "num_prompts": 0}
            continue
        low, high = bootstrap_ci(values, resamples, seed)
        summary[name] = {"mean": float(values.mean()), "ci_low": low, "ci_high": high, "num_prompts": len(values)}
    return summary


def csv_rows(result: dict) -> list[dict]:
    return [{"run": result["run"], "metric": name, **stats} for name, stats in sorted(result["metrics"].items())]


def write_csv(rows: list[dict], path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)


def run(args: EvaluateArgs) -> int:
    config = EvaluateConfig(**{f.name: getattr(args, f.name) for f in fields(EvaluateConfig)})
    evaluator = Evaluator(config)
    rows = []
    for run in expand_runs(args.runs):
        result = evaluator.evaluate(run, force=args.force)
        rows += csv_rows(result)
        shown = ", ".join(f"{name} {result['metrics'][name]['mean']:.4f}" for name in sorted(result["metrics"])
                          if name in ("quality", "diversity_reward", "diversity_heldout", "diversity_clap",
                                      "note_diversity", "degenerate_rate") or name.startswith(("fad_", "kad_")))
        print(f"{run}: {shown} ({result['num_prompts']} prompts) -> {Path(run) / METRICS_JSON}")
    if args.out:
        write_csv(rows, Path(args.out))
        print(f"table: {args.out}")
    return 0

