"""Idea 1 of the paper: on-policy CFG distillation, trained together with the diversity reward.

    musicgen-cfg train --config configs/quality.yaml              # beta = 0  -> the quality model
    musicgen-cfg train --config configs/diversity.yaml            # beta = 15 -> the diversity model
    musicgen-cfg train --config configs/quality.yaml --steps 50 --lr 3e-5     # YAML + overrides
    accelerate launch --num_processes 2 -m musicgen_cfg.cli train --config ...  # DDP, same global batch

One step, P prompts x G generations (follow it top to bottom in `train_step`):
  1. rollout  codes ~ student without CFG, no grad            [P*G, K, T]   sampler.sample
  2. reward   r = mean sibling 1 - cos of the embedded audio;  A = advantages(r)   rl/diversity.py
  3. teacher  pi_gamma = softmax(uncond + gamma (cond - uncond)) of the FROZEN base, one batched pass
  4. student  logits with grad                                               scoring.score
  5. loss     mean over sequences of sum over tokens KL(pi_theta || pi_gamma)  -  beta * mean(A log pi_theta(y))

The student is scored with dropout off: the KL is between the policy we sample and the teacher.
Rollout seeds depend on (seed, step, global row) only, so a run is reproducible, resumable to the
bit, and the same under DDP with any number of processes for the same global batch.
"""

import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from musicgen_cfg import fsdp, lora
from musicgen_cfg.checkpoint import atomic_directory, file_sha256, load_tensors, write_json
from musicgen_cfg.errors import UserError
from musicgen_cfg.lora import LoraSettings
from musicgen_cfg.sampler import SamplingConfig, sample
from musicgen_cfg.scoring import score, sequence_logprob
from musicgen_cfg.training import (
    MetricsLog,
    checkpoints,
    field,
    load_checkpoint,
    register_config_command,
    save_checkpoint,
    warmup_cosine,
    write_run_info,
)
from rl.diversity import BASELINES, advantages, pairwise_diversity, reinforce_surrogate

DIVERGENCES = ("reverse_kl", "forward_kl", "jsd")
DATA_SOURCES = ("on_policy", "teacher", "mixed")


