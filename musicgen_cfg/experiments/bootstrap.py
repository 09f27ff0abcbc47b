"""THE bootstrap CI of a mean over prompts (and training seeds): `evaluate`'s per-run CIs and `reproduce`'s
pooled points and paired differences. A pure function; no command of its own.
"""

import warnings

import numpy as np


def bootstrap_ci(values, resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile CI of the mean of `values`: [P] (one value per prompt) or [S, P] (S seeds' runs on the same
    P prompts); NaN = undefined, left out of the means.

    Each resample draws S seeds and P prompts with replacement (the same prompts for every drawn seed, as the
    runs share them), so the CI carries training-seed noise as well as prompt noise. [P] is [1, P]: drawing
    one seed out of one takes no random numbers, so it is the plain prompt bootstrap.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[None]
    if values.ndim != 2 or not values.size:
        raise ValueError(f"values must be a non-empty [prompts] or [seeds, prompts] array, got shape {values.shape}")
    rng = np.random.default_rng(seed)
    num_seeds, num_prompts = values.shape
    seeds = rng.integers(0, num_seeds, size=(resamples, num_seeds, 1))
    prompts = rng.integers(0, num_prompts, size=(resamples, 1, num_prompts))
    with warnings.catch_warnings():  # a resample of undefined values only is left out of the percentiles
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(values[seeds, prompts].reshape(resamples, -1), axis=1)
        tail = (1 - confidence) / 2 * 100
        low, high = np.nanpercentile(means, [tail, 100 - tail])
    return float(low), float(high)
