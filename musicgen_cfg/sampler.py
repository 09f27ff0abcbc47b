"""Autoregressive sampling with a preallocated KV cache, CFG, temperature / top-k / top-p, seeds.

    sample(lm, cond [B], num_frames, SamplingConfig(...), seeds [B]) -> codes [B, K, T]

Randomness is a counter-based hash of (seed, step, codebook, token): a row's codes depend only on
its own seed and request, never on what else is in the batch, so batched generation is exactly
reproducible item by item (and resumable). Sampling is Gumbel-max over the filtered logits, which
draws from the same distribution as multinomial sampling.

Each step is `decode_step` (forward over the request's fused weights, CFG, filtering, sampling).
On CUDA it runs through torch.compile (Inductor fuses the elementwise chains; eager if compiling
fails) and is captured once per request in a CUDA graph and replayed: at batch 1 the step is bound
by launches, not by reading the weights. On CPU it runs eagerly; speed: bench/sampler.py.
"""

import functools
import math
import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from musicgen_cfg.cfg import Condition, split_and_combine, with_null
from musicgen_cfg.delay import num_steps, revert_delay_pattern, valid_step_mask
from musicgen_cfg.errors import UserError
from musicgen_cfg.lm import KVCache, MusicgenLM


@dataclass
class SamplingConfig:
    guidance_scale: float = 1.0  # CFG strength gamma; 1 = plain conditional sampling (one pass)
    temperature: float = 1.0  # softmax temperature (> 0)
    top_k: int | None = 250  # keep the k most likely tokens per codebook; 0 or None = all (as in transformers)
    top_p: float = 1.0  # nucleus: smallest set with probability >= top_p; 1 = off
    greedy: bool = False  # argmax instead of sampling (ignores temperature / top-k / top-p)
    use_cuda_graph: bool = True  # capture the decoding step on CUDA devices
    compile: bool | None = None  # torch.compile the decoding step; None = on CUDA only (on CPU compiling costs minutes)
    compile_backend: str = "inductor"  # torch.compile backend ("eager": Dynamo's capture alone, no code generation)

    def __post_init__(self):
        if not (self.guidance_scale >= 0 and math.isfinite(self.guidance_scale)):
            raise UserError(f"guidance scale must be a finite number >= 0, got {self.guidance_scale}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise UserError(f"temperature must be a finite number > 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise UserError(f"top-k must be 0 (off) or a positive integer, got {self.top_k}")
        if self.top_k == 0:  # one meaning everywhere (CLI, app, transformers): 0 keeps every token
            self.top_k = None
        if not 0 < self.top_p <= 1:
            raise UserError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.compile and self.compile_backend not in torch._dynamo.list_backends(exclude_tags=()):
            raise UserError(f"unknown torch.compile backend {self.compile_backend!r}")

    @property
    def uses_cfg(self) -> bool:
        return self.guidance_scale != 1.0


def max_frames(lm: MusicgenLM) -> int:
    """The most frames one generation can have: the position table less the delay pattern's K - 1 extra steps."""
    return lm.stack.positions.shape[0] - lm.num_codebooks + 1


_MASK32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer on int64 tensors holding values < 2^32 (products stay < 2^63)."""
    x = x ^ (x >> 16)
    x = (x * 0x45D9F3B) & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x45D9F3B) & _MASK32
    return x ^ (x >> 16)


def row_hashes(seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """The per-(seed, step) part of the noise: [B] for a step [1], or [S, B] for steps [S, 1]."""
    return _hash32(_hash32(seeds & _MASK32) ^ steps)


def uniform_noise(seeds: torch.Tensor, step: torch.Tensor, num_codebooks: int, vocab: int) -> torch.Tensor:
    """Deterministic uniforms in (0, 1) of shape [B, K, V] from seeds [B] and step [1]."""
    cells = torch.arange(num_codebooks * vocab, device=seeds.device).view(1, num_codebooks, vocab)
    return uniform_noise_at(row_hashes(seeds, step), cells)


def uniform_noise_at(rows: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """The uniforms of `uniform_noise` at flat cells (codebook * V + token) [B or 1, ...] only; rows [B] from row_hashes."""
    bits = _hash32(_hash32(rows.view(-1, *([1] * (cells.dim() - 1))) ^ cells) + 0x9E3779B)
    return uniform_from_bits(bits)


_BELOW_ONE = 1.0 - 2.0**-24  # the largest float32 below 1


def uniform_from_bits(bits: torch.Tensor) -> torch.Tensor:
    """32-bit hashes (int64 tensor) -> float32 uniforms strictly inside (0, 1), so Gumbel noise is finite.

    The top 24 bits, centred in their bin: (b + 0.5) / 2^24. In float32 the largest b rounds up to
    exactly 1.0 (whose Gumbel noise is +inf: that token would win whatever its probability, and
    -inf + inf = NaN after filtering), so that one value is clamped to the largest float below 1;
    every other value, and so every token sampled before this guard, is unchanged.
    """
    return (((bits >> 8).float() + 0.5) / float(1 << 24)).clamp_max_(_BELOW_ONE)


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k / top-p set to -inf. logits [..., V]."""
    if top_k is not None and top_k < logits.shape[-1]:
        # the k-th largest as the smallest of the k largest: the same value, without topk's sort (1.2-1.5x on CPU)
        kth = torch.topk(logits, top_k, dim=-1, sorted=False).values.min(-1, keepdim=True).values
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def pick_tokens(logits: torch.Tensor, config: SamplingConfig, seeds: torch.Tensor, step: torch.Tensor,
                rows: torch.Tensor | None = None) -> torch.Tensor:
    """logits [B, K, V] (already guided) -> tokens [B, K]. rows: row_hashes(seeds, step), if precomputed."""
    if config.greedy:
        return logits.argmax(-1)
    logits = logits.float()
    if config.temperature != 1.0:  # x / 1.0 == x exactly: skip a full-size pass
        logits = logits / config.temperature
    vocab = logits.shape[-1]
    if (logits.device.type == "cpu" and not torch.compiler.is_compiling() and config.top_k is not None and config.top_k < vocab
            and config.top_p >= 1.0):
        chosen = _pick_among_top_k(logits, config.top_k, rows if rows is not None else row_hashes(seeds, step))
        if chosen is not None:
            return chosen
    logits = filter_logits(logits, config.top_k, config.top_p)
    gumbel = -torch.log(-torch.log(uniform_noise(seeds, step, logits.shape[1], vocab)))
    return (logits + gumbel).argmax(-1)


@functools.cache
def _codebook_offsets(num_codebooks: int, vocab: int, device: torch.device) -> torch.Tensor:
    """[K, 1]: codebook * V, the flat cell of each codebook's token 0 (a constant, built once)."""
    return torch.arange(num_codebooks, device=device)[:, None] * vocab


def _pick_among_top_k(logits: torch.Tensor, top_k: int, rows: torch.Tensor) -> torch.Tensor | None:
    """CPU fast path of pick_tokens for top-k without top-p: the same tokens, noise hashed at the k candidates only.

    Only the tokens kept by filter_logits (logits >= the k-th largest) can win the Gumbel-max, so the
    noise (the costly part: ~14 integer passes over [B, K, V]) is computed for those k cells instead
    of all V. The values are bit-identical (integer hash; elementwise float ops) and ties in the
    argmax go to the lowest token id as in argmax. The k + 1 largest are taken so that a tie at the
    k-th value (kept set larger than k) shows without a full-size pass: then it returns None and the
    full path runs. Not used on CUDA: there the step is a captured graph (no data-dependent branch)
    and the full-size noise is cheap.
    """
    values, index = torch.topk(logits, top_k + 1, dim=-1, sorted=False)
    dropped = values == values.min(-1, keepdim=True).values  # the (k+1)-th largest: not kept
    # every row holds its minimum at least once, so the total is B * K exactly when no row has a tie
    if int(dropped.sum()) != dropped.shape[0] * dropped.shape[1]:
        return None
    num_codebooks, vocab = logits.shape[1], logits.shape[2]
    cells = index + _codebook_offsets(num_codebooks, vocab, index.device)
    # x - log(-log(u)) is bit-exactly x + gumbel, one pass fewer
    scores = values.masked_fill(dropped, float("-inf")) - torch.log(-torch.log(uniform_noise_at(rows, cells)))
    best = scores.max(-1, keepdim=True).values
    return torch.where(scores == best, index, vocab).min(-1).values


def guided_step_logits(lm: MusicgenLM, cache: KVCache, tokens, position, guidance_scale: float | None, length=None):
    """One LM step -> logits [B, K, V]; with CFG the cond and null rows share ONE batched step.

    `length` (Python int = position + 1, eager only): attend to the filled cache only (see lm.step)."""
    if guidance_scale is None:
        return lm.step(tokens, position, cache, length)
    return split_and_combine(lm.step(torch.cat([tokens, tokens]), position, cache, length), guidance_scale)[1]


def decode_step(lm: MusicgenLM, cache: KVCache, tokens: torch.Tensor, position: torch.Tensor, guidance_scale: float | None,
                config: SamplingConfig, seeds: torch.Tensor, valid: torch.Tensor, length: int | None = None,
                rows: torch.Tensor | None = None) -> torch.Tensor:
    """tokens [B, K] at step `position` [1] -> the next tokens [B, K]: LM step, CFG, sampling, pad outside
    the delay window (valid [steps, K] bool). A module-level function of tensors, so one compiled
    version serves every request of the same shapes."""
    chosen = pick_tokens(guided_step_logits(lm, cache, tokens, position, guidance_scale, length), config, seeds, position, rows)
    return torch.where(valid.index_select(0, position), chosen, lm.pad_id)


_FAILED_BACKENDS: set[str] = set()  # compile backends that failed in this process: eager from then on


@functools.cache
def compiled_decode_step(backend: str = "inductor"):
    """decode_step through torch.compile (Inductor fuses the elementwise chains: norms, CFG, the noise hash).

    No CUDA graphs inside compile: the step writes into the request's KV cache, which is an input, so
    `sample` captures the compiled step in its own graph (as it does the eager one)."""
    return torch.compile(decode_step, backend=backend)


@torch.no_grad()
def sample(
    lm: MusicgenLM, cond: Condition, num_frames: int, config: SamplingConfig, seeds: list[int] | torch.Tensor
) -> torch.Tensor:
    """Generate codes [B, K, T] for conditions [B]; seeds [B] (one per row).

    Eager (CPU default): attention over the filled part of the cache only, and the CPU top-k fast
    path. Compiled and/or CUDA-graph (CUDA default): one fixed-shape step, attention over the whole
    cache under the future mask. In fp32 on CPU both give the same tokens (tests/core/test_decode_step.py).
    """
    device, num_codebooks, pad = lm.device, lm.num_codebooks, lm.pad_id
    seeds = torch.as_tensor(seeds, dtype=torch.long, device=device)
    if seeds.shape != (len(cond),):
        raise ValueError(f"need one seed per row: {len(cond)} rows, seeds of shape {tuple(seeds.shape)}")
    steps = num_steps(num_frames, num_codebooks)
    if num_frames > max_frames(lm):
        raise UserError(f"{num_frames} frames exceed the model's maximum of {max_frames(lm)}")
    guidance = config.guidance_scale if config.uses_cfg else None
    cache = KVCache(lm, with_null(cond.to(device)) if guidance is not None else cond.to(device), steps)
    valid = valid_step_mask(num_frames, num_codebooks, device).T.contiguous()  # [steps, K]
    positions = torch.arange(steps, device=device)
    graph = config.use_cuda_graph and device.type == "cuda"
    compiled = config.compile if config.compile is not None else device.type == "cuda"
    compiled = compiled and config.compile_backend not in _FAILED_BACKENDS
    fixed_shape = graph or compiled
    step_fn = compiled_decode_step(config.compile_backend) if compiled else decode_step

    def one_step(tokens: torch.Tensor, position: torch.Tensor, length: int | None = None, rows=None) -> torch.Tensor:
        return step_fn(lm, cache, tokens, position, guidance, config, seeds, valid, length, rows)

    def fall_back_to_eager(err: Exception) -> None:
        nonlocal step_fn
        _FAILED_BACKENDS.add(config.compile_backend)
        warnings.warn(f"torch.compile of the decoding step failed, running it eagerly from now on: "
                      f"{type(err).__name__}: {err}", stacklevel=3)
        step_fn = decode_step

    tokens = torch.full((len(cond), num_codebooks), pad, dtype=torch.long, device=device)
    if compiled:  # compile before the loop (step 0 rewrites what this writes)
        try:
            one_step(tokens, positions[:1])
        except Exception as err:  # noqa: BLE001 - any compiler failure (no C++ compiler, no Triton, ...)
            fall_back_to_eager(err)
    if graph:
        try:
            replay = _capture(one_step, len(cond), num_codebooks, device)
        except Exception as err:  # noqa: BLE001 - compiled code that cannot be captured
            if step_fn is decode_step:
                raise
            fall_back_to_eager(err)
            replay = _capture(one_step, len(cond), num_codebooks, device)
        one_step = replay
    if not fixed_shape:  # eager: the per-(seed, step) noise hashes once per request
        rows = row_hashes(seeds, positions[:, None])  # [steps, B]
    delayed = torch.empty((len(cond), num_codebooks, steps), dtype=torch.long, device=device)
    # Every step calls the compiled step with the objects and shapes its first call (above) was checked on, so
    # Dynamo's guards would pass: checking only those that tell its compiled versions apart saved ~0.09 ms a step
    # (batch 1, tiny preset, CPU).
    same_inputs = torch.compiler.set_stance(skip_guard_eval_unsafe=True) if step_fn is not decode_step else nullcontext()
    with same_inputs:
        for s in range(steps):
            position = positions[s : s + 1]
            tokens = one_step(tokens, position) if fixed_shape else one_step(tokens, position, s + 1, rows[s])
            delayed[:, :, s] = tokens
    return revert_delay_pattern(delayed)


def _capture(decode_step, batch: int, num_codebooks: int, device):
    """Record decode_step in a CUDA graph over static input buffers; returns a replaying callable."""
    static_tokens = torch.zeros((batch, num_codebooks), dtype=torch.long, device=device)
    static_position = torch.zeros(1, dtype=torch.long, device=device)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):  # warm-up (allocations, kernel selection) outside the graph
        for _ in range(2):
            decode_step(static_tokens, static_position)
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = decode_step(static_tokens, static_position)

    def replay(tokens: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        static_tokens.copy_(tokens)
        static_position.copy_(position)
        graph.replay()
        return static_out.clone()

    return replay
