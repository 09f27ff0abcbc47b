"""The demo's requests: raw values from the page or the API, validated into a Request or a MeasureRequest
against the limits of the models being served. A bad value raises one UserError that names it.

    from app.requests import parse_request
    request = parse_request(engine.limits, "a sad waltz", 0.5, 4, 8.0, -1, 1.0, 0, False)

API clients send anything JSON can hold (strings, booleans, 1e400, NaN), so every value is checked for its
type, finiteness and range here; app/engine.py serves only what passed. No Gradio and no torch here.
"""

import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from musicgen_cfg.errors import UserError
from musicgen_cfg.prompts import MAX_SEED

MAX_VARIATIONS = 8
MAX_PROMPT_CHARS = 300
MIN_DURATION_S = 0.5
MAX_DURATION_S = 30.0
MAX_TEMPERATURE = 2.0


@dataclass(frozen=True)
class ServedLimits:
    """What the served models allow, from the Engine (`engine.limits`)."""

    cardinality: int  # codes per codebook: the largest top-k
    has_base: bool  # a base model is loaded for the CFG comparison
    examples: tuple[str, ...]  # the example prompts "measure this lam" draws from
    fits: Callable[[float, str], bool]  # (duration s, prompt) -> within the model's context at the prompt's tempo


@dataclass(frozen=True)
class Request:
    """A validated generation request; variation i uses seed + i."""

    prompt: str
    lam: float
    variations: int
    duration: float
    seed: int
    temperature: float
    top_k: int | None
    compare: bool


@dataclass(frozen=True)
class MeasureRequest:
    """A validated "measure this lam" request: prompt i's variation j uses seed + i * variations + j."""

    lam: float
    prompts: tuple[str, ...]
    variations: int
    duration: float
    seed: int


def parse_request(limits: ServedLimits, prompt, lam, variations, duration, seed, temperature, top_k, compare
                  ) -> Request:
    """Validate raw inputs (from the page or the API) into a Request (seed -1 = random, top_k 0 = off)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError("the prompt is empty: describe the music to generate")
    prompt = prompt.strip()
    if len(prompt) > MAX_PROMPT_CHARS:
        raise UserError(f"the prompt has {len(prompt)} characters; at most {MAX_PROMPT_CHARS} are allowed")
    lam = parse_lambda(lam)
    variations = _in_range(variations, "the number of variations", 1, MAX_VARIATIONS)
    duration = _duration(limits, duration, [prompt])
    seed = _seed(seed, MAX_VARIATIONS)
    temperature = _as_number(temperature, "temperature")
    if not 0.0 < temperature <= MAX_TEMPERATURE:
        raise UserError(f"temperature must be in (0, {MAX_TEMPERATURE:g}], got {temperature:g}")
    top_k = _as_int(top_k, "top-k")
    if not 0 <= top_k <= limits.cardinality:
        raise UserError(f"top-k must be between 0 (off) and {limits.cardinality}, got {top_k}")
    if not isinstance(compare, bool):
        raise UserError(f"compare must be true or false, got {_show(compare)}")
    if compare and not limits.has_base:
        raise UserError("no base model to compare with: start the app with --base DIR")
    return Request(prompt, lam, variations, duration, seed, temperature, top_k or None, compare)


def parse_measure(limits: ServedLimits, lam, prompts, variations, duration, seed) -> MeasureRequest:
    """Validate a "measure this lam" request: the first `prompts` example prompts x `variations` (>= 2 each:
    diversity is pairwise, the CI is over prompts) of `duration` seconds."""
    lam = parse_lambda(lam)
    prompts = _in_range(prompts, "the number of prompts", 2, len(limits.examples))
    variations = _in_range(variations, "the number of variations", 2, MAX_VARIATIONS)
    duration = _duration(limits, duration, limits.examples[:prompts])
    seed = _seed(seed, prompts * variations)
    return MeasureRequest(lam, tuple(limits.examples[:prompts]), variations, duration, seed)


def parse_lambda(value) -> float:
    """The merge coefficient lam in [0, 1]: 0 = the quality model, 1 = the diversity model."""
    lam = _as_number(value, "lambda")
    if not 0.0 <= lam <= 1.0:
        raise UserError(f"lambda must be between 0 (quality) and 1 (diversity), got {lam:g}")
    return lam


def _duration(limits: ServedLimits, value, prompts) -> float:
    duration = _as_number(value, "duration")
    if not MIN_DURATION_S <= duration <= MAX_DURATION_S:
        raise UserError(f"duration must be between {MIN_DURATION_S:g} and {MAX_DURATION_S:g} s, got {duration:g}")
    if not all(limits.fits(duration, prompt) for prompt in prompts):
        raise UserError(f"duration {duration:g} s is too long for this model at this prompt's tempo")
    return duration


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _as_number(value, what: str) -> float:
    if isinstance(value, bool):
        raise UserError(f"{what} must be a number, got {_show(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float (10**400)
        raise UserError(f"{what} must be a finite number, got {_show(value)}") from None
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a number, got {_show(value)}") from None
    if not math.isfinite(number):
        raise UserError(f"{what} must be a finite number, got {_show(value)}")
    return number


def _as_int(value, what: str) -> int:
    number = _as_number(value, what)
    if number != int(number):
        raise UserError(f"{what} must be a whole number, got {_show(value)}")
    return int(number)


def _in_range(value, what: str, low: int, high: int) -> int:
    number = _as_int(value, what)
    if not low <= number <= high:
        raise UserError(f"{what} must be between {low} and {high}, got {number}")
    return number


def _seed(value, seeds_used: int) -> int:
    """A request's first seed: -1 (random) or one that leaves room for the `seeds_used` seeds after it."""
    seed = _as_int(value, "seed")
    if not -1 <= seed <= MAX_SEED - seeds_used:
        raise UserError(f"seed must be -1 (random) or between 0 and {MAX_SEED - seeds_used}, got {seed}")
    return secrets.randbelow(MAX_SEED - seeds_used) if seed == -1 else seed
