"""Serving core of the Gradio demo: the merged model theta(lam), the base model for the CFG comparison,
the reward embedder, per-session output folders with provenance manifests, and the measures shown beside
each set (reward and note-level diversity) or over many sets (`Engine.measure`). Requests arrive validated by
app/requests.py against `Engine.limits`.

No Gradio here: app/ui.py builds the page and the API on top, app/cli.py starts it
(`musicgen-cfg demo`, `musicgen-cfg app --quality DIR --diversity DIR`).

One module holds the served weights; `LiveMerge` rewrites them in place to
(1 - lam) theta_q + lam theta_d when a request asks for another lam, so moving the slider never
reloads anything. LiveMerge is not thread-safe, so setting lam and generating happen under one lock.

Generated files go to OUT/session-<id>/<setting>/, one folder per model and sampling setting (e.g.
`merged-lam0.7-1a2b3c`, `base-cfg-g3-4d5e6f`), each with a manifest.jsonl of
`generate.record_generation` lines: the same record `musicgen-cfg generate` writes, so
`musicgen-cfg evaluate OUT/session-<id>` evaluates a session setting by setting.

One set of variations is a noisy sample of a model's diversity, so `Engine.measure` ("measure this lam")
generates the example prompts x MEASURE_VARIATIONS at fixed seeds (`musicgen-cfg generate`'s seed + prompt
index x N + sample index, so every lam is measured on the same seeds) and reports each measure's mean
over the prompts with a 95% bootstrap CI (`evaluate.summarise`). It writes no files: its answer names
the served weights (sha256), prompts, seeds and settings, which is what repeating it needs.
"""

import functools
import hashlib
import json
import re
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from app import plots
from app.requests import MeasureRequest, Request, ServedLimits, parse_lambda
from merging.live import LiveMerge
from merging.merge import check_compatible
from musicgen_cfg.checkpoint import open_checkpoint, state_sha256
from musicgen_cfg.errors import UserError
from musicgen_cfg.experiments.generate import (
    MANIFEST,
    load_manifest,
    model_provenance,
    next_seq,
    record_generation,
)
from musicgen_cfg.model import MusicGen, load_model, resolve_spec
from musicgen_cfg.sampler import SamplingConfig
from rl.note_diversity import FEATURES

DEFAULT_LAMBDA = 0.5
DEFAULT_TOP_K = 250  # MusicGen's default; vocabularies at or below it (the default model's 64) sample in full
MEASURE_VARIATIONS = 8  # per example prompt
MEASURE_DURATION_S = 4.0
MEASURE_SEED = 0  # fixed: every lam is measured on the same seeds
BOOTSTRAP_RESAMPLES = 1000

# The measures of one set of variations (`Engine.set_measures`), named as `musicgen-cfg evaluate` names them.
NOTE_MEASURES = ("note_diversity", *(f"note_distance_{name}" for name in FEATURES))
SET_MEASURES = ("diversity", *NOTE_MEASURES, "degenerate_rate")
TOO_FEW_VARIATIONS = "diversity needs at least 2 variations"
NO_JUDGES = "quality is not measured: the quality judges read symbolic codes (default world only)"
NO_NOTES = "note-level diversity is not available: real MusicGen models have no symbolic codes (default world only)"

DEFAULT_EXAMPLES = (
    "a joyful Irish jig on the fiddle in D major",
    "a Bach chorale for organ in G minor",
    "a calm Chinese folk song on the flute",
    "a lively American fiddle tune",
)
AUDIO_EXAMPLES = (
    "lo-fi hip hop beat with a mellow piano and soft vinyl crackle",
    "an energetic rock song with distorted electric guitars and pounding drums",
    "a calm ambient soundscape with warm synth pads",
    "a jazz trio with upright bass, brushed drums and piano",
)


