"""Idea 1 of the paper: on-policy CFG distillation, trained together with the diversity reward.

    musicgen-cfg train --config configs/quality.yaml              # beta = 0  -> the quality model
    musicgen-cfg train --config configs/diversity.yaml            # beta = 15 -> the diversity model
    musicgen-cfg train --config configs/quality.yaml --steps 50 --lr 3e-5     # YAML + overrides
    accelerate launch --num_processes 2 -m musicgen_cfg.cli train --config ...  # DDP, same global batch

The finished student is exported to OUT/final (or `export`) as a hub-ready model directory
(musicgen_cfg/export.py); every command that takes a model also accepts OUT itself.

One step, P prompts x G generations (follow it top to bottom in `Distiller.accumulate_gradients`):
  1. rollout  codes ~ student without CFG, no grad            [P*G, K, T]   sampler.sample
  2. reward   r = mean sibling 1 - cos of the embedded audio, per prompt, gated;  A = advantages(r)   rl/reward.py
  3. teacher  pi_gamma = softmax(uncond + gamma (cond - uncond)) of the FROZEN base, one batched pass
  4. student  logits with grad                                               scoring.score
  5. loss     mean over sequences of sum over tokens KL(pi_theta || pi_gamma)  -  beta * mean(A log pi_theta(y))

The student is scored with dropout off: the KL is between the policy we sample and the teacher.
Rollout seeds depend on (seed, step, global row) only, so a run is reproducible, resumable to the
bit, and the same under DDP with any number of processes for the same global batch.

Real MusicGen (configs/musicgen_*.yaml): bf16 autocast with the CFG combination, log-softmax and KL in
fp32; a bf16 teacher (teacher_dtype) sharing the student's text encoder and codec; gradient
checkpointing; rollouts in chunks of rollout_batch_size rows; grad_accum equal micro-batches of each
process's rows whose losses are weighted by the global sequence count. Memory: bench/train_memory.py.
LoRA students (a `lora` section: training/lora.py) and FSDP2 full finetunes (`fsdp: true`: training/fsdp.py).
"""

import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from musicgen_cfg.config import check_output_path, field
from musicgen_cfg.errors import UserError
from musicgen_cfg.optim import OptimConfig, build_optimizer, check_finite, optim_option
from musicgen_cfg.prompts import MAX_SEED, FilePrompts
from musicgen_cfg.sampler import SamplingConfig, sample
from musicgen_cfg.scoring import score, sequence_logprob
from musicgen_cfg.training import fsdp
from musicgen_cfg.training.lora import LoraSettings
from musicgen_cfg.training.run import (
    MetricsLog,
    TrainerState,
    load_checkpoint,
    resume_point,
    run_option,
    save_checkpoint,
    write_run_info,
)
from musicgen_cfg.training.student_export import STEP_TIMES, export
from musicgen_cfg.training.student_weights import TEACHER_DTYPES, student_weights
from rl.diversity import BASELINES, advantages, reinforce_surrogate
from rl.reward import SiblingRewards, diversity_rewards, parse_gate_spec, reward_gate

DIVERGENCES = ("reverse_kl", "forward_kl", "jsd")
DATA_SOURCES = ("on_policy", "teacher", "mixed")


