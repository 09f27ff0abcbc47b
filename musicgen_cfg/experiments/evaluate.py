"""`musicgen-cfg evaluate`: quality, diversity and cost of `musicgen-cfg generate` runs, with 95% bootstrap CIs.

    musicgen-cfg evaluate runs/base_g3 runs/quality --out table.csv                  # default world
    musicgen-cfg evaluate runs/base-cfg3 runs/merged-gen --reference-dir my_reference_audio   # real, offline
    musicgen-cfg evaluate runs/merged-gen --clap laion/clap-htsat-unfused \
        --reward-embedder clap:laion/clap-htsat-unfused                                # + CLAP score / diversity
    musicgen-cfg evaluate /tmp/musicgen-cfg-app-XXXX/session-abc                     # a demo session folder

Per run directory (one model, one sampling setting; the manifest written by `generate` or the demo;
a folder of such directories, e.g. a demo session, is evaluated directory by directory):
- quality: default world (symbolic codec) -> the judges of `musicgen_cfg/world/judges.py` on the codes
  (per-sample metrics, "quality" among them, plus the FAD-style `distribution_distance`);
  real MusicGen -> with --clap, the CLAP text-audio cosine (`clap_score`, also reported as "quality").
- diversity: per prompt, the mean pairwise 1 - cos among its samples (the training reward,
  rl/reward.py) and the Vendi score, under the reward embedder (when one is given; the default
  world's is the shipped one) AND a held-out embedder training never saw (default world: `spectral`, fixed
  chroma / flux-interval / flux-rhythm statistics of the audio, rl/spectral_embedder.py; `judges` = the
  judges' code embedder; real: `encodec-emb`, the mean-pooled EnCodec latents of the run's own codec, no
  download); with --clap also under the CLAP audio tower (`diversity_clap`); default world also the
  note-level measures of rl/note_diversity.py (pitch-class, interval and rhythm histograms).
  Clips the reward gate calls degenerate (--reward-gate) add no diversity: pairs with one count 0 and
  the Vendi scores count the music samples only. degenerate_rate, silent_rate (every 100 ms window
  below -60 dBFS) and silent_window_fraction report how often that happens.
- distance to real audio (real MusicGen, --reference-dir DIR of wav/flac/ogg files): FAD and KAD
  (unbiased MMD) of the run's clips against the reference clips, per embedding, named in the metric
  (`fad_encodec-emb`, `kad_encodec-emb`, and `fad_clap`, `kad_clap` with --clap); no CI.
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
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from musicgen_cfg.checkpoint import file_sha256, read_json, state_sha256, write_json
from musicgen_cfg.delay import num_steps
from musicgen_cfg.errors import UserError
from musicgen_cfg.experiments.audio_metrics import (
    EncodecEmbedder,
    clip_features,
    embed_files,
    kernel_distance,
    reference_files,
)
from musicgen_cfg.experiments.audio_metrics import fad as frechet_audio_distance
from musicgen_cfg.experiments.bootstrap import bootstrap_ci
from musicgen_cfg.experiments.evaluate_options import (
    ENCODEC_EMBEDDING,
    JUDGES_SPEC,
    SPECTRAL_SPEC,
    EvaluateArgs,
    EvaluateConfig,
)
from musicgen_cfg.experiments.generate import MANIFEST, load_manifest
from rl.diversity import pairwise_diversity, vendi_from_similarity
from rl.note_diversity import group_note_diversity
from rl.reward import reward_gate, silent_window_fraction

# Bump when a metric's definition changes: cached metrics.json files of older versions are recomputed.
EVALUATION_VERSION = 2
METRICS_JSON, METRICS_CSV = "metrics.json", "metrics.csv"
NO_EMBEDDER = "none"
# The manifest fields evaluation reads (written by musicgen_cfg/experiments/generate.py) and their types.
REQUIRED_FIELDS = {"file": str, "codes_file": str, "prompt": str, "prompt_index": int, "seed": int, "model": str,
                   "model_sha256": str, "sampling": dict, "sample_rate": int, "wall_time_s": (int, float)}
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


# -------------------------------------------------------------------------------------- run reading

@dataclass
class Sample:
    entry: dict
    audio: np.ndarray  # float32 [samples], mono
    codes: np.ndarray  # int64 [K, T]


def read_entries(run_dir: Path) -> list[dict]:
    """The run's manifest entries (one per item), after checking them and the files they name."""
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    if not (run_dir / MANIFEST).is_file():
        raise UserError(f"{run_dir} has no {MANIFEST}: not a `musicgen-cfg generate` run (or an empty one)")
    latest = {}
    for number, entry in enumerate(load_manifest(run_dir), 1):
        check_entry(entry, f"{run_dir / MANIFEST}:{number}")
        # A resumed run may list an item twice (its file was lost and regenerated): the last entry wins.
        latest[(entry["prompt_index"], entry["seed"])] = entry
    entries = sorted(latest.values(), key=lambda e: (e["prompt_index"], e["seed"]))
    if not entries:
        raise UserError(f"{run_dir}/{MANIFEST} lists no generations")
    settings = {(e["model_sha256"], json.dumps(e["sampling"], sort_keys=True)) for e in entries}
    if len(settings) > 1:
        raise UserError(f"{run_dir} mixes {len(settings)} models or sampling settings; evaluate one per directory")
    rates = {}
    for entry in entries:
        for name in (entry["file"], entry["codes_file"]):
            if not (run_dir / name).is_file():
                raise UserError(f"{run_dir}/{MANIFEST} lists {name}, which is missing")
        rates.setdefault(_audio_rate(run_dir / entry["file"], entry), entry["file"])
    if len(rates) > 1:
        (rate_a, file_a), (rate_b, file_b) = list(rates.items())[:2]
        raise UserError(f"{run_dir} mixes sample rates: {rate_a} Hz ({file_a}) and {rate_b} Hz ({file_b})")
    return entries


