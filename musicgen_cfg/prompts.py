"""Prompt lists: read from a prompts file and checked, and drawn from for training; the bounds of a request.

Used by `musicgen-cfg generate --prompts-file`, `musicgen-cfg train` (`prompts: FILE`) and `reproduce`.
The default world's caption prompts (`prompts: default`) are `musicgen_cfg.world.corpus.CaptionPrompts`,
which has the same `draw` / `heldout` interface as `FilePrompts`.
"""

import json
import random
from pathlib import Path

from musicgen_cfg.errors import UserError

MAX_PROMPT_CHARS = 2000
# Seeds are hashed as 32-bit values (musicgen_cfg/sampler.py): the one bound of every seed a user gives.
# Here, not in the sampler, so that the generate options can be checked without importing torch.
MAX_SEED = 2**31 - 1


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a .txt (one per line; blank lines and '#' comments skipped) or .jsonl ({"prompt": ...})."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompts file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"prompts file {path} is not UTF-8 text (byte {err.start}): save it as UTF-8") from None
    if "\x00" in text:
        raise UserError(f"prompts file {path} is binary (it contains NUL bytes), not one prompt per line")
    prompts = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if path.suffix == ".jsonl":
            try:
                prompts.append(str(json.loads(line)["prompt"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f"{path}:{number}: expected a JSON object with a 'prompt' field") from None
        else:
            prompts.append(line)
    return prompts


def validate_prompts(prompts: list[str]) -> list[str]:
    """The prompts unchanged, or a UserError for an empty list, a blank prompt or one over MAX_PROMPT_CHARS."""
    if not prompts:
        raise UserError("no prompts given (empty prompt list)")
    for number, p in enumerate(prompts, 1):
        if not p.strip():
            raise UserError(f"prompt {number} is empty: describe the music to generate")
        if len(p) > MAX_PROMPT_CHARS:
            raise UserError(f"prompt {number} has {len(p)} characters; at most {MAX_PROMPT_CHARS} are allowed")
    return prompts


class FilePrompts:
    """A prompts file for training: the last tenth (at least one) is held out, the rest is drawn from."""

    def __init__(self, path: str | Path, heldout: int):
        prompts = validate_prompts(read_prompts(path))
        cut = max(1, len(prompts) // 10) if len(prompts) > 1 else 0
        self.fixed = prompts[: len(prompts) - cut] or prompts
        self.heldout = (prompts[len(prompts) - cut :] or prompts)[:heldout]

    def draw(self, count: int, rng: random.Random) -> list[str]:
        return [rng.choice(self.fixed) for _ in range(count)]