@dataclass
class DistillConfig:
    model: str = field("default", "base model: student init AND frozen teacher (default, checkpoint dir, hub id)", fixed=True)
    out: str = field("runs/distill", "run directory (checkpoints, metrics.csv, tensorboard)")
    prompts: str = field("default", "'default' = captions of the default corpus train split, or a .txt/.jsonl file", fixed=True)
    guidance_scale: float | None = field(None, "teacher CFG gamma; None = the base model's recorded gamma", min=0.0, fixed=True)
    beta: float = field(0.0, "diversity reward weight: 0 = quality model, 15 = diversity model (paper)", min=0.0, fixed=True)
    divergence: str = field("reverse_kl", "reverse_kl (paper, KL(student||teacher)) | forward_kl | jsd",
                            choices=DIVERGENCES, fixed=True)
    jsd_weight: float = field(0.5, "student weight w of the JSD mixture m = w p_student + (1 - w) p_teacher",
                              gt=0.0, lt=1.0)
    prompts_per_step: int = field(8, "P: prompts per optimizer step (global, across processes)", min=1, fixed=True)
    generations: int = field(4, "G: generations per prompt (>= 2 for the diversity reward, >= 3 for 'loo')", min=1, fixed=True)
    num_frames: int = field(128, "frames per generation (default model: 128 = 8 bars; MusicGen: 50 per second)", min=1, fixed=True)
    temperature: float = field(1.0, "rollout sampling temperature (!= 1 only with beta = 0: REINFORCE scores the tau = 1 policy)",
                               gt=0.0)
    top_k: int | None = field(None, "rollout top-k; 0 or None = the full distribution (required with beta > 0: REINFORCE scores the untruncated policy)",
                              min=0)
    embedder: str = field("default", "reward embedder: default | DIR | clap:<dir-or-hub-id> | none (only with beta = 0: no reward logging)", fixed=True)
    baseline: str = field("loo", "REINFORCE baseline: loo | batch_mean | none", choices=BASELINES, fixed=True)
    reward_gate: str = field("data", "degenerate clips earn no diversity reward: data (outside the real data's range: "
                             "default world, sounding fraction or onset rate below the 0.1% quantile of the shipped "
                             "dataset; audio, over half of the 100 ms windows below -60 dBFS) | data:Q (quantile Q) | "
                             "none (the paper's ungated reward); see rl/reward.py")
    normalize_advantages: bool = field(False, "divide advantages by their batch std")
    data: str = field("on_policy", "rollouts from: on_policy (student) | teacher (CFG teacher) | mixed; teacher/mixed only with beta = 0",
                      choices=DATA_SOURCES)
    teacher_fraction: float = field(0.5, "with data=mixed: probability that a step uses teacher rollouts", min=0.0, max=1.0)
    steps: int = optim_option("steps", 300)
    lr: float = optim_option("lr", 1e-4, fixed=True)
    warmup: int = optim_option("warmup", 20, fixed=True)
    lr_floor: float = optim_option("floor", 0.1, "cosine decay after warm-up to lr_floor x lr at the last step; 1.0 = "
                                   "constant LR after warm-up", fixed=True)
    weight_decay: float = optim_option("weight_decay", 0.0, fixed=True)
    grad_clip: float = optim_option("clip", 1.0, fixed=True)
    grad_accum: int = field(1, "micro-batches per step and process: its P*G/processes rows in equal parts (same gradient)",
                            min=1)
    bf16: bool = field(False, "bf16 autocast for rollouts and forward passes; CFG combination, log-softmax and KL stay fp32")
    teacher_dtype: str = field("float32", "dtype of the frozen teacher's weights: float32 | bfloat16 (half its memory); "
                                          "with lora: of the frozen base under the adapters, which is the teacher",
                               choices=tuple(TEACHER_DTYPES))
    gradient_checkpointing: bool = field(False, "recompute decoder layers in the student's backward (activation memory / layers)")
    rollout_batch_size: int | None = field(None, "rows sampled (and held-out rows scored) per batch; None = all local rows at once",
                                           min=1)
    seed: int = field(0, "seed of prompts and rollouts", min=0, max=MAX_SEED, fixed=True)
    log_every: int = run_option("log_every", 1)
    eval_every: int = field(50, "steps between held-out metrics (KL to teacher and diversity on unseen prompts)", min=1)
    heldout_prompts: int = field(16, "number of held-out prompts", min=1)
    checkpoint_every: int = run_option("checkpoint_every", 50)
    keep_last: int = run_option("keep_last", 2)
    threads: int = run_option("threads", 2)
    device: str = run_option("device", "auto")
    tensorboard: bool = field(True, "also write TensorBoard events")
    export: str | None = field(None, "where the finished student is exported (hub-ready model dir); None = OUT/final")
    rebuild_shipped: bool = run_option("rebuild_shipped", False)
    fsdp: bool = field(False, "shard the student's weights, grads and AdamW state over the processes (FSDP2 via "
                              "accelerate; for musicgen-large full finetunes on >= 2 GPUs); see musicgen_cfg/training/fsdp.py")
    lora: LoraSettings | None = field(None, "train LoRA adapters (peft) instead of all weights: a section of the "
                                      "lora.* keys below (YAML mapping or --lora.KEY VALUE); none = full finetune")

    def __post_init__(self):
        if self.beta > 0 and self.generations < 2:
            raise UserError(f"the diversity reward needs generations >= 2 per prompt when beta > 0, got {self.generations}")
        if self.beta > 0 and self.baseline == "loo" and self.generations < 3:
            raise UserError("baseline 'loo' needs generations >= 3 (the pairwise reward of 2 siblings is shared)")
        if self.embedder == "none" and self.beta > 0:
            raise UserError("beta > 0 needs a reward embedder; embedder 'none' is only allowed with beta = 0")
        parse_gate_spec(self.reward_gate)
        if self.top_k == 0:  # 0 = off, as for generate, the app and transformers
            self.top_k = None
        off_policy = [name for name, on in (("top_k", self.top_k is not None), ("temperature", self.temperature != 1.0),
                                            (f"data={self.data}", self.data != "on_policy")) if on]
        if self.beta > 0 and off_policy:
            raise UserError(f"beta > 0 needs rollouts from the untruncated student at temperature 1 (REINFORCE scores "
                            f"that policy); remove {', '.join(off_policy)} or set beta 0")
        if self.beta > 0 and self.lora is not None and self.lora.dropout > 0:
            raise UserError("lora.dropout > 0 with beta > 0 is refused: REINFORCE would score a dropout-perturbed "
                            "policy, not the one that sampled the rollouts; set lora.dropout 0 or beta 0")
        split_rows(self, processes=1)
        for key in ("out", "export"):
            check_output_path(getattr(self, key), key, self.rebuild_shipped)
        if self.lora is not None:
            check_output_path(self.lora.export_adapter, "lora.export_adapter", self.rebuild_shipped)
        if self.fsdp and self.lora is not None:
            raise UserError("fsdp with lora is not supported: the adapters and their optimizer state are small and the "
                            "frozen base is shared with the teacher, so run LoRA under plain DDP (fsdp: false)")

    def optim(self) -> OptimConfig:
        """The student's optimiser (musicgen_cfg/optim.py) under this config's keys."""
        return OptimConfig(steps=self.steps, lr=self.lr, warmup=self.warmup, floor=self.lr_floor,
                           weight_decay=self.weight_decay, clip=self.grad_clip)