@dataclass
class Endpoint:
    """One model the app serves from: what was asked for, what was loaded, and its provenance."""

    role: str  # quality | diversity | base
    requested: str  # the spec given (e.g. default-quality)
    spec: str  # the spec loaded (differs from `requested` when the base model stands in)
    provenance: dict = field(default_factory=dict)  # generate.model_provenance of the loaded weights

    def record(self) -> dict:
        return {"requested": self.requested, **self.provenance}


@dataclass
class Item:
    """One generated variation on disk."""

    audio: Path
    image: Path
    seed: int


@dataclass
class Result:
    items: list[Item]
    base_items: list[Item]
    summary: dict  # JSON-able: settings, seeds, times, diversity, file names


def _slug(session: str | None) -> str:
    """A session id that is safe as a directory name."""
    return re.sub(r"[^A-Za-z0-9]", "", session or "")[:32] or "anonymous"


class Engine:
    """Everything a request needs; build it with `Engine.load`."""

    def __init__(self, model: MusicGen, merge: LiveMerge, quality: Endpoint, diversity: Endpoint,
                 base: MusicGen | None, base_endpoint: Endpoint | None, embedder, embedder_note: str | None,
                 out_root: Path, notes: list[str]):
        self.model, self.merge = model, merge
        self.quality, self.diversity = quality, diversity
        self.base, self.base_endpoint = base, base_endpoint
        self.embedder, self.embedder_note = embedder, embedder_note
        self.out_root = Path(out_root)
        self.notes = notes
        self.lock = threading.Lock()
        self.record_lock = threading.Lock()  # one session's records get distinct, increasing seqs
        self.examples = DEFAULT_EXAMPLES if model.is_symbolic else AUDIO_EXAMPLES
        self._merged_sha: dict[float, str] = {}  # lam -> sha256 of theta(lam), hashed once per lam

    @classmethod
    def load(cls, quality: Endpoint, diversity: Endpoint, base: Endpoint | None, embedder_spec: str | None,
             embedder_note: str | None, device: str, out_root: Path, notes: list[str], lam: float = DEFAULT_LAMBDA,
             log: Callable[[str], None] = print, dtype: torch.dtype | None = None) -> "Engine":
        """Check that the endpoints merge, load them (quality on `device`, diversity via CPU), set up LiveMerge.

        dtype: the generating models' LM weights (load_model); LiveMerge keeps its endpoints in it too.
        Memory: three decoders (the served one, LiveMerge's copy of it as theta_q, and theta_d: the diversity
        model's own LM tensors, converted only when serving on another device or dtype), plus the diversity model's
        towers while LiveMerge is set up; a base model (when asked for) adds a fourth.

        embedder_note says why diversity is not measured when embedder_spec is None; notes are shown
        on the page (e.g. which shipped model the base model stands in for)."""
        try:
            check_compatible([open_checkpoint(resolve_spec(quality.spec), "the quality model"),
                              open_checkpoint(resolve_spec(diversity.spec), "the diversity model")])
        except UserError as err:
            raise UserError(f"quality and diversity models cannot be merged: {err}") from None
        log(f"loading quality model {quality.spec} on {device}")
        model = load_model(quality.spec, device=device, dtype=dtype)
        quality.provenance = model_provenance(model)  # before LiveMerge rewrites the weights
        log(f"loading diversity model {diversity.spec}")
        other = load_model(diversity.spec, device="cpu")
        diversity.provenance = model_provenance(other)
        merge = LiveMerge(model.lm, model.lm.state_dict(), other.lm.state_dict(), lam=lam)
        del other  # its LM's tensors are LiveMerge's theta_d now (held, not copied); its towers go
        base_model = None
        if base is not None:
            log(f"loading base model {base.spec} for the CFG comparison")
            base_model = load_model(base.spec, device=device, dtype=dtype)
            base.provenance = model_provenance(base_model)
        embedder = None
        if embedder_spec is not None:
            from rl.embedders import load_embedder

            log(f"loading reward embedder {embedder_spec}")
            embedder = load_embedder(embedder_spec)
        return cls(model, merge, quality, diversity, base_model, base, embedder, embedder_note, out_root, notes)

    @property
    def lam(self) -> float:
        return self.merge.lam

    @property
    def cardinality(self) -> int:
        return self.model.codec.cardinality

    @property
    def default_top_k(self) -> int:
        """0 (off) where the vocabulary is no larger than MusicGen's top-k 250."""
        return DEFAULT_TOP_K if self.cardinality > DEFAULT_TOP_K else 0

    @property
    def limits(self) -> ServedLimits:
        """What requests may ask of the served models (app/requests.py validates against it)."""
        return ServedLimits(self.cardinality, self.base is not None, self.examples,
                            lambda duration, prompt: self.model.num_frames(duration, prompt) <= self.model.max_frames)

    @property
    def guidance_scale(self) -> float | None:
        """gamma of the base model's CFG comparison, None without a base model."""
        return None if self.base is None else self.base.default_guidance_scale

    def served_provenance(self) -> dict:
        """model_provenance of the weights served now, theta(lam): the quality model's source (its config and
        codec), the sha256 of the merged weights, both betas, lam, and the teacher gamma. Call under the lock."""
        lam = self.lam
        if lam not in self._merged_sha:
            self._merged_sha[lam] = state_sha256(self.model.lm.state_dict())
        q, d = self.quality.provenance, self.diversity.provenance
        betas, gammas = [q["beta"], d["beta"]], [q["teacher_guidance_scale"], d["teacher_guidance_scale"]]
        return {"model": q["model"], "model_sha256": self._merged_sha[lam],
                "beta": betas, "lambda": lam, "teacher_guidance_scale": gammas[0] if gammas[0] == gammas[1] else gammas}

    def set_lambda(self, lam) -> float:
        """Move the served weights to theta(lam) in place; returns the milliseconds it took."""
        lam = parse_lambda(lam)
        with self.lock:
            began = time.perf_counter()
            self.merge.set_lambda(lam)
            return (time.perf_counter() - began) * 1000

    def session_dir(self, session: str | None) -> Path:
        path = self.out_root / f"session-{_slug(session)}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def generate(self, request: Request, session: str | None,
                 progress: Callable[[float, str], None] = lambda fraction, desc: None) -> Result:
        """Generate the request's variations with theta(lam) (no CFG), and with base + CFG if asked."""
        out_dir = self.session_dir(session)
        run = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        seeds = [request.seed + i for i in range(request.variations)]
        sampling = SamplingConfig(guidance_scale=1.0, temperature=request.temperature, top_k=request.top_k)
        endpoints = {"quality": self.quality.record(), "diversity": self.diversity.record()}
        progress(0.05, f"generating {request.variations} with θ(λ = {request.lam:g}), one pass")
        with self.lock:
            self.merge.set_lambda(request.lam)
            outputs, seconds = self._timed_generate(self.model, request, seeds, sampling)
            served = self.served_provenance()
        items = self._save(self.model, outputs, out_dir, run, "merged", request, sampling, seconds, served,
                           {"weights": "lerp(quality, diversity)", "endpoints": endpoints})
        summary = {"prompt": request.prompt, "lambda": request.lam, "seeds": seeds, "duration": request.duration,
                   "temperature": request.temperature, "top_k": request.top_k, "guidance_scale": 1.0,
                   "beta": served["beta"], "teacher_guidance_scale": served["teacher_guidance_scale"],
                   "time_s": round(seconds, 3), "files": [i.audio.name for i in items], "run": run,
                   "folder": items[0].audio.parent.name,
                   "endpoints": {k: {"model": v["model"], "model_sha256": v["model_sha256"]} for k, v in endpoints.items()}}
        base_items = []
        if request.compare:
            gamma = self.guidance_scale
            progress(0.45, f"generating {request.variations} with the base model + CFG (γ = {gamma:g}), two passes")
            base_sampling = replace(sampling, guidance_scale=gamma)
            with self.lock:
                base_outputs, base_seconds = self._timed_generate(self.base, request, seeds, base_sampling)
            base_items = self._save(self.base, base_outputs, out_dir, run, "base-cfg", request, base_sampling,
                                    base_seconds, self.base_endpoint.provenance, {"endpoints": endpoints})
            summary["base"] = {"model": self.base_endpoint.provenance["model"], "guidance_scale": gamma,
                               "time_s": round(base_seconds, 3), "files": [i.audio.name for i in base_items],
                               "folder": base_items[0].audio.parent.name}
        progress(0.9, "measuring diversity")
        summary.update(_set_summary(*self.set_measures(self.model, outputs)))
        if request.compare:
            summary["base"].update(_set_summary(*self.set_measures(self.base, base_outputs)))
        return Result(items, base_items, summary)

    def measure(self, request: MeasureRequest,
                progress: Callable[[float, str], None] = lambda fraction, desc: None) -> dict:
        """Measure theta(lam) over the request's prompts x variations (no CFG, default sampling, no files written):
        each measure's mean over the prompts with its 95% bootstrap CI, the per-prompt values, and why a
        measure is missing."""
        from musicgen_cfg.experiments.evaluate import summarise

        sampling = SamplingConfig(guidance_scale=1.0, top_k=self.default_top_k or None)
        began = time.perf_counter()
        sets = []
        with self.lock:
            self.merge.set_lambda(request.lam)
            served = self.served_provenance()
            for index, prompt in enumerate(request.prompts):
                progress(0.05 + 0.6 * index / len(request.prompts),
                         f"θ(λ = {request.lam:g}): prompt {index + 1} of {len(request.prompts)}")
                first = request.seed + index * request.variations
                sets.append(self.model.generate([prompt] * request.variations,
                                                list(range(first, first + request.variations)), request.duration,
                                                sampling))
        generation_s = time.perf_counter() - began
        progress(0.7, "measuring diversity and quality")
        per_prompt, missing = defaultdict(list), {}
        for prompt, outputs in zip(request.prompts, sets):
            values, why = self.set_measures(self.model, outputs)
            if self.model.is_symbolic:
                codes = np.stack([out.codes.numpy() for out in outputs])
                values["quality"] = float(self.judges.score(codes, [prompt] * len(outputs))["quality"].mean())
            else:
                why["quality"] = NO_JUDGES
            for name, value in values.items():
                per_prompt[name].append(value)
            missing.update(why)
        return {"lambda": request.lam, "prompts": list(request.prompts), "variations": request.variations,
                "duration": request.duration, "seed": request.seed, "sampling": asdict(sampling), "served": served,
                "metrics": summarise(per_prompt, BOOTSTRAP_RESAMPLES, seed=0),
                "per_prompt": dict(per_prompt), "not_measured": missing, "confidence": 0.95,
                "bootstrap_resamples": BOOTSTRAP_RESAMPLES, "generation_s": round(generation_s, 3),
                "time_s": round(time.perf_counter() - began, 3)}

    @functools.cached_property
    def judges(self):
        """The default world's quality judges (musicgen_cfg/world/judges.py), loaded on first use."""
        from musicgen_cfg.world.judges import DefaultWorldJudges

        return DefaultWorldJudges()

    def _timed_generate(self, model: MusicGen, request: Request, seeds: list[int], sampling: SamplingConfig):
        began = time.perf_counter()
        outputs = model.generate([request.prompt] * len(seeds), seeds, request.duration, sampling)
        return outputs, time.perf_counter() - began

    def _save(self, model: MusicGen, outputs, session_dir: Path, run: str, role: str, request: Request,
              sampling: SamplingConfig, seconds: float, provenance: dict, extra: dict) -> list[Item]:
        """WAV + codes + picture per output, and one manifest line each (generate.record_generation), in the
        session's folder for this model and sampling setting; prompt_index counts that folder's prompts."""
        settings = {**asdict(sampling), "duration": request.duration}
        key = json.dumps([provenance["model_sha256"], settings], sort_keys=True)
        label = f"lam{provenance['lambda']:g}" if role == "merged" else f"g{sampling.guidance_scale:g}"
        out_dir = session_dir / f"{role}-{label}-{hashlib.sha256(key.encode()).hexdigest()[:6]}"
        out_dir.mkdir(exist_ok=True)
        prompts = list(dict.fromkeys(entry["prompt"] for entry in load_manifest(out_dir)))
        prompt_index = prompts.index(request.prompt) if request.prompt in prompts else len(prompts)
        items = []
        with self.record_lock, open(out_dir / MANIFEST, "a") as manifest:
            # seq orders the whole session (all its folders): the next one after every record written so far
            seq = next_seq(e for folder in session_dir.iterdir() if folder.is_dir() for e in load_manifest(folder))
            for index, out in enumerate(outputs):
                stem = f"{run}_{role}_{index}_s{out.seed}"
                image = out_dir / f"{stem}.png"
                if model.is_symbolic:
                    from musicgen_cfg.world.codec import frame_seconds

                    plots.piano_roll(out.codes.numpy(), frame_seconds(out.render["tempo_bpm"]), image)
                else:
                    plots.spectrogram(out.audio, out.sample_rate, image)
                record_generation(manifest, out_dir, f"{stem}.wav", out, seq=seq + index, prompt_index=prompt_index,
                                  sample_index=index, provenance=provenance, settings=settings,
                                  wall_time_s=seconds / len(outputs),
                                  image_file=image.name, run=run, role=role, **extra)
                items.append(Item(out_dir / f"{stem}.wav", image, out.seed))
        return items

    def set_measures(self, model: MusicGen, outputs) -> tuple[dict[str, float], dict[str, str]]:
        """The measures of one set of variations of one prompt by `model`: ({measure: value}, {measure: why not}).

        diversity: the mean diversity reward (rl/reward.py) under the reward embedder; note_diversity and
        note_distance_{pitch_class,interval,rhythm} (default world: rl/note_diversity.py on the codes);
        degenerate_rate: the share of variations the reward gate calls degenerate. As in `musicgen-cfg
        evaluate`, one gate ("data") serves every measure: a degenerate take counts 0 against its siblings."""
        if len(outputs) < 2:
            return {}, {"diversity": TOO_FEW_VARIATIONS, "note_diversity": TOO_FEW_VARIATIONS}
        from rl.note_diversity import group_note_diversity
        from rl.reward import group_rewards, reward_gate

        # One prompt and duration: every variation has the same length, so nothing is padded.
        waves = torch.stack([torch.from_numpy(o.audio) for o in outputs])
        codes = torch.stack([o.codes for o in outputs])
        gate = reward_gate("data", symbolic=model.is_symbolic)
        values, missing = {}, {}
        if self.embedder is None:
            music = np.asarray(gate.music(codes.numpy(), waves, outputs[0].sample_rate), dtype=bool)
            missing["diversity"] = self.embedder_note
        else:
            scored = group_rewards(waves, outputs[0].sample_rate, codes, self.embedder, gate)
            music, values["diversity"] = scored.music, float(scored.rewards.mean())
        if model.is_symbolic:
            note_level = group_note_diversity(codes.numpy(), music)
            values.update({name: note_level[name] for name in NOTE_MEASURES})
        else:
            missing["note_diversity"] = NO_NOTES
        values["degenerate_rate"] = float(1.0 - music.mean())
        return values, missing


def _set_summary(values: dict[str, float], missing: dict[str, str]) -> dict:
    """The summary keys of one set: every SET_MEASURES value (4 decimals, None when not measured) and
    diversity_note / note_diversity_note (why not, else None)."""
    summary = {name: round(values[name], 4) if name in values else None for name in SET_MEASURES}
    return {**summary, "diversity_note": missing.get("diversity"), "note_diversity_note": missing.get("note_diversity")}