def read_samples(run_dir: Path, entries: list[dict], world: str) -> dict[int, list[Sample]]:
    """Audio and codes of the entries, grouped by prompt index. Every codes file has the world's codebooks
    (the default world's symbolic codec; a real run: those of its first file)."""
    groups, shape = defaultdict(list), None
    if world == "default":
        from musicgen_cfg.world.codec import SymbolicCodec

        shape = (SymbolicCodec.num_codebooks, SymbolicCodec.cardinality)
    for entry in entries:
        codes = _read_codes(run_dir / entry["codes_file"], shape)
        shape = shape or (codes.shape[0], None)
        groups[entry["prompt_index"]].append(Sample(entry, _read_audio(run_dir / entry["file"]), codes))
    return dict(sorted(groups.items()))


def read_cached(path: Path) -> dict | None:
    """A previous metrics.json, or None when there is none to trust: evaluate wrote it, but it lies in the
    user's folder, so one that is not UTF-8 JSON or not an object (a list) is recomputed and replaced."""
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    return previous if isinstance(previous, dict) else None


def check_entry(entry, where: str):
    """One manifest entry has every field evaluation reads, with the right type."""
    if not isinstance(entry, dict):
        raise UserError(f"{where}: malformed entry, expected a JSON object")
    for name, kind in REQUIRED_FIELDS.items():
        if name not in entry:
            raise UserError(f"{where}: malformed entry, missing field {name!r}")
        if not isinstance(entry[name], kind) or isinstance(entry[name], bool):
            raise UserError(f"{where}: malformed entry, field {name!r} has the wrong type")
    if not isinstance(entry["sampling"].get("guidance_scale"), (int, float)):
        raise UserError(f"{where}: malformed entry, sampling has no numeric 'guidance_scale'")