def split_rows(config: DistillConfig, processes: int) -> tuple[int, int]:
    """(prompts per process, rows per micro-batch): P prompts split evenly over the processes (a prompt's
    G siblings stay together for the reward), each process's rows evenly into grad_accum micro-batches.
    An uneven split is refused: equal parts are what makes every sequence weigh the same. Advantages are
    computed per process (rl.diversity.advantages over the local prompts), so the settings that read
    other prompts' rewards (baseline batch_mean, normalize_advantages) are refused under more than one
    process, where they would give another gradient than one process; batch_mean needs 2 local prompts."""
    P, G, k = config.prompts_per_step, config.generations, config.grad_accum
    if P % processes:
        raise UserError(f"prompts_per_step {P} is not divisible by {processes} processes")
    batch_wide = [name for name, on in (("baseline batch_mean", config.baseline == "batch_mean"),
                                        ("normalize_advantages", config.normalize_advantages)) if on]
    if config.beta > 0 and processes > 1 and batch_wide:
        raise UserError(f"{' and '.join(batch_wide)} use the whole batch's rewards, but advantages are computed per "
                        f"process: not supported under {processes} processes (use baseline loo, or one process)")
    if config.beta > 0 and config.baseline == "batch_mean" and P // processes < 2:
        raise UserError(f"baseline 'batch_mean' needs prompts_per_step >= 2 per process (its baseline is the other "
                        f"prompts' rewards), got {P // processes}")
    local_rows = P // processes * G
    if local_rows % k:
        raise UserError(f"grad_accum {k} does not divide the {local_rows} rows (prompts_per_step x generations / "
                        f"{processes} processes) of each process")
    return P // processes, local_rows // k


# ---------------------------------------------------------------------------------- the loss itself

