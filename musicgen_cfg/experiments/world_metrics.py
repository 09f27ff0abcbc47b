"""One metric set per world: everything `musicgen-cfg evaluate` measures differently in the default world
(symbolic codec, judged on its codes) and for real MusicGen (judged on audio, against CLAP and a reference set).

    musicgen-cfg evaluate runs/base_g3 --world default        # WORLD_METRICS["default"]
    musicgen-cfg evaluate runs/merged-gen --world real --clap laion/clap-htsat-unfused

musicgen_cfg/experiments/evaluate.py measures what both worlds share (diversity under the reward and held-out
embedders, Vendi, degenerate and silent rates, cost) and asks its world's WorldMetrics for the rest:
- default: quality = the judges of musicgen_cfg/world/judges.py on the codes (per-sample metrics, "quality"
  among them), the note-level diversity of rl/note_diversity.py, and the FAD-style `distribution_distance`;
  reward embedder "default" (the shipped one), held-out "spectral"; --clap and --reference-dir are refused.
- real: with --clap, the CLAP text-audio cosine (`clap_score`, also "quality") and CLAP diversity; with
  --reference-dir, FAD and KAD against the reference clips in each distance embedding; no reward embedder by
  default (a beta = 0 run has none), held-out "encodec-emb" (the run's own codec).
"""

from dataclasses import dataclass

import numpy as np

from musicgen_cfg.errors import UserError
from musicgen_cfg.experiments.audio_metrics import clip_features, kernel_distance, reference_files
from musicgen_cfg.experiments.audio_metrics import fad as frechet_audio_distance
from musicgen_cfg.experiments.evaluate_options import (
    ENCODEC_EMBEDDING,
    JUDGES_SPEC,
    SPECTRAL_SPEC,
    EvaluateConfig,
)
from rl.note_diversity import group_note_diversity

NO_EMBEDDER = "none"


@dataclass(frozen=True)
class DefaultWorldMetrics:
    """The default world: symbolic codes judged by the judges, diversity also at the note level."""

    name: str = "default"
    symbolic: bool = True  # the reward gate reads symbolic codes (rl/reward.py)
    default_reward_spec: str = "default"
    default_heldout_spec: str = SPECTRAL_SPEC

    def codes_shape(self) -> tuple[int, int]:
        """(codebooks, cardinality) every codes file of the world has."""
        from musicgen_cfg.world.codec import SymbolicCodec

        return SymbolicCodec.num_codebooks, SymbolicCodec.cardinality

    def check_options(self, config: EvaluateConfig):
        """Refuse the options this world cannot honour, before any work."""
        if config.reference_dir:
            raise UserError("--reference-dir is for real-MusicGen runs (the default world's distribution_distance "
                            "compares with its own test data)")
        if config.clap:
            raise UserError("--clap scores real-MusicGen runs (the default world's quality is the judges'); "
                            "leave it out for this run")

    def check_heldout(self, spec: str):
        """Refuse a held-out embedder that cannot read this world's samples."""
        if spec == ENCODEC_EMBEDDING:
            raise UserError(f"{ENCODEC_EMBEDDING} embeds with the model's EnCodec: real-MusicGen runs only")

    def quality_component(self, evaluator) -> dict | None:
        """What scores quality, with its identity (part of the cache key)."""
        from musicgen_cfg.experiments.embedder_specs import judges_identity

        return {"spec": JUDGES_SPEC, **judges_identity(evaluator.judges())}

    def extra_embedders(self, evaluator) -> dict:
        """Diversity embedders beyond the reward and held-out ones: none here."""
        return {}

    def prompt_metrics(self, evaluator, codes: np.ndarray, prompts: list[str], vectors: dict, music: np.ndarray
                       ) -> dict[str, float]:
        """The world's per-prompt values of one prompt's samples: codes [G, K, T], vectors {name: [G, D]},
        music bool [G] (the reward gate)."""
        values = {}
        for name, scores in evaluator.judges().score(codes, prompts).items():
            # NaN: the prompt does not state what this judge checks (e.g. no key): left out
            values[name] = float(np.nan if np.isnan(scores).all() else np.nanmean(scores))
        values.update(group_note_diversity(codes, music))
        return values

    def whole_set_metrics(self, evaluator, samples: list, components: dict, model_source: str) -> dict[str, float]:
        """Metrics of the whole set of samples (no CI)."""
        # Rows differ in length across prompts (the tempo sets the frames per second): compare the
        # first frames every sample has.
        shortest = min(s.codes.shape[-1] for s in samples)
        codes = np.stack([s.codes[:, :shortest] for s in samples])
        prompts = [s.entry["prompt"] for s in samples]
        return {"distribution_distance": float(evaluator.judges().distribution_distance(codes, prompts))}


@dataclass(frozen=True)
class RealWorldMetrics:
    """Real MusicGen: audio judged by CLAP (--clap) and against a reference set (--reference-dir)."""

    name: str = "real"
    symbolic: bool = False
    default_reward_spec: str = NO_EMBEDDER
    default_heldout_spec: str = ENCODEC_EMBEDDING

    def codes_shape(self) -> None:
        return None  # a real run: the codebooks of its first codes file

    def check_options(self, config: EvaluateConfig):
        pass  # every option applies to real runs

    def check_heldout(self, spec: str):
        if spec == JUDGES_SPEC:
            raise UserError("the judges' held-out embedder reads symbolic codes: default-world runs only")

    def quality_component(self, evaluator) -> dict | None:
        from musicgen_cfg.experiments.embedder_specs import weights_sha256

        if not evaluator.config.clap:
            return None
        return {"spec": f"clap:{evaluator.clap().source}", "sha256": weights_sha256(evaluator.clap().audio)}

    def extra_embedders(self, evaluator) -> dict:
        return {"clap": evaluator.clap().audio} if evaluator.config.clap else {}

    def prompt_metrics(self, evaluator, codes: np.ndarray, prompts: list[str], vectors: dict, music: np.ndarray
                       ) -> dict[str, float]:
        if "clap" not in vectors:
            return {}
        score = float((vectors["clap"] * evaluator.clap().text(prompts)).sum(axis=1).mean())
        return {"clap_score": score, "quality": score}

    def whole_set_metrics(self, evaluator, samples: list, components: dict, model_source: str) -> dict[str, float]:
        """FAD and KAD against --reference-dir in each distance embedding (none without one)."""
        if "reference" not in components:
            return {}
        files = reference_files(evaluator.config.reference_dir)
        rate = samples[0].entry["sample_rate"]
        values = {}
        for name, spec in components["reference"]["embeddings"].items():
            run = clip_features(evaluator.embedder(spec, model_source), [s.audio for s in samples], rate)
            reference = evaluator.reference_embeddings(spec, model_source, files)
            values[f"fad_{name}"] = frechet_audio_distance(run, reference)
            values[f"kad_{name}"] = kernel_distance(run, reference)
        return values


WORLD_METRICS = {world.name: world for world in (DefaultWorldMetrics(), RealWorldMetrics())}
