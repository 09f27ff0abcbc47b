"""Embedder specs: THE resolver of the names `evaluate`, `embedder check` and reproduce use for embedders, and
what identifies a loaded one (its weights' sha256).

    musicgen-cfg evaluate RUN --heldout-embedder spectral --reward-embedder default
    musicgen-cfg embedder check judges

Specs: "judges" (the default world's code embedder), "encodec-emb" (the run's own EnCodec latents), and every
spec of rl.embedders.load_embedder (default, a directory of `embedder train`, clap:..., spectral).
"""

import numpy as np
import torch

from musicgen_cfg.checkpoint import state_sha256
from musicgen_cfg.errors import UserError
from musicgen_cfg.experiments.audio_metrics import EncodecEmbedder
from musicgen_cfg.experiments.evaluate_options import ENCODEC_EMBEDDING, JUDGES_SPEC


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
        return judges_identity(embedder)
    return {"sha256": weights_sha256(embedder)}


def _codec_of(model_source: str):
    """The EnCodec model of the MusicGen checkpoint a run was generated with (for encodec-emb)."""
    from musicgen_cfg.model import load_model

    model = load_model(model_source)
    if model.is_symbolic:
        raise UserError(f"{ENCODEC_EMBEDDING} needs an EnCodec model; {model_source} uses the symbolic codec")
    return model.codec.model


def weights_sha256(embedder) -> str:
    """sha256 of an embedder's (or a CLAP adapter's model's) state dict."""
    module = getattr(embedder, "model", embedder)  # the CLAP adapter wraps its ClapModel
    # state_sha256 cannot view 0-dim tensors (CLAP's logit scales) as bytes: hash those as 1-element ones.
    return state_sha256({name: t.reshape(1) if t.dim() == 0 else t for name, t in module.state_dict().items()})


def judges_identity(judges) -> dict:
    """Class and the sha256 of the judges' learned scorer (its music tower is the held-out embedder)."""
    identity = {"class": f"{type(judges).__module__}.{type(judges).__name__}"}
    if isinstance(getattr(judges, "scorer", None), torch.nn.Module):
        identity["scorer_sha256"] = weights_sha256(judges.scorer)
    return identity