def token_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "reverse_kl",
                     jsd_weight: float = 0.5) -> torch.Tensor:
    """Per-token divergence [B, K, T] between student and teacher logits [B, K, T, V].

    reverse_kl = KL(p_s || p_t) (the paper), forward_kl = KL(p_t || p_s),
    jsd = w KL(p_s || m) + (1 - w) KL(p_t || m) with m = w p_s + (1 - w) p_t.
    """
    log_s = torch.log_softmax(student_logits.float(), dim=-1)
    log_t = torch.log_softmax(teacher_logits.float(), dim=-1)
    if kind == "reverse_kl":
        return (log_s.exp() * (log_s - log_t)).sum(-1)
    if kind == "forward_kl":
        return (log_t.exp() * (log_t - log_s)).sum(-1)
    if kind == "jsd":
        w = torch.tensor(jsd_weight)
        log_m = torch.logsumexp(torch.stack([log_s + w.log(), log_t + (1 - w).log()]), dim=0)
        return w * (log_s.exp() * (log_s - log_m)).sum(-1) + (1 - w) * (log_t.exp() * (log_t - log_m)).sum(-1)
    raise ValueError(f"unknown divergence {kind!r}")


def distillation_loss(student_logits, teacher_logits, mask, kind="reverse_kl", jsd_weight=0.5):
    """Sum over a sequence's valid tokens (all codebooks), mean over sequences -> (scalar, per codebook [K])."""
    per_token = token_divergence(student_logits, teacher_logits, kind, jsd_weight) * mask
    return per_token.sum(dim=(1, 2)).mean(), per_token.sum(dim=2).mean(dim=0)


def mean_entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    log_p = torch.log_softmax(logits.float(), dim=-1)
    return (-(log_p.exp() * log_p).sum(-1) * mask).sum() / mask.sum()


# --------------------------------------------------------------------------------------- prompts

def prompt_source(spec: str, heldout: int, seed: int):
    """Training and held-out prompts (`.draw(count, rng)`, `.heldout`): the default world's captions
    (`default`: train / val split) or a prompts file."""
    if spec == "default":
        from musicgen_cfg.world.corpus import CaptionPrompts

        return CaptionPrompts(heldout, seed)
    return FilePrompts(spec, heldout)


def rollout_seeds(seed: int, step: int, rows: range) -> list[int]:
    """Per-row sampling seeds from (seed, step, global row): independent of the process layout."""
    base = seed * 1_000_003 + step * 100_003
    return [base + r for r in rows]


# ----------------------------------------------------------------------------------------- trainer

