"""LoRA students (musicgen_cfg/training/lora.py): config section, teacher = base without adapters, adapter-only
checkpoints with exact resume, merged exports that transformers and peft load, exact LERP merges.

    python -m pytest -q tests/training/test_lora.py
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from musicgen_cfg.cli import main
from musicgen_cfg.config import config_help, load_config
from musicgen_cfg.errors import UserError
from musicgen_cfg.model import load_model
from musicgen_cfg.sampler import SamplingConfig, sample
from musicgen_cfg.scoring import score
from musicgen_cfg.training import lora
from musicgen_cfg.training.distillation import DistillConfig
from musicgen_cfg.training.lora import LoraSettings

PROMPTS = ["sad piano", "a joyful jig"]


# --- config ----------------------------------------------------------------------------------------

def test_lora_section_from_yaml_with_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 3\nlora:\n  rank: 8\n  target_modules: [q_proj, v_proj]\n")
    config = load_config(DistillConfig, path, ["--lora.alpha", "4", "--lora.rank=2"])
    assert config.lora == LoraSettings(rank=2, alpha=4.0, target_modules=("q_proj", "v_proj")) and config.steps == 3
    assert load_config(DistillConfig, path, ["--lora", "none"]).lora is None
    assert load_config(DistillConfig, None, ["--lora.rank", "4"]).lora == LoraSettings(rank=4)
    assert load_config(DistillConfig, None, []).lora is None  # full finetune by default
    assert load_config(DistillConfig, None, ["--lora.target-modules", "fc1,fc2"]).lora.target_modules == ("fc1", "fc2")
    assert "lora.rank" in config_help(DistillConfig) and "lora.target_modules" in config_help(DistillConfig)


@pytest.mark.parametrize("overrides, message", [
    (["--lora.bogus", "1"], "unknown config key 'lora.bogus'"),
    (["--lora.rank", "0"], "lora.rank must be >= 1"),
    (["--lora.rank", "two"], "config key 'lora.rank': cannot read 'two'"),
    (["--lora.dropout", "1"], "lora.dropout must be in [0, 1)"),
    (["--lora.alpha", "0"], "lora.alpha must be > 0"),
    (["--lora.target-modules", "q proj"], "not a module name"),
    (["--lora", "8"], "'lora' is a section"),
    (["--steps.x", "1"], "'steps' is a value, not a section"),
])
def test_bad_lora_config_is_one_user_error(overrides, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config(DistillConfig, None, overrides)


# --- the teacher is the base ----------------------------------------------------------------------

def randomize_adapters(lm: torch.nn.Module, seed: int = 0):
    """peft starts B at zero (student = base); a trained adapter is not, so tests give it random values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in lm.named_parameters():
            if "lora_" in name:
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))


# peft's disabled-adapter forward is another code path than the plain MusicgenLM: the same math, but nothing
# promises the same float32 kernels (a batch of another shape alone picks another GEMM blocking: a 4-row CFG
# batch against a 2-row one differs by 7e-6 on logits of size 17 on an AVX-512 Xeon). 1e-4 is 15x that, and
# 1e-3 below what the adapters change (asserted just before), so it still tells "no adapters" from "adapters".
TEACHER_ATOL = 1e-4