def _read_codes(path: Path, shape: tuple[int, int | None] | None = None) -> np.ndarray:
    """Codes [K, T] of one file (foreign input: any .npy may sit there), as int64. One UserError for a file
    that is no array, not [codebooks, frames], has no codes, holds no integers (float codes would be cast
    silently), negative codes, or, with `shape` = (K, cardinality or None), other than K codebooks or a code
    >= the cardinality: such codes would be judged as music or fail deep inside a judge."""
    try:
        codes = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise UserError(f"cannot read codes file {path}: {(str(err).splitlines() or [type(err).__name__])[0]}") from None
    if not isinstance(codes, np.ndarray) or codes.ndim != 2:
        raise UserError(f"codes file {path} has shape {list(np.shape(codes))}, expected [codebooks, frames]")
    if codes.dtype.kind not in "iu":
        raise UserError(f"codes file {path} holds {codes.dtype} values, expected integer codes")
    if 0 in codes.shape:
        raise UserError(f"codes file {path} has {codes.shape[0]} codebooks x {codes.shape[1]} frames: no codes")
    if shape is not None and codes.shape[0] != shape[0]:
        raise UserError(f"codes file {path} has {codes.shape[0]} codebooks; this run's model has {shape[0]}")
    high = shape[1] if shape is not None else None
    if codes.min() < 0 or (high is not None and codes.max() >= high):
        raise UserError(f"codes file {path} holds codes outside [0, {high})" if high is not None
                        else f"codes file {path} holds negative codes")
    return codes.astype(np.int64)


def _audio_rate(path: Path, entry: dict) -> int:
    import soundfile as sf

    try:
        rate = sf.info(str(path)).samplerate
    except RuntimeError as err:
        raise UserError(f"cannot read audio file {path}: {str(err).splitlines()[0]}") from None
    if rate != entry["sample_rate"]:
        raise UserError(f"{path} is at {rate} Hz but its manifest entry says {entry['sample_rate']} Hz")
    return rate


def _read_audio(path: Path) -> np.ndarray:
    import soundfile as sf

    audio, _ = sf.read(str(path), dtype="float32", always_2d=True)
    return audio.mean(axis=1)


