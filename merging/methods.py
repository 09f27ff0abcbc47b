"""The merge rules of weight merging, math only: theta(lam) = (1 - lam) theta_q + lam theta_d and its kin.

Library module (no command; `musicgen-cfg merge` runs merging/cli.py). Every rule maps tensors of one shape to
one tensor of that shape, nothing here reads or writes files:

- the per-tensor rules `lerp` (the paper), `slerp` and `task_arithmetic` (relative to the shared base
  theta_0);
- `make_recipe`: the method and its coefficients, checked once before any tensor is touched;
- `merge_tensor`: one tensor of every model -> the merged tensor (dtype handling);
- the checks of tensor names / shapes / dtypes shared by every merge, and `merge_state_dicts` for in-memory
  state dicts.

Checkpoint files are merged by merging/merge.py, a live module by merging/live.py.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from musicgen_cfg.errors import UserError

METHODS = ("lerp", "slerp", "task_arithmetic")

# SLERP falls back to LERP above this |cos| between the flattened tensors: the great circle is then
# numerically undefined (sin(omega) ~ 0) and both rules agree anyway for parallel tensors.
SLERP_PARALLEL_COS = 0.9995

# ---------------------------------------------------------------------------------------------
# The per-tensor rules. Inputs are float tensors of one shape; callers upcast (see `merge_tensor`).


def lerp(a: torch.Tensor, b: torch.Tensor, lam: float) -> torch.Tensor:
    """(1 - lam) a + lam b; torch.lerp returns a exactly at lam = 0 and b exactly at lam = 1."""
    return torch.lerp(a, b, lam)


def slerp(a: torch.Tensor, b: torch.Tensor, lam: float) -> torch.Tensor:
    """Spherical interpolation of the flattened tensors; LERP when they are (anti)parallel or zero.

    For unit-norm a and b every point has unit norm. The coefficients are computed in Python floats
    so that lam = 0 and lam = 1 give exactly (1, 0) and (0, 1): the endpoints come back bit-exact.
    """
    a_flat, b_flat = a.reshape(-1), b.reshape(-1)
    norm_product = float(a_flat.norm() * b_flat.norm())
    if norm_product == 0.0:
        return lerp(a, b, lam)
    cos = max(-1.0, min(1.0, float(torch.dot(a_flat, b_flat)) / norm_product))
    if abs(cos) > SLERP_PARALLEL_COS:
        return lerp(a, b, lam)
    omega = math.acos(cos)
    sin_omega = math.sin(omega)
    return a * (math.sin((1.0 - lam) * omega) / sin_omega) + b * (math.sin(lam * omega) / sin_omega)


def task_arithmetic(
    base: torch.Tensor, models: Sequence[torch.Tensor], weights: Sequence[float]
) -> torch.Tensor:
    """theta_0 + sum_i w_i (theta_i - theta_0): add weighted task vectors to the shared base.

    Computed as the equal affine combination (1 - sum_i w_i) theta_0 + sum_i w_i theta_i, in place:
    one output-sized buffer, and a single model with weight 1 comes back exactly (no rounding of
    theta_i - theta_0).
    """
    merged = base * (1.0 - sum(weights))
    for model, weight in zip(models, weights, strict=True):
        merged.add_(model, alpha=weight)
    return merged


# ---------------------------------------------------------------------------------------------
# What to compute: the method and its coefficients, checked once before any tensor is touched.


@dataclass(frozen=True)
class Recipe:
    """A validated merge: `lam` for lerp/slerp, `weights` (one per model) for task_arithmetic."""

    method: str
    lam: float | None
    weights: tuple[float, ...] | None
    extrapolation: bool


def make_recipe(
    method: str,
    num_models: int,
    *,
    lam: float | None = None,
    weights: Sequence[float] | None = None,
    has_base: bool = False,
    allow_extrapolation: bool = False,
) -> Recipe:
    """Check the merge parameters; raise UserError on anything a user could get wrong.

    A merge is an interpolation when the result lies in the convex hull of its inputs: lam in
    [0, 1] for lerp/slerp; for task arithmetic all weights >= 0 with sum <= 1 (the base counts as
    an input). Anything else is extrapolation and needs allow_extrapolation.
    """
    if method not in METHODS:
        raise UserError(f"unknown merge method {method!r}; choose one of {', '.join(METHODS)}")
    for value in [lam, *(weights or [])]:
        if value is not None and not math.isfinite(value):
            raise UserError(f"merge coefficients must be finite numbers, got {value}")
    if method == "task_arithmetic":
        if not has_base:
            raise UserError("task_arithmetic needs the shared base model theta_0 (--base DIR)")
        if weights is not None and lam is not None:
            raise UserError("give either --weights or --lam for task_arithmetic, not both")
        if weights is None:
            if lam is None or num_models != 2:
                raise UserError(
                    "task_arithmetic needs --weights (one per model), or --lam with exactly two models"
                )
            weights = (1.0 - lam, lam)  # equals lerp(theta_q, theta_d, lam)
        if len(weights) != num_models:
            raise UserError(f"got {len(weights)} weights for {num_models} models; give one weight per model")
        # the tolerance keeps float rounding of weights that sum to 1 from counting as extrapolation
        extrapolation = any(w < 0 for w in weights) or sum(weights) > 1.0 + 1e-9
        if extrapolation and not allow_extrapolation:
            raise UserError(
                "task_arithmetic weights "
                + ",".join(f"{w:g}" for w in weights)
                + " extrapolate (a weight < 0 or "
                "their sum > 1); pass allow_extrapolation=True / --allow-extrapolation to allow it"
            )
        return Recipe(method, lam, tuple(float(w) for w in weights), extrapolation)
    if num_models != 2:
        raise UserError(f"{method} merges exactly two models, got {num_models}")
    if has_base:
        raise UserError(f"--base is only used by task_arithmetic, not by {method}")
    if weights is not None:
        raise UserError(f"--weights is only used by task_arithmetic; {method} takes --lam")
    if lam is None:
        raise UserError(f"{method} needs lam (--lam)")
    extrapolation = not 0.0 <= lam <= 1.0
    if extrapolation and not allow_extrapolation:
        raise UserError(
            f"lam={lam:g} is outside [0, 1] (extrapolation); pass allow_extrapolation=True / --allow-extrapolation to allow it"
        )
    return Recipe(method, float(lam), None, extrapolation)


def merge_tensor(recipe: Recipe, tensors: Sequence[torch.Tensor], base: torch.Tensor | None) -> torch.Tensor:
    """Merge one tensor of every model; non-float tensors were checked equal and are copied.

    Half-precision types are computed in float32 and rounded once; float32/64 are computed in their
    own dtype, where `.to` is free, so memory stays at the inputs plus the output.
    """
    first = tensors[0]
    if not first.is_floating_point():
        return first.clone()
    compute = first.dtype if first.dtype.itemsize >= 4 else torch.float32
    wide = [t.to(compute) for t in tensors]
    if recipe.method == "lerp":
        merged = lerp(wide[0], wide[1], recipe.lam)
    elif recipe.method == "slerp":
        merged = slerp(wide[0], wide[1], recipe.lam)
    else:
        merged = task_arithmetic(base.to(compute), wide, recipe.weights)
    return merged.to(first.dtype)


# ---------------------------------------------------------------------------------------------
# Validation shared by state dicts, checkpoints and live modules: all is checked before any arithmetic.


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_same_tensors(specs: Mapping[str, Mapping[str, tuple[tuple[int, ...], torch.dtype]]]) -> None:
    """specs: label -> tensor name -> (shape, dtype). Raise on the first difference from the first label."""
    (ref_label, ref), *others = specs.items()
    for label, spec in others:
        for name in ref:
            if name not in spec:
                raise UserError(f"tensor {name} is in {ref_label} but not in {label}")
        for name in spec:
            if name not in ref:
                raise UserError(f"tensor {name} is in {label} but not in {ref_label}")
        for name, (shape, dtype) in ref.items():
            other_shape, other_dtype = spec[name]
            if tuple(shape) != tuple(other_shape):
                raise UserError(
                    f"tensor {name} has shape {list(shape)} in {ref_label} but {list(other_shape)} in {label}"
                )
            if dtype != other_dtype:
                raise UserError(
                    f"tensor {name} has dtype {dtype_name(dtype)} in {ref_label} but {dtype_name(other_dtype)} in {label}"
                )


def check_equal_non_float(name: str, tensors: Mapping[str, torch.Tensor]) -> None:
    (ref_label, ref), *others = tensors.items()
    for label, tensor in others:
        if not torch.equal(ref, tensor):
            raise UserError(
                f"non-float tensor {name} differs between {ref_label} and {label}; "
                "integer/bool tensors cannot be interpolated and must be equal"
            )


def model_labels(num_models: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(num_models)]


def merge_state_dicts(
    models: Sequence[Mapping[str, torch.Tensor]],
    *,
    method: str = "lerp",
    lam: float | None = None,
    weights: Sequence[float] | None = None,
    base: Mapping[str, torch.Tensor] | None = None,
    allow_extrapolation: bool = False,
) -> dict[str, torch.Tensor]:
    """Merge in-memory state dicts (models[0] = theta_q, models[1] = theta_d for the paper's lerp)."""
    recipe = make_recipe(
        method,
        len(models),
        lam=lam,
        weights=weights,
        has_base=base is not None,
        allow_extrapolation=allow_extrapolation,
    )
    by_label = dict(zip(model_labels(len(models)), models))
    if base is not None:
        by_label["base"] = base
    check_same_tensors(
        {label: {name: (tuple(t.shape), t.dtype) for name, t in sd.items()} for label, sd in by_label.items()}
    )
    for name, tensor in models[0].items():
        if not tensor.is_floating_point():
            check_equal_non_float(name, {label: sd[name] for label, sd in by_label.items()})
    return {
        name: merge_tensor(recipe, [sd[name] for sd in models], None if base is None else base[name])
        for name in models[0]
    }