@pytest.mark.parametrize("spec", ["tiny", "default"])
def test_teacher_is_the_base_without_adapters_and_equals_a_separately_loaded_model(spec, tiny_dir):
    """Teacher against a separately loaded base: the same module class on the same inputs, so bit for bit;
    peft's disabled adapters against the teacher: other code paths, so within TEACHER_ATOL."""
    spec = str(tiny_dir) if spec == "tiny" else spec
    student, reference = load_model(spec), load_model(spec)  # reference: the frozen teacher loaded on its own
    teacher = lora.add_adapters(student, LoraSettings(rank=4, target_modules=("q_proj", "v_proj", "fc1")))
    randomize_adapters(student.lm)
    # one weight copy: every teacher tensor IS a student tensor; the student only adds the adapters
    student_tensors = {id(p) for p in student.lm.parameters()}
    assert all(id(p) in student_tensors for p in teacher.lm.parameters())
    extra = sum(p.numel() for p in student.lm.parameters()) - sum(p.numel() for p in teacher.lm.parameters())
    assert extra == sum(p.numel() for p in student.lm.parameters() if p.requires_grad) > 0
    assert teacher.weights_sha256() == reference.weights_sha256()
    assert not any(p.requires_grad for p in teacher.lm.parameters())

    codes = torch.randint(0, reference.lm.vocab_size, (2, reference.lm.num_codebooks, 10))
    cond = reference.condition(PROMPTS)
    ours, theirs = (score(m.lm, codes, cond, guidance_scale=3.0) for m in (teacher, reference))
    assert torch.equal(ours.cfg_logits, theirs.cfg_logits) and torch.equal(ours.logits, theirs.logits)
    sampling = SamplingConfig(guidance_scale=3.0)
    assert torch.equal(sample(teacher.lm, cond, 8, sampling, [1, 2]), sample(reference.lm, cond, 8, sampling, [1, 2]))
    adapted = score(student.lm, codes, cond).logits
    assert not torch.allclose(adapted, ours.logits, atol=1e-3)  # the adapters do change the student
    for _, layer in lora._lora_layers(student.lm):  # peft's own "adapters disabled" is the same function
        layer.enable_adapters(False)
    plain = score(teacher.lm, codes, cond).logits  # the same 2-row batch (ours.logits came from a 4-row CFG batch)
    torch.testing.assert_close(score(student.lm, codes, cond).logits, plain, rtol=0, atol=TEACHER_ATOL)


def test_unknown_target_module_is_one_user_error(tiny_model):
    with pytest.raises(UserError, match="lora.target_modules"):
        lora.add_adapters(tiny_model, LoraSettings(target_modules=("no_such_layer",)))


# --- training, checkpoints, export, merging --------------------------------------------------------

@pytest.fixture(scope="module")
def lora_args(tiny_dir, tmp_path_factory):
    """Train args; lr_floor 1 keeps the LR independent of --steps, so 2 steps + a resume to 4 is the 4-step run."""
    prompts = tmp_path_factory.mktemp("lora") / "prompts.txt"
    prompts.write_text("sad piano\na joyful jig\ncalm organ hymn\nfast rock drums\ndark jazz bass\n")
    return ["--model", str(tiny_dir), "--prompts", str(prompts), "--embedder", "none", "--num-frames", "10",
            "--prompts-per-step", "2", "--generations", "2", "--guidance-scale", "3", "--lr", "3e-2", "--lr-floor", "1",
            "--checkpoint-every", "2", "--eval-every", "2", "--heldout-prompts", "1", "--tensorboard", "false",
            "--threads", "1", "--lora.rank", "4", "--lora.alpha", "8", "--lora.dropout", "0.1"]


@pytest.fixture(scope="module")
def runs(lora_args, tmp_path_factory):
    """Two LoRA students of the tiny base (different seeds), 4 steps each, exported (+ the first's adapter)."""
    root = tmp_path_factory.mktemp("lora_runs")
    for name, seed in (("a", 0), ("b", 1)):
        extra = ["--lora.export-adapter", str(root / "adapter_a")] if name == "a" else []
        assert main(["train", *lora_args, "--seed", str(seed), "--steps", "4", "--out", str(root / name),
                     "--export", str(root / f"export_{name}"), *extra]) == 0
    return root


@pytest.mark.slow  # real-format training: two LoRA runs (peft), a resume
def test_lora_checkpoints_hold_the_adapter_only_and_resume_exactly(runs, lora_args, tmp_path):
    last = sorted((runs / "a").glob("checkpoint-*"))[-1]
    assert sorted(p.name for p in last.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                      "optimizer.safetensors", "trainer_state.json"]
    adapter = load_file(str(last / "adapter_model.safetensors"))
    assert adapter and all(".lora_A." in k or ".lora_B." in k for k in adapter)
    optimizer = load_file(str(last / "optimizer.safetensors"))
    moments = {k.split("::")[0] for k in optimizer if "::exp_avg" in k}
    assert moments and all(".lora_" in k for k in moments)  # the optimizer state of the adapters, nothing else
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in adapter.items() if "lora_B" in k)  # it trained
    # stopped after step 2, resumed to 4 (adapter dropout draws from the restored RNG too): bit-identical
    split = tmp_path / "split"
    assert main(["train", *lora_args, "--steps", "2", "--out", str(split)]) == 0
    assert main(["train", *lora_args, "--steps", "4", "--out", str(split), "--resume"]) == 0
    resumed = load_file(str(sorted(split.glob("checkpoint-*"))[-1] / "adapter_model.safetensors"))
    assert resumed.keys() == adapter.keys() and all(torch.equal(adapter[k], resumed[k]) for k in adapter)