class Distiller:
    """Holds the student (trainable: `weights`, training/student_weights.py), the frozen teacher, the reward
    embedder and the optimizer."""

    def __init__(self, config: DistillConfig, accelerator):
        from musicgen_cfg.model import load_model
        from rl.embedders import load_embedder

        self.config, self.accelerator = config, accelerator
        self.local_prompts, self.micro_rows = split_rows(config, accelerator.num_processes)
        self.student = load_model(config.model, device=accelerator.device)
        self.base_sha256 = self.student.weights_sha256()  # the teacher's identity, before any step
        self.weights = student_weights(config, self.student, accelerator.is_main_process)  # lora: adapters added
        self.teacher = self.weights.frozen_teacher()
        self.student.lm.gradient_checkpointing = config.gradient_checkpointing
        self.gamma = config.guidance_scale if config.guidance_scale is not None else self.teacher.default_guidance_scale
        self.embedder = load_embedder(config.embedder) if config.generations >= 2 and config.embedder != "none" else None
        self.gate = reward_gate(config.reward_gate, self.student.is_symbolic)
        self.optim = config.optim()
        self.optimizer, self.scheduler = build_optimizer(self.weights.trainable_parameters(), self.optim)
        self.forward, self.optimizer = accelerator.prepare(self.student.lm, self.optimizer)
        self.generator = torch.Generator().manual_seed(config.seed)  # mixed-data coin flips
        self.data_rng = random.Random(config.seed)
        self.prompts = prompt_source(config.prompts, config.heldout_prompts, config.seed)

    def autocast(self):
        """bf16 autocast (config.bf16) on the model's device; the losses are computed outside it, in fp32."""
        return torch.autocast(self.student.device.type, dtype=torch.bfloat16, enabled=self.config.bf16)

    def chunks(self, rows: int) -> list[slice]:
        """Row slices of at most rollout_batch_size rows covering range(rows)."""
        size = self.config.rollout_batch_size or max(rows, 1)
        return [slice(start, start + size) for start in range(0, rows, size)]

    @torch.no_grad()
    def rollout(self, prompts: list[str], seeds: list[int], from_teacher: bool) -> torch.Tensor:
        """codes [len(prompts), K, T]: student samples without CFG, or CFG-teacher samples.

        Sampled rollout_batch_size rows at a time (KV cache memory); a row's codes depend only on its
        seed, so the chunking does not change them.
        """
        config = self.config
        model = self.teacher if from_teacher else self.student
        model.lm.eval()
        sampling = SamplingConfig(guidance_scale=self.gamma if from_teacher else 1.0, temperature=config.temperature,
                                  top_k=config.top_k)
        with fsdp.full_parameters(model.lm), self.autocast():  # the sampler's step is not forward: FSDP needs a gather
            return torch.cat([sample(model.lm, self.student.condition(prompts[rows]), config.num_frames, sampling,
                                     seeds[rows]) for rows in self.chunks(len(prompts))])

    @torch.no_grad()
    def diversity_rewards(self, codes: torch.Tensor, prompts: list[str]) -> SiblingRewards:
        """[P*G, K, T] codes (siblings adjacent) -> rewards and gate [P, G], each prompt's group on its own (rl/reward.py)."""
        return diversity_rewards(codes, prompts, self.config.generations, self.student.codec, self.embedder, self.gate)

    def accumulate_gradients(self, step: int) -> dict[str, float]:
        """Rollout, reward, teacher and student passes of one step; leaves the gradient in .grad.

        Each micro-batch's loss is its sum over sequences divided by the process's row count (the
        global count / processes, since DDP averages the processes' gradients): the gradient is that of
        the mean over all P*G sequences, however the rows are split. Returns this process's metrics.
        """
        config, accelerator = self.config, self.accelerator
        G, local = config.generations, self.local_prompts
        prompts_all = self.prompts.draw(config.prompts_per_step, self.data_rng)  # same on every process
        use_teacher = config.data == "teacher" or (
            config.data == "mixed" and torch.rand((), generator=self.generator).item() < config.teacher_fraction)
        first_prompt = accelerator.process_index * local
        prompts = [p for p in prompts_all[first_prompt : first_prompt + local] for _ in range(G)]
        rows = len(prompts)
        times = {}

        began = time.perf_counter()
        codes = self.rollout(prompts, rollout_seeds(config.seed, step, range(first_prompt * G, first_prompt * G + rows)),
                             use_teacher)
        times["time_rollout"] = time.perf_counter() - began

        began = time.perf_counter()
        scored = self.diversity_rewards(codes, prompts) if self.embedder is not None else None
        rewards = scored.rewards if scored is not None else None
        adv = advantages(rewards, config.baseline, config.normalize_advantages).flatten() if config.beta > 0 else None
        times["time_reward"] = time.perf_counter() - began

        totals = {"kl": 0.0, "pg": 0.0, "entropy": 0.0, "kl_to_base": 0.0}
        kl_codebooks = torch.zeros(self.student.lm.num_codebooks)
        times["time_teacher"] = times["time_student"] = 0.0
        self.weights.scoring_mode()  # dropout off (adapter dropout aside): score the policy we sample from
        cond_all = self.student.condition(prompts)
        micro_batches = [slice(start, start + self.micro_rows) for start in range(0, rows, self.micro_rows)]
        for index, sl in enumerate(micro_batches):
            chunk_codes, chunk_cond, weight = codes[sl], cond_all.select(sl), self.micro_rows / rows
            began = time.perf_counter()
            with torch.no_grad(), self.autocast():
                teacher = score(self.teacher.lm, chunk_codes, chunk_cond, guidance_scale=self.gamma)
            times["time_teacher"] += time.perf_counter() - began
            began = time.perf_counter()
            sync = accelerator.no_sync(self.forward) if index < len(micro_batches) - 1 else nullcontext()
            with sync:
                with self.autocast():
                    student = score(self.student.lm, chunk_codes, chunk_cond, forward=self.forward)
                kl, kl_k = distillation_loss(student.logits, teacher.cfg_logits, student.mask, config.divergence,
                                             config.jsd_weight)
                loss = kl
                if adv is not None:
                    logp = sequence_logprob(student.logits, chunk_codes, student.mask)
                    pg = reinforce_surrogate(logp[None], adv[None, sl])  # the mean over this micro-batch
                    loss = loss - config.beta * pg
                    totals["pg"] += pg.item() * weight
                accelerator.backward(loss * weight)
            times["time_student"] += time.perf_counter() - began
            with torch.no_grad():
                totals["kl"] += kl.item() * weight
                kl_codebooks += kl_k.detach().cpu() * weight
                totals["entropy"] += mean_entropy(student.logits, student.mask).item() * weight
                totals["kl_to_base"] += distillation_loss(student.logits, teacher.logits, student.mask)[0].item() * weight
        metrics = {**totals, **{f"kl_codebook{k}": v.item() for k, v in enumerate(kl_codebooks)},
                   "teacher_data": float(use_teacher), **times}
        if rewards is not None:
            metrics.update(reward_mean=rewards.mean().item(), reward_std=rewards.std().item(),
                           music_rate=scored.music.float().mean().item())
        return metrics

    def train_step(self, step: int) -> dict[str, float]:
        """One optimizer step on P x G rollouts; metrics averaged over processes."""
        metrics = self.accumulate_gradients(step)
        began = time.perf_counter()
        grad_norm = self.accelerator.clip_grad_norm_(self.student.lm.parameters(), self.optim.clip)
        check_finite(step + 1, {"reward": metrics.get("reward_mean", 0.0), "KL": metrics["kl"],
                                "REINFORCE term": metrics["pg"], "gradient norm": grad_norm})
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        metrics["time_student"] += time.perf_counter() - began
        step_time = sum(metrics[k] for k in STEP_TIMES)
        metrics.update(grad_norm=float(grad_norm), lr=self.scheduler.get_last_lr()[0],
                       samples_per_s=self.config.prompts_per_step * self.config.generations / step_time)
        return self.reduce(metrics)

    def reduce(self, metrics: dict[str, float]) -> dict[str, float]:
        """Average metrics over processes (identical on one)."""
        if self.accelerator.num_processes == 1:
            return metrics
        keys = list(metrics)  # the same order on every process (same code path)
        values = self.accelerator.reduce(torch.tensor([metrics[k] for k in keys], device=self.accelerator.device), "mean")
        return dict(zip(keys, values.tolist()))

    def trainer_state(self) -> TrainerState:
        """What a checkpoint restores besides the weights (training/run.py)."""
        return TrainerState(self.optimizer, self.scheduler, self.generator, self.data_rng)

    def save_checkpoint(self, run_dir: Path, step: int, provenance: dict) -> None:
        """checkpoint-<step>/: the student (its adapter only with LoRA), optimizer, scheduler and RNG states.

        Every process calls it (collective under FSDP: the shards are gathered); the main process writes."""
        save_checkpoint(run_dir, step, self.weights, self.trainer_state(), {"provenance": provenance},
                        self.config.keep_last, provenance)

    def load_checkpoint(self, path: Path, provenance: dict) -> dict:
        """Restore what `save_checkpoint` wrote (collective under FSDP); a checkpoint of another base is refused."""
        state = load_checkpoint(path, self.weights, self.trainer_state())
        saved = state.get("provenance", {}).get("base_sha256")
        if saved is not None and saved != provenance["base_sha256"]:
            raise UserError(f"{path} was trained from another base model (sha256 {saved[:12]}), not {self.config.model}")
        return state

    @torch.no_grad()
    def heldout_metrics(self) -> dict[str, float]:
        """Teacher-hacking guard: on prompts never trained on, the student's KL to the teacher and diversity.

        The held-out prompts are sharded over the processes (contiguous blocks, the last ones may be
        short or empty) and scored rollout_batch_size rows at a time; sums are reduced, so the result
        does not depend on the process layout. Every process must call it (a collective).
        """
        G = max(self.config.generations, 2)  # the embedder exists only when generations >= 2: then G matches it
        heldout, world = self.prompts.heldout, self.accelerator.num_processes
        share = -(-len(heldout) // world)
        first = min(self.accelerator.process_index * share, len(heldout))
        prompts = [p for p in heldout[first : first + share] for _ in range(G)]
        kl_sum = diversity_sum = music_sum = 0.0
        # Under FSDP every process gathers the weights once here, whatever its share (possibly none):
        # the sampling and forward passes inside then need no collective, and exiting reshards.
        with fsdp.full_parameters(self.student.lm):
            if prompts:
                codes = self.rollout(prompts, list(range(first * G, first * G + len(prompts))), from_teacher=False)
                for rows in self.chunks(len(prompts)):
                    cond = self.student.condition(prompts[rows])
                    with self.autocast():
                        teacher = score(self.teacher.lm, codes[rows], cond, guidance_scale=self.gamma)
                        student = score(self.student.lm, codes[rows], cond)
                    kl_sum += distillation_loss(student.logits, teacher.cfg_logits, student.mask)[0].item() * len(codes[rows])
                if self.embedder is not None:
                    scored = self.diversity_rewards(codes, prompts)
                    diversity_sum, music_sum = scored.rewards.mean(dim=1).sum().item(), scored.music.sum().item()
        totals = torch.tensor([kl_sum, len(prompts), diversity_sum, music_sum], dtype=torch.float64)
        if world > 1:
            totals = self.accelerator.reduce(totals.to(self.accelerator.device), "sum").cpu()
        kl_sum, sequences, diversity_sum, music_sum = totals.tolist()
        metrics = {"heldout_kl": kl_sum / sequences}
        if self.embedder is not None:
            metrics["heldout_diversity"] = diversity_sum / (sequences / G)
            metrics["heldout_music_rate"] = music_sum / sequences
        return metrics


def train(config: DistillConfig, resume: bool = False, command: str = "") -> Path:
    from accelerate import Accelerator

    from musicgen_cfg.model import pick_device

    torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    fsdp_plugin = fsdp.plugin() if config.fsdp else None
    # bf16 is the trainer's own autocast (Distiller.autocast, config.bf16); accelerate's stays off so that
    # an `accelerate config` cannot change the precision behind the config's back.
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision="no", fsdp_plugin=fsdp_plugin)
    fsdp.configure(accelerator, fsdp_plugin)
    run_dir = Path(config.out)
    main_process = accelerator.is_main_process
    checkpoint = resume_point(run_dir, resume, clean=main_process, config=config)
    distiller = Distiller(config, accelerator)
    provenance = {"beta": config.beta, "teacher_guidance_scale": distiller.gamma, "base_model": config.model,
                  "base_sha256": distiller.base_sha256}
    start = 0
    if checkpoint is not None:  # restored before run.json is written: a failed resume changes nothing
        start = distiller.load_checkpoint(checkpoint, provenance)["step"]
    if main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run_info(run_dir, config, command)
    log = MetricsLog(run_dir, tensorboard=config.tensorboard) if main_process else None
    if log is not None:
        log.truncate_after(start)
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc=f"train beta={config.beta:g}",
               dynamic_ncols=True, disable=not main_process)
    for step in bar:
        metrics = distiller.train_step(step)
        done = step + 1
        if done % config.eval_every == 0 or done == config.steps:
            metrics.update(distiller.heldout_metrics())
        if log is not None and (done % config.log_every == 0 or done == config.steps):
            log.log(done, metrics)
        bar.set_postfix(kl=f"{metrics['kl']:.2f}", reward=f"{metrics.get('reward_mean', float('nan')):.3f}")
        if done % config.checkpoint_every == 0 or done == config.steps:
            distiller.save_checkpoint(run_dir, done, provenance)
        accelerator.wait_for_everyone()
    model = distiller.weights.export_model()  # collective under FSDP
    if main_process:
        export(distiller, model, config, run_dir, command, provenance)
    return run_dir
