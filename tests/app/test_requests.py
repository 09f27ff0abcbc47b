"""app/requests.py without a model: raw page / API values become a Request or one UserError naming the value.

    .venv/bin/python -m pytest -q tests/app/test_requests.py
"""

import pytest

from app.requests import (
    MAX_VARIATIONS,
    MeasureRequest,
    Request,
    ServedLimits,
    parse_lambda,
    parse_measure,
    parse_request,
)
from musicgen_cfg.errors import UserError
from musicgen_cfg.prompts import MAX_SEED

EXAMPLES = ("a calm chorale", "a fast jig", "a slow waltz")
# A model of 64 codes per codebook whose context holds 10 s, or 5 s for prompts that ask for a slow tempo.
LIMITS = ServedLimits(cardinality=64, has_base=False, examples=EXAMPLES,
                      fits=lambda duration, prompt: duration <= (5.0 if "slow" in prompt else 10.0))
GOOD = {"prompt": "  a fast jig ", "lam": 0.25, "variations": 4, "duration": 8, "seed": 7, "temperature": 1.0,
        "top_k": 0, "compare": False}


def test_good_values_become_a_request():
    assert parse_request(LIMITS, **GOOD) == Request("a fast jig", 0.25, 4, 8.0, 7, 1.0, None, False)
    assert parse_request(LIMITS, **{**GOOD, "top_k": 64, "variations": 2.0}).top_k == 64  # whole floats count


def test_a_random_seed_leaves_room_for_every_variation():
    seeds = {parse_request(LIMITS, **{**GOOD, "seed": -1}).seed for _ in range(50)}
    assert len(seeds) > 1 and all(0 <= seed <= MAX_SEED - MAX_VARIATIONS for seed in seeds)


@pytest.mark.parametrize("change, message", [
    ({"prompt": "   "}, "the prompt is empty"),
    ({"prompt": 3}, "the prompt is empty"),
    ({"prompt": "x" * 301}, "the prompt has 301 characters; at most 300"),
    ({"lam": float("nan")}, "lambda must be a finite number, got nan"),
    ({"lam": True}, "lambda must be a number, got True"),
    ({"variations": MAX_VARIATIONS + 1}, f"the number of variations must be between 1 and {MAX_VARIATIONS}"),
    ({"duration": 9, "prompt": "a slow air"}, "duration 9 s is too long for this model"),
    ({"duration": 0.1}, "duration must be between 0.5 and 30 s"),
    ({"seed": MAX_SEED}, "seed must be -1 (random) or between 0 and"),
    ({"temperature": -1}, "temperature must be in (0, 2], got -1"),
    ({"top_k": 65}, "top-k must be between 0 (off) and 64, got 65"),
    ({"top_k": 1.5}, "top-k must be a whole number, got 1.5"),
    ({"compare": "yes"}, "compare must be true or false, got 'yes'"),
    ({"compare": True}, "no base model to compare with"),
])
def test_each_bad_value_is_one_user_error_naming_it(change, message):
    with pytest.raises(UserError) as error:
        parse_request(LIMITS, **{**GOOD, **change})
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_measure_request_takes_the_first_example_prompts_and_checks_each_duration():
    assert parse_measure(LIMITS, 1, 2, 3, 4.0, 0) == MeasureRequest(1.0, EXAMPLES[:2], 3, 4.0, 0)
    with pytest.raises(UserError, match="too long for this model"):
        parse_measure(LIMITS, 0.5, 3, 2, 8.0, 0)  # the third example asks for a slow tempo
    with pytest.raises(UserError, match="the number of prompts must be between 2 and 3, got 4"):
        parse_measure(LIMITS, 0.5, 4, 2, 4.0, 0)
    with pytest.raises(UserError, match="the number of variations must be between 2 and"):
        parse_measure(LIMITS, 0.5, 2, 1, 4.0, 0)


def test_lambda_bounds_are_inclusive():
    assert parse_lambda(0) == 0.0 and parse_lambda("1") == 1.0
    with pytest.raises(UserError, match="lambda must be between 0"):
        parse_lambda(1.0001)