def detect_world(run_dir: Path, entry: dict, world: str) -> str:
    """'default' when the run's model is a symbolic-codec checkpoint, 'real' for real MusicGen."""
    from musicgen_cfg.model import is_symbolic_config, looks_like_hub_id

    if world != "auto":
        return world
    source = str(entry["model"])
    config = Path(source) / "config.json"
    if config.is_file():
        return "default" if is_symbolic_config(read_json(config)) else "real"
    if looks_like_hub_id(source):
        return "real"  # a hub id; the default world only exists as local checkpoints
    raise UserError(f"{run_dir}: cannot tell which world model {source} belongs to (its config.json is gone); "
                    f"pass --world default or --world real")


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
        spec = self.config.reward_embedder
        if spec is None:
            spec = "default" if world == "default" else NO_EMBEDDER
        return None if spec == NO_EMBEDDER else spec

    def heldout_spec(self, world: str) -> str:
        spec = self.config.heldout_embedder or (SPECTRAL_SPEC if world == "default" else ENCODEC_EMBEDDING)
        if spec == self.reward_spec(world):
            raise UserError(f"the held-out embedder must differ from the reward embedder (both {spec!r})")
        if spec == JUDGES_SPEC and world != "default":
            raise UserError("the judges' held-out embedder reads symbolic codes: default-world runs only")
        if spec == ENCODEC_EMBEDDING and world == "default":
            raise UserError(f"{ENCODEC_EMBEDDING} embeds with the model's EnCodec: real-MusicGen runs only")
        return spec

    def components(self, world: str, model_source: str) -> dict[str, dict]:
        """What scores this run and its identity (sha256 of the weights): recorded and part of the cache key."""
        if world == "default" and self.config.reference_dir:
            raise UserError("--reference-dir is for real-MusicGen runs (the default world's distribution_distance "
                            "compares with its own test data)")
        if world == "default" and self.config.clap:
            raise UserError("--clap scores real-MusicGen runs (the default world's quality is the judges'); "
                            "leave it out for this run")
        used = {}
        reward = self.reward_spec(world)
        if reward is not None:
            used["reward_embedder"] = {"spec": reward, **embedder_identity(self.embedder(reward))}
        heldout = self.heldout_spec(world)
        used["heldout_embedder"] = {"spec": heldout, **embedder_identity(self.embedder(heldout, model_source))}
        if world == "default":
            used["quality"] = {"spec": JUDGES_SPEC, **_judges_identity(self.judges())}
        elif self.config.clap:
            used["quality"] = {"spec": f"clap:{self.clap().source}", "sha256": _weights_sha(self.clap().audio)}
        gate = reward_gate(self.config.reward_gate, symbolic=world == "default")
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
        groups = read_samples(run_dir, entries, world)
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
        embedders = {}  # name -> audio embedder of the diversity metrics
        if "reward_embedder" in components:
            embedders["reward"] = self.embedder(components["reward_embedder"]["spec"])
        embedders["heldout"] = self.embedder(components["heldout_embedder"]["spec"], model_source)
        if world == "real" and self.config.clap:
            embedders["clap"] = self.clap().audio
        gate = reward_gate(self.config.reward_gate, symbolic=world == "default")
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
            if world == "default":
                for name, values in self.judges().score(codes, prompts).items():
                    # NaN: the prompt does not state what this judge checks (e.g. no key): left out
                    per_prompt[name].append(float(np.nan if np.isnan(values).all() else np.nanmean(values)))
            elif "clap" in vectors:
                scores = (vectors["clap"] * self.clap().text(prompts)).sum(axis=1)
                per_prompt["clap_score"].append(float(scores.mean()))
                per_prompt["quality"].append(float(scores.mean()))
            for which, emb in vectors.items():
                per_prompt[f"diversity_{which}"].append(mean_pairwise_distance(emb, music))
                per_prompt[f"vendi_{which}"].append(vendi_score(emb[music]) if music.any() else 0.0)
            if world == "default":
                for name, value in group_note_diversity(codes, music).items():
                    per_prompt[name].append(value)
            silent = silent_window_fraction(torch.from_numpy(audio), rate)
            per_prompt["degenerate_rate"].append(float(1.0 - music.mean()))
            per_prompt["silent_rate"].append(float((silent == 1.0).mean()))
            per_prompt["silent_window_fraction"].append(float(silent.mean()))
            seconds = sum(len(s.audio) for s in samples) / rate
            gamma = float(samples[0].entry["sampling"]["guidance_scale"])
            passes = sum(forward_passes(s.codes.shape[-1], s.codes.shape[0], gamma) for s in samples)
            per_prompt["lm_passes_per_second"].append(passes / seconds)
            per_prompt["seconds_per_second"].append(sum(s.entry["wall_time_s"] for s in samples) / seconds)
        whole_set = {}
        everything = [s for samples in groups.values() for s in samples]
        if world == "default":
            # Rows differ in length across prompts (the tempo sets the frames per second): compare the
            # first frames every sample has.
            shortest = min(s.codes.shape[-1] for s in everything)
            codes = np.stack([s.codes[:, :shortest] for s in everything])
            whole_set["distribution_distance"] = float(
                self.judges().distribution_distance(codes, [s.entry["prompt"] for s in everything]))
        if "reference" in components:
            files = reference_files(self.config.reference_dir)
            rate = everything[0].entry["sample_rate"]
            for name, spec in components["reference"]["embeddings"].items():
                embedder = self.embedder(spec, model_source)
                run = clip_features(embedder, [s.audio for s in everything], rate)
                reference = self._reference_embeddings(spec, model_source, files)
                whole_set[f"fad_{name}"] = frechet_audio_distance(run, reference)
                whole_set[f"kad_{name}"] = kernel_distance(run, reference)
        return dict(per_prompt), whole_set

    def _reference_embeddings(self, spec: str, model_source: str, files) -> np.ndarray:
        """The reference set's embeddings [M, D], computed once per embedder for all runs evaluated."""
        key = f"reference:{spec}@{model_source if spec == ENCODEC_EMBEDDING else ''}"
        if key not in self._loaded:
            self._loaded[key] = embed_files(self.embedder(spec, model_source), files)
        return self._loaded[key]