def full_finetune(args: list[str]) -> list[str]:
    return args[: args.index("--lora.rank")]  # lora_args end with the lora section


@pytest.mark.parametrize("first, then, message", [
    ("full", "lora", "holds no LoRA adapter"),  # a full-finetune checkpoint resumed with a lora section
    ("lora", "full", "holds a LoRA adapter only: resume it with the lora section"),
    ("lora", "rank 2", "has r 4, the config asks for 2"),
])
@pytest.mark.slow  # real-format training: a LoRA or full run to resume
def test_resuming_a_mismatched_checkpoint_is_one_line(lora_args, tmp_path, capsys, first, then, message):
    run = tmp_path / "run"
    first_args = lora_args if first == "lora" else full_finetune(lora_args)
    then_args = {"lora": lora_args, "full": full_finetune(lora_args), "rank 2": [*lora_args, "--lora.rank", "2"]}[then]
    assert main(["train", *first_args, "--steps", "1", "--checkpoint-every", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["train", *then_args, "--steps", "2", "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def one_step_run(lora_args, tmp_path_factory):
    run = tmp_path_factory.mktemp("lora_one_step") / "run"
    assert main(["train", *lora_args, "--steps", "1", "--checkpoint-every", "1", "--out", str(run)]) == 0
    return run


def truncate(path):
    path.write_bytes(path.read_bytes()[:-5])


@pytest.mark.parametrize("damage, message", [
    (lambda c: truncate(c / lora.ADAPTER_WEIGHTS), "is truncated or not a safetensors file"),
    (lambda c: (c / lora.ADAPTER_WEIGHTS).unlink(), "weights file not found"),
    (lambda c: (c / lora.ADAPTER_CONFIG).unlink(), "missing adapter_config.json"),
    (lambda c: (c / lora.ADAPTER_CONFIG).write_text("{oops"), "malformed JSON"),
    (lambda c: (c / lora.ADAPTER_CONFIG).write_text("{}"), "names no adapter rank r"),
    (lambda c: truncate(c / "optimizer.safetensors"), "is truncated or not a safetensors file"),
    (lambda c: None, None),  # an intact adapter-only checkpoint passes the check
])
@pytest.mark.slow  # real-format training: a LoRA run to damage
def test_an_adapter_checkpoint_is_checked_before_a_resume_writes_anything(one_step_run, lora_args, tmp_path, capsys,
                                                                          damage, message):
    import shutil

    from musicgen_cfg.training.run import resume_point

    run = tmp_path / "run"
    shutil.copytree(one_step_run, run)
    checkpoint = run / "checkpoint-000001"
    damage(checkpoint)
    if message is None:
        assert resume_point(run, resume=True) == checkpoint
        return
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["train", *lora_args, "--steps", "2", "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # run.json untouched


@pytest.mark.slow  # real-format training: two LoRA runs (peft)
def test_export_is_merged_full_weights_that_transformers_and_peft_load(runs, tiny_dir):
    from peft import PeftModel
    from transformers import MusicgenForConditionalGeneration

    base = MusicgenForConditionalGeneration.from_pretrained(tiny_dir).state_dict()
    merged = MusicgenForConditionalGeneration.from_pretrained(runs / "export_a").state_dict()
    assert merged.keys() == base.keys()
    adapter = load_file(str(runs / "adapter_a" / "adapter_model.safetensors"))
    scale = 8 / 4  # alpha / rank
    changed = 0
    for name, weight in base.items():
        a_key = f"base_model.model.{name.removesuffix('.weight')}.lora_A.weight"
        if a_key in adapter:  # W + (alpha / r) B A, computed here from the adapter file
            delta = scale * adapter[a_key.replace("lora_A", "lora_B")] @ adapter[a_key]
            torch.testing.assert_close(merged[name], weight + delta, atol=1e-6, rtol=1e-6)
            changed += not torch.equal(merged[name], weight)
        else:
            assert torch.equal(merged[name], weight), name  # everything else is the base, bit for bit
    assert changed > 0
    # peft applies our adapter directory to the transformers base model and merges to the same weights
    peft_model = PeftModel.from_pretrained(MusicgenForConditionalGeneration.from_pretrained(tiny_dir),
                                           str(runs / "adapter_a"))
    via_peft = peft_model.merge_and_unload().state_dict()
    for name in merged:
        torch.testing.assert_close(via_peft[name], merged[name], atol=1e-6, rtol=1e-6)
    manifest = json.loads((runs / "export_a" / "manifest.json").read_text())
    assert manifest["config"]["lora"]["rank"] == 4 and manifest["base_sha256"]
    assert json.loads((runs / "adapter_a" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_dir)
    adapter_manifest = json.loads((runs / "adapter_a" / "manifest.json").read_text())
    assert adapter_manifest["base_sha256"] == manifest["base_sha256"] and adapter_manifest["adapter_safetensors_sha256"]


@pytest.mark.slow  # real-format training: two LoRA runs (peft)
def test_merging_two_lora_exports_is_the_lerp_of_their_deltas_live_and_offline(runs, tiny_dir, tmp_path):
    from app.engine import Endpoint, Engine
    from merging.merge import merge_checkpoints

    lam = 0.3
    out = merge_checkpoints([runs / "export_a", runs / "export_b"], tmp_path / "merged", lam=lam)
    base, a, b, m = (load_file(str(d / "model.safetensors")) for d in (tiny_dir, runs / "export_a", runs / "export_b", out))
    decoder = [k for k in a if k.startswith(("decoder.", "enc_to_dec_proj."))]
    assert any(not torch.equal(a[k], b[k]) for k in decoder)
    for name in decoder:  # theta(lam) = base + (1 - lam) dA + lam dB
        expected = base[name] + (1 - lam) * (a[name] - base[name]) + lam * (b[name] - base[name])
        torch.testing.assert_close(m[name], expected, atol=1e-6, rtol=1e-6)
    # the demo's LiveMerge on the two exports moves the served weights along the same path
    a_dir, b_dir = str(runs / "export_a"), str(runs / "export_b")
    engine = Engine.load(Endpoint("quality", a_dir, a_dir), Endpoint("diversity", b_dir, b_dir),
                         None, None, "no embedder in this test", "cpu", tmp_path / "out", [], lam=lam,
                         log=lambda message: None)
    served = engine.model.lm.state_dict()
    for name in decoder:
        torch.testing.assert_close(served[name], m[name], atol=1e-6, rtol=1e-6)
    codes = engine.model.generate(["sad piano"], [0], 0.2, SamplingConfig())[0].codes
    assert codes.shape[0] == engine.model.lm.num_codebooks


@pytest.mark.slow  # real-format training: a bf16 LoRA run
def test_bf16_base_is_one_shared_copy_and_the_export_merges_into_the_float32_weights(tiny_dir, lora_args, tmp_path):
    from accelerate import Accelerator

    from musicgen_cfg.training.distillation import Distiller

    config = load_config(DistillConfig, None, [*lora_args, "--teacher-dtype", "bfloat16", "--bf16", "true",
                                               "--steps", "1", "--out", str(tmp_path / "run")])
    d = Distiller(config, Accelerator(cpu=True))
    adapters = {n: p for n, p in d.student.lm.named_parameters() if p.requires_grad}
    assert adapters and all(".lora_" in n and p.dtype == torch.float32 for n, p in adapters.items())
    student_tensors = {id(p) for p in d.student.lm.parameters()}
    assert all(p.dtype == torch.bfloat16 and id(p) in student_tensors for p in d.teacher.lm.parameters())
    metrics = d.train_step(0)
    assert metrics["grad_norm"] > 0
    randomize_adapters(d.student.lm)  # one step moves B only a little: make the delta plain to see
    merged = d.weights.export_model().lm.state_dict()
    base = load_model(str(tiny_dir)).lm.state_dict()  # float32, as loaded
    adapted = {name.removesuffix(".weight") for name in merged} & {n for n, _ in lora._lora_layers(d.student.lm)}
    assert adapted
    for name, weight in base.items():
        assert merged[name].dtype == torch.float32
        module = name.removesuffix(".weight")
        if module in adapted:
            layer = d.student.lm.get_submodule(module)
            expected = weight + 2.0 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight  # alpha/r = 8/4
            torch.testing.assert_close(merged[name], expected, atol=1e-6, rtol=1e-6)
        else:
            assert torch.equal(merged[name], weight), name