@dataclass
class DistillConfig:
    model: str = field("default", "base model: student init AND frozen teacher (default, checkpoint dir, hub id)")
    out: str = field("runs/distill", "run directory (checkpoints, metrics.csv, tensorboard)")
    prompts: str = field("default", "'default' = captions of the default corpus train split, or a .txt/.jsonl file")
    guidance_scale: float | None = field(None, "teacher CFG gamma; None = the base model's recorded gamma")
    beta: float = field(0.0, "diversity reward weight: 0 = quality model, 15 = diversity model (paper)")
    divergence: str = field("reverse_kl", "reverse_kl (paper, KL(student||teacher)) | forward_kl | jsd")
    jsd_weight: float = field(0.5, "student weight w of the JSD mixture m = w p_student + (1 - w) p_teacher")
    prompts_per_step: int = field(8, "P: prompts per optimizer step (global, across processes)")
    generations: int = field(4, "G: generations per prompt (>= 2 for the diversity reward, >= 3 for 'loo')")
    num_frames: int = field(128, "frames per generation (default model: 128 = 8 bars; MusicGen: 50 per second)")
    temperature: float = field(1.0, "rollout sampling temperature")
    top_k: int | None = field(None, "rollout top-k (None = full distribution, as the KL assumes)")
    embedder: str = field("default", "reward embedder: default | DIR | clap:<dir-or-hub-id> | none (only with beta = 0: no reward logging)")
    baseline: str = field("loo", "REINFORCE baseline: loo | batch_mean | none")
    normalize_advantages: bool = field(False, "divide advantages by their batch std")
    data: str = field("on_policy", "rollouts from: on_policy (student) | teacher (CFG teacher) | mixed")
    teacher_fraction: float = field(0.5, "with data=mixed: probability that a step uses teacher rollouts")
    steps: int = field(300, "optimizer steps")
    lr: float = field(1e-4, "peak learning rate (AdamW)")
    warmup: int = field(20, "linear warm-up steps")
    weight_decay: float = field(0.0, "AdamW weight decay")
    grad_clip: float = field(1.0, "max global grad norm")
    grad_accum: int = field(1, "micro-batches per step (splits the P prompts)")
    bf16: bool = field(False, "bf16 autocast for the forward passes (GPU)")
    seed: int = field(0, "seed of prompts and rollouts")
    log_every: int = field(1, "steps between metric rows")
    eval_every: int = field(50, "steps between held-out metrics (KL to teacher and diversity on unseen prompts)")
    heldout_prompts: int = field(16, "number of held-out prompts")
    checkpoint_every: int = field(50, "steps between checkpoints")
    keep_last: int = field(2, "checkpoints kept")
    threads: int = field(2, "torch CPU threads")
    device: str = field("auto", "auto | cpu | cuda")
    tensorboard: bool = field(True, "also write TensorBoard events")
    export: str | None = field(None, "write the final student here (checkpoint + manifest.json)")
    fsdp: bool = field(False, "shard the student's weights, grads and AdamW state over the processes (FSDP2 via "
                              "accelerate; for musicgen-large full finetunes on >= 2 GPUs); see musicgen_cfg/fsdp.py")
    lora: LoraSettings | None = field(None, "train LoRA adapters (peft) instead of all weights: a section of the "
                                      "lora.* keys below (YAML mapping or --lora.KEY VALUE); none = full finetune")

    def __post_init__(self):
        if self.beta < 0:
            raise UserError(f"beta must be >= 0 (it weights a reward to maximise), got {self.beta}")
        if self.beta > 0 and self.generations < 2:
            raise UserError(f"the diversity reward needs generations >= 2 per prompt when beta > 0, got {self.generations}")
        if self.beta > 0 and self.baseline == "loo" and self.generations < 3:
            raise UserError("baseline 'loo' needs generations >= 3 (the pairwise reward of 2 siblings is shared)")
        if self.embedder == "none" and self.beta > 0:
            raise UserError("beta > 0 needs a reward embedder; embedder 'none' is only allowed with beta = 0")
        if self.divergence not in DIVERGENCES:
            raise UserError(f"unknown divergence {self.divergence!r}; choose {', '.join(DIVERGENCES)}")
        if self.data not in DATA_SOURCES:
            raise UserError(f"unknown data source {self.data!r}; choose {', '.join(DATA_SOURCES)}")
        if self.baseline not in BASELINES:
            raise UserError(f"unknown baseline {self.baseline!r}; choose {', '.join(BASELINES)}")
        if not 0 < self.jsd_weight < 1:
            raise UserError(f"jsd_weight must be in (0, 1), got {self.jsd_weight}")
        if not 0 <= self.teacher_fraction <= 1:
            raise UserError(f"teacher_fraction must be in [0, 1], got {self.teacher_fraction}")
        if self.guidance_scale is not None and self.guidance_scale < 0:
            raise UserError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        for name in ("prompts_per_step", "generations", "num_frames", "steps", "grad_accum", "log_every",
                     "eval_every", "checkpoint_every", "keep_last", "threads", "heldout_prompts"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.prompts_per_step % self.grad_accum:
            raise UserError(f"prompts_per_step {self.prompts_per_step} is not divisible by grad_accum {self.grad_accum}")
        if not self.lr > 0:
            raise UserError(f"lr must be positive, got {self.lr}")
        if self.fsdp and self.lora is not None:
            raise UserError("fsdp with lora is not supported: the adapters and their optimizer state are small and the "
                            "frozen base is shared with the teacher, so run LoRA under plain DDP (fsdp: false)")
        if self.lora is not None and self.lora.export_adapter and not self.export:
            raise UserError("lora.export_adapter needs export too (the merged weights the adapter belongs with)")


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

class PromptSource:
    """Training and held-out prompts: default-corpus captions (train / val split) or a prompts file."""

    def __init__(self, spec: str, heldout: int, seed: int):
        if spec == "default":
            from musicgen_cfg.corpus import load_dataset

            self.train, val = load_dataset("train", augment_semitones=5), load_dataset("val")
            rng = random.Random(seed + 99)
            self.heldout = [val.sample_caption(rng.randrange(len(val)), rng) for _ in range(heldout)]
            self.fixed = None
        else:
            from musicgen_cfg.generate import read_prompts, validate_prompts

            prompts = validate_prompts(read_prompts(spec))
            cut = max(1, len(prompts) // 10) if len(prompts) > 1 else 0
            self.fixed, self.train = prompts[: len(prompts) - cut] or prompts, None
            self.heldout = (prompts[len(prompts) - cut :] or prompts)[:heldout]

    def draw(self, count: int, rng: random.Random) -> list[str]:
        if self.fixed is not None:
            return [rng.choice(self.fixed) for _ in range(count)]
        prompts = []
        for _ in range(count):
            i = rng.randrange(len(self.train))
            prompts.append(self.train.sample_caption(i, rng, self.train.random_transpose(i, rng)))
        return prompts


def rollout_seeds(seed: int, step: int, rows: range) -> list[int]:
    """Per-row sampling seeds from (seed, step, global row): independent of the process layout."""
    base = seed * 1_000_003 + step * 100_003
    return [base + r for r in rows]


# ----------------------------------------------------------------------------------------- trainer

class Distiller:
    """Holds the student (trainable), the frozen teacher, the reward embedder and the optimizer."""

    def __init__(self, config: DistillConfig, accelerator):
        from musicgen_cfg.model import load_model
        from rl.embedders import load_embedder

        self.config, self.accelerator = config, accelerator
        device = accelerator.device
        self.student = load_model(config.model, device=device)
        if config.lora is not None:  # the teacher is the frozen base under the adapters: one weight copy
            torch.manual_seed(config.seed)  # adapter init and adapter dropout follow the run's seed
            self.teacher = lora.add_adapters(self.student, config.lora)
        else:
            self.teacher = load_model(config.model, device=device)
        self.teacher.lm.eval().requires_grad_(False)
        self.gamma = config.guidance_scale if config.guidance_scale is not None else self.teacher.default_guidance_scale
        self.embedder = load_embedder(config.embedder) if config.generations >= 2 and config.embedder != "none" else None
        trainable = [p for p in self.student.lm.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_cosine(s, config.warmup, config.steps, floor=1.0))
        self.forward, self.optimizer = accelerator.prepare(self.student.lm, self.optimizer)
        self.generator = torch.Generator().manual_seed(config.seed)  # mixed-data coin flips
        self.data_rng = random.Random(config.seed)
        self.prompts = PromptSource(config.prompts, config.heldout_prompts, config.seed)

    def autocast(self):
        return self.accelerator.autocast() if self.config.bf16 else nullcontext()

    @torch.no_grad()
    def rollout(self, prompts: list[str], seeds: list[int], from_teacher: bool) -> torch.Tensor:
        """codes [len(prompts), K, T]: student samples without CFG, or CFG-teacher samples."""
        config = self.config
        model = self.teacher if from_teacher else self.student
        model.lm.eval()
        sampling = SamplingConfig(guidance_scale=self.gamma if from_teacher else 1.0, temperature=config.temperature,
                                  top_k=config.top_k)
        with fsdp.full_parameters(model.lm), self.autocast():  # the sampler's step is not forward: FSDP needs a gather
            return sample(model.lm, self.student.condition(prompts), config.num_frames, sampling, seeds)

    @torch.no_grad()
    def diversity_rewards(self, codes: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """[P*G, K, T] codes (siblings adjacent) -> rewards [P, G]."""
        audio = self.student.codec.decode(codes.cpu(), prompts)
        embeddings = self.embedder.embed(audio, self.student.codec.sample_rate)
        return pairwise_diversity(embeddings.view(-1, self.config.generations, embeddings.shape[-1]))

    def train_step(self, step: int) -> dict[str, float]:
        config, accelerator = self.config, self.accelerator
        G, world, rank = config.generations, accelerator.num_processes, accelerator.process_index
        if config.prompts_per_step % world:
            raise UserError(f"prompts_per_step {config.prompts_per_step} is not divisible by {world} processes")
        local = config.prompts_per_step // world
        prompts_all = self.prompts.draw(config.prompts_per_step, self.data_rng)  # same on every process
        use_teacher = config.data == "teacher" or (
            config.data == "mixed" and torch.rand((), generator=self.generator).item() < config.teacher_fraction)
        first_prompt = rank * local
        prompts = [p for p in prompts_all[first_prompt : first_prompt + local] for _ in range(G)]
        rows = range(first_prompt * G, (first_prompt + local) * G)
        times = {}

        began = time.perf_counter()
        codes = self.rollout(prompts, rollout_seeds(config.seed, step, rows), use_teacher)
        times["time_rollout"] = time.perf_counter() - began

        began = time.perf_counter()
        rewards = self.diversity_rewards(codes, prompts) if self.embedder is not None else None
        adv = advantages(rewards, config.baseline, config.normalize_advantages) if config.beta > 0 else None
        times["time_reward"] = time.perf_counter() - began

        totals = {"kl": 0.0, "pg": 0.0, "entropy": 0.0, "kl_to_base": 0.0}
        kl_codebooks = torch.zeros(self.student.lm.num_codebooks)
        times["time_teacher"] = times["time_student"] = 0.0
        micro = local // config.grad_accum if local >= config.grad_accum else local
        self.student.lm.eval()  # dropout off: score the policy we sample from
        if config.lora is not None:  # adapter dropout (lora.dropout) is a regulariser of the scoring pass only
            lora.set_dropout(self.student.lm, True)
        cond_all = self.student.condition(prompts)
        chunks = range(0, local, micro)
        for index, start in enumerate(chunks):
            sl = slice(start * G, (start + micro) * G)
            chunk_codes, chunk_cond = codes[sl], cond_all.select(sl)
            began = time.perf_counter()
            with torch.no_grad(), self.autocast():
                teacher = score(self.teacher.lm, chunk_codes, chunk_cond, guidance_scale=self.gamma)
            times["time_teacher"] += time.perf_counter() - began
            began = time.perf_counter()
            sync = accelerator.no_sync(self.forward) if index < len(chunks) - 1 else nullcontext()
            with sync:
                with self.autocast():
                    student = score(self.student.lm, chunk_codes, chunk_cond, forward=self.forward)
                kl, kl_k = distillation_loss(student.logits, teacher.cfg_logits, student.mask, config.divergence,
                                             config.jsd_weight)
                loss = kl
                if adv is not None:
                    logp = sequence_logprob(student.logits, chunk_codes, student.mask).view(-1, G)
                    pg = reinforce_surrogate(logp, adv[start : start + micro])
                    loss = loss - config.beta * pg
                    totals["pg"] += pg.item() / len(chunks)
                accelerator.backward(loss / len(chunks))
            times["time_student"] += time.perf_counter() - began
            with torch.no_grad():
                totals["kl"] += kl.item() / len(chunks)
                kl_codebooks += kl_k.detach().cpu() / len(chunks)
                totals["entropy"] += mean_entropy(student.logits, student.mask).item() / len(chunks)
                totals["kl_to_base"] += distillation_loss(student.logits, teacher.logits, student.mask)[0].item() / len(chunks)
        began = time.perf_counter()
        grad_norm = accelerator.clip_grad_norm_(self.student.lm.parameters(), config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        times["time_student"] += time.perf_counter() - began
        step_time = sum(times.values())
        metrics = {**totals, **{f"kl_codebook{k}": v.item() for k, v in enumerate(kl_codebooks)},
                   "grad_norm": float(grad_norm), "lr": self.scheduler.get_last_lr()[0], "teacher_data": float(use_teacher),
                   "samples_per_s": len(prompts) * world / step_time, **times}
        if rewards is not None:
            metrics.update(reward_mean=rewards.mean().item(), reward_std=rewards.std().item())
        return self.reduce(metrics)

    def reduce(self, metrics: dict[str, float]) -> dict[str, float]:
        """Average metrics over processes (identical on one)."""
        if self.accelerator.num_processes == 1:
            return metrics
        keys = list(metrics)  # the same order on every process (same code path)
        values = self.accelerator.reduce(torch.tensor([metrics[k] for k in keys], device=self.accelerator.device), "mean")
        return dict(zip(keys, values.tolist()))

    def save_checkpoint(self, run_dir: Path, step: int, provenance: dict) -> None:
        """checkpoint-<step>/: the student (its adapter only with LoRA), optimizer, scheduler and RNG states.

        Collective under FSDP (the shards are gathered); the main process writes."""
        config, lm = self.config, self.student.lm
        write_weights, optimizer_state = None, None
        if fsdp.is_sharded(lm):
            optimizer_state, full = fsdp.full_optimizer_state(lm, self.optimizer), fsdp.gathered_model(self.student)
            if full is not None:
                def write_weights(directory):
                    full.write_files(directory, provenance)
        elif config.lora is not None:
            def write_weights(directory):
                lora.write_adapter(lm, directory)
        if self.accelerator.is_main_process:
            save_checkpoint(run_dir, step, self.student, self.optimizer, self.scheduler, self.generator, self.data_rng,
                            {"provenance": provenance}, config.keep_last, provenance, write_weights=write_weights,
                            optimizer_state=optimizer_state)

    def load_checkpoint(self, path: Path, provenance: dict) -> dict:
        """Restore what `save_checkpoint` wrote (collective under FSDP); a checkpoint of another base is refused."""
        from musicgen_cfg.model import WEIGHTS

        lm, load_weights, load_optimizer = self.student.lm, None, None
        if fsdp.is_sharded(lm):
            def load_weights(directory):
                fsdp.load_full_weights(lm, load_tensors(directory / WEIGHTS), directory)

            def load_optimizer(flat):
                fsdp.load_full_optimizer(lm, self.optimizer, flat)
        elif self.config.lora is not None:
            def load_weights(directory):
                lora.load_adapter(lm, directory)
        state = load_checkpoint(path, self.student, self.optimizer, self.scheduler, self.generator, self.data_rng,
                                load_weights=load_weights, load_optimizer=load_optimizer)
        saved = state.get("provenance", {}).get("base_sha256")
        if saved is not None and saved != provenance["base_sha256"]:
            raise UserError(f"{path} was trained from another base model (sha256 {saved[:12]}), not {self.config.model}")
        return state

    def export_model(self):
        """The student as a plain MusicGen: itself, with LoRA the base with the adapters merged in, under
        FSDP the gathered weights (collective; None off the main process)."""
        if fsdp.is_sharded(self.student.lm):
            return fsdp.gathered_model(self.student)
        return lora.merged_model(self.student) if self.config.lora is not None else self.student

    @torch.no_grad()
    def heldout_metrics(self) -> dict[str, float]:
        """Teacher-hacking guard: on prompts never trained on, the student's KL to the teacher and diversity."""
        G = max(self.config.generations, 2)
        prompts = [p for p in self.prompts.heldout for _ in range(G)]
        codes = self.rollout(prompts, list(range(len(prompts))), from_teacher=False)
        # full_parameters: FSDP keeps the root unit gathered after a forward until a backward, which never comes here
        with fsdp.full_parameters(self.student.lm), self.autocast():
            teacher = score(self.teacher.lm, codes, self.student.condition(prompts), guidance_scale=self.gamma)
            student = score(self.student.lm, codes, self.student.condition(prompts))
        kl, _ = distillation_loss(student.logits, teacher.cfg_logits, student.mask)
        metrics = {"heldout_kl": kl.item()}
        if self.embedder is not None:
            audio = self.student.codec.decode(codes.cpu(), prompts)
            emb = self.embedder.embed(audio, self.student.codec.sample_rate)
            metrics["heldout_diversity"] = pairwise_diversity(emb.view(-1, G, emb.shape[-1])).mean().item()
        return metrics


def train(config: DistillConfig, resume: bool = False, command: str = "") -> Path:
    from accelerate import Accelerator

    from musicgen_cfg.model import pick_device
    
    torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    fsdp_plugin = fsdp.plugin() if config.fsdp else None
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision="bf16" if config.bf16 else "no", fsdp_plugin=fsdp_plugin)
    if config.fsdp:
        fsdp.enable(accelerator, fsdp_plugin)
    run_dir = Path(config.out)
    if checkpoints(run_dir) and not resume:
        raise UserError(f"{run_dir} already holds checkpoints: pass --resume to continue or choose another --out")
    distiller = Distiller(config, accelerator)
    main_process = accelerator.is_main_process
    if main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run_info(run_dir, config, command)
    provenance = {"beta": config.beta, "teacher_guidance_scale": distiller.gamma, "base_model": config.model,
                  "base_sha256": distiller.teacher.weights_sha256()}
    start = 0
    if resume and checkpoints(run_dir):
        start = distiller.load_checkpoint(checkpoints(run_dir)[-1], provenance)["step"]
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
    if config.export:
        model = distiller.export_model()  # collective under FSDP
        if main_process:
            export(distiller, model, config, run_dir, command, provenance)
    return run_dir


def export(distiller: Distiller, model, config: DistillConfig, run_dir: Path, command: str, provenance: dict):
    """`model` (Distiller.export_model: the full weights, LoRA merged) + manifest.json; with
    lora.export_adapter also the adapter."""
    with atomic_directory(config.export) as tmp:
        model.write_files(tmp, provenance)
        write_json({
            "artifact": f"distilled student, beta={config.beta:g}",
            "rebuild_command": command,
            "config": asdict(config),
            **provenance,
            "weights_sha256": model.weights_sha256(refresh=True),
            "model_safetensors_sha256": file_sha256(tmp / "model.safetensors"),
            "metrics_csv": str(run_dir / "metrics.csv"),
        }, tmp / "manifest.json")
    if config.lora is not None and config.lora.export_adapter:
        lora.export_adapter(distiller.student.lm, config.lora.export_adapter, {
            "artifact": f"LoRA adapter of the distilled student, beta={config.beta:g} (merged: {config.export})",
            "rebuild_command": command, "config": asdict(config), **provenance})


def register(subparsers):
    register_config_command(subparsers, "train", "CFG distillation + diversity reward (YAML config + --key value overrides)",
                            __doc__, DistillConfig, train)