def load_spec_embedder(spec: str, model_source: str | None = None, judges=None):
    """THE resolver of embedder specs (evaluate and `musicgen-cfg embedder check` share it).

    - "judges": the default world's judges (their scorer's music tower embeds symbolic codes:
      `embed_codes(codes [N, 4, T]) -> [N, D]`); `judges` is a zero-argument callable that returns them
      (None: the shipped DefaultWorldJudges).
    - "encodec-emb": the EnCodec latents of `model_source`'s codec (a real MusicGen checkpoint).
    - anything else: rl.embedders.load_embedder (default, a directory of `embedder train`, clap:...,
      and every kind added there later).
    Audio embedders have `embed(waveforms [N, S], sample_rate) -> [N, D]`; embed_clips calls either kind.
    """
    if spec == JUDGES_SPEC:
        if judges is not None:
            return judges()
        from musicgen_cfg.world.judges import DefaultWorldJudges

        return DefaultWorldJudges()
    if spec == ENCODEC_EMBEDDING:
        if model_source is None:
            raise UserError(f"{ENCODEC_EMBEDDING} needs a MusicGen checkpoint whose EnCodec it embeds with")
        return EncodecEmbedder(_codec_of(model_source))
    from rl.embedders import load_embedder

    return load_embedder(spec)


def embed_clips(embedder, codes: np.ndarray, waveforms: torch.Tensor, sample_rate: int) -> np.ndarray:
    """Unit vectors [N, D] of N clips, given as codes [N, K, T] and their audio [N, S] at `sample_rate`:
    code embedders (the judges) read the codes, audio embedders the audio."""
    if hasattr(embedder, "embed_codes"):
        return np.asarray(embedder.embed_codes(codes))
    return embedder.embed(waveforms, sample_rate).numpy()


def embedder_identity(embedder) -> dict:
    """What identifies an embedder from load_spec_embedder: its weights' sha256 (the judges: their class and
    scorer sha256)."""
    if hasattr(embedder, "embed_codes"):
        return _judges_identity(embedder)
    return {"sha256": _weights_sha(embedder)}


def _codec_of(model_source: str):
    """The EnCodec model of the MusicGen checkpoint a run was generated with (for encodec-emb)."""
    from musicgen_cfg.model import load_model

    model = load_model(model_source)
    if model.is_symbolic:
        raise UserError(f"{ENCODEC_EMBEDDING} needs an EnCodec model; {model_source} uses the symbolic codec")
    return model.codec.model


def _pad_stack(arrays: list[np.ndarray]) -> np.ndarray:
    """Stack along a new first axis, zero-padding the last axis to the longest."""
    length = max(a.shape[-1] for a in arrays)
    return np.stack([np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, length - a.shape[-1])]) for a in arrays])


def _weights_sha(embedder) -> str:
    module = getattr(embedder, "model", embedder)  # the CLAP adapter wraps its ClapModel
    # state_sha256 cannot view 0-dim tensors (CLAP's logit scales) as bytes: hash those as 1-element ones.
    return state_sha256({name: t.reshape(1) if t.dim() == 0 else t for name, t in module.state_dict().items()})


def _judges_identity(judges) -> dict:
    """Class and the sha256 of the judges' learned scorer (its music tower is the held-out embedder)."""
    identity = {"class": f"{type(judges).__module__}.{type(judges).__name__}"}
    if isinstance(getattr(judges, "scorer", None), torch.nn.Module):
        identity["scorer_sha256"] = _weights_sha(judges.scorer)
    return identity


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


def expand_runs(paths: list[str]) -> list[Path]:
    """Run directories: each path itself when it has a manifest, else its subdirectories that have one
    (a demo session folder keeps one per model and sampling setting)."""
    runs = []
    for path in map(Path, paths):
        nested = sorted(p.parent for p in path.glob(f"*/{MANIFEST}")) if path.is_dir() else []
        runs += nested if nested and not (path / MANIFEST).is_file() else [path]
    return runs


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

