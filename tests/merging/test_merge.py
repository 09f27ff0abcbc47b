"""Tests of weight merging (merging/methods.py, merge.py, live.py, cli.py) on tiny MusicGen-shaped checkpoints.

.venv/bin/python -m pytest -q tests/merging/test_merge.py
"""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from merging.live import LiveMerge
from merging.merge import MANIFEST_FILE, merge_checkpoints
from merging.methods import lerp, merge_state_dicts, slerp
from musicgen_cfg import cli
from musicgen_cfg.checkpoint import state_sha256
from musicgen_cfg.errors import UserError

torch.set_num_threads(1)

HIDDEN, FFN, VOCAB, CODEBOOKS = 8, 16, 6, 2
PREFIX = "decoder.model.decoder."


def tiny_config() -> dict:
    """A MusicgenDecoderConfig-shaped config.json plus our own musicgen_cfg block, with the
    provenance keys that distillation writes (beta = 0: the quality model)."""
    return {
        "model_type": "musicgen_decoder",
        "hidden_size": HIDDEN,
        "ffn_dim": FFN,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_codebooks": CODEBOOKS,
        "vocab_size": VOCAB,
        "activation_function": "gelu",
        "transformers_version": "5.24.0",
        "_name_or_path": "tiny",
        "musicgen_cfg": {
            "codec": "symbolic",
            "guidance_scale": 3.0,
            "beta": 0.0,
            "teacher_guidance_scale": 3.0,
            "base_model": "default",
        },
    }


def tiny_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """MusicGen decoder names, tiny shapes; one bf16 tensor and one integer tensor for dtype coverage."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {f"{PREFIX}embed_tokens.{k}.weight": (VOCAB + 1, HIDDEN) for k in range(CODEBOOKS)}
    shapes |= {f"{PREFIX}layers.0.self_attn.{p}_proj.weight": (HIDDEN, HIDDEN) for p in "qkvo"}
    shapes |= {
        f"{PREFIX}layers.0.fc1.weight": (FFN, HIDDEN),
        f"{PREFIX}layers.0.fc2.weight": (HIDDEN, FFN),
        f"{PREFIX}layer_norm.weight": (HIDDEN,),
        f"{PREFIX}layer_norm.bias": (HIDDEN,),
    }
    state = {name: torch.randn(shape, generator=gen) for name, shape in shapes.items()}
    state |= {
        f"decoder.lm_heads.{k}.weight": torch.randn(VOCAB, HIDDEN, generator=gen) for k in range(CODEBOOKS)
    }
    state["enc_to_dec_proj.weight"] = torch.randn(HIDDEN, 4, generator=gen).to(torch.bfloat16)
    state["decoder.codebook_ids"] = torch.arange(CODEBOOKS)
    return state


def write_checkpoint(path, state, config=None, shards=1):
    """config.json + model.safetensors, or `shards` files + model.safetensors.index.json."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config or tiny_config()))
    (path / "tokenizer.json").write_text('{"tiny": true}')
    names = list(state)
    if shards == 1:
        save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
        return path
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {name: state[name] for name in names[i::shards]}
        save_file(part, str(path / file), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, file)
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


@pytest.fixture
def quality():
    return tiny_state_dict(0)


@pytest.fixture
def diversity():
    return tiny_state_dict(1)


@pytest.fixture
def pair(tmp_path, quality, diversity):
    """Checkpoint dirs of theta_q (beta = 0) and theta_d (beta = 15), whose provenance differs."""
    diversity_config = tiny_config()
    diversity_config["musicgen_cfg"]["beta"] = 15.0
    diversity_config["transformers_version"] = "5.0.0"
    return write_checkpoint(tmp_path / "q", quality), write_checkpoint(
        tmp_path / "d", diversity, diversity_config
    )


def run_cli(argv: list[str]) -> int:
    return cli.run(argv)


def assert_state_equal(actual, expected):
    assert sorted(actual) == sorted(expected)
    for name in expected:
        assert actual[name].dtype == expected[name].dtype, name
        assert torch.equal(actual[name], expected[name]), name


# --- the rules ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lerp", "slerp"])
def test_endpoints_are_bit_exact(quality, diversity, method):
    assert_state_equal(merge_state_dicts([quality, diversity], method=method, lam=0.0), quality)
    assert_state_equal(merge_state_dicts([quality, diversity], method=method, lam=1.0), diversity)


def test_lerp_is_linear_in_lam(quality, diversity):
    def at(lam):
        return merge_state_dicts([quality, diversity], lam=lam, allow_extrapolation=True)

    for low, high in [(0.0, 0.5), (0.25, 1.0), (-0.5, 1.5)]:
        mid, ends = at((low + high) / 2), (at(low), at(high))
        for name, tensor in quality.items():
            if tensor.dtype == torch.float32:
                torch.testing.assert_close(mid[name], (ends[0][name] + ends[1][name]) / 2)
    name = f"{PREFIX}layers.0.fc1.weight"
    torch.testing.assert_close(at(0.3)[name], 0.7 * quality[name] + 0.3 * diversity[name])


def test_slerp_keeps_unit_norm_and_follows_the_great_circle():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(64, generator=gen, dtype=torch.float64)
    b = torch.randn(64, generator=gen, dtype=torch.float64)
    a, b = a / a.norm(), b / b.norm()
    omega = torch.arccos(a @ b)
    for lam in [0.1, 0.5, 0.9]:
        point = slerp(a, b, lam)
        assert point.norm().item() == pytest.approx(1.0, abs=1e-12)
        assert torch.arccos(point @ a).item() == pytest.approx(lam * omega.item(), abs=1e-9)
        assert lerp(a, b, lam).norm().item() < 1.0 - 1e-3  # the chord, unlike the arc, dips inside


def test_slerp_equals_lerp_for_parallel_tensors():
    a = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    for b in (3.0 * a, -2.0 * a, torch.zeros_like(a)):
        assert torch.equal(slerp(a, b, 0.3), lerp(a, b, 0.3))


def test_task_arithmetic_of_one_model_with_weight_one_is_that_model(quality, diversity):
    base = tiny_state_dict(2)
    merged = merge_state_dicts([quality], method="task_arithmetic", weights=[1.0], base=base)
    assert_state_equal(merged, quality)


def test_task_arithmetic_with_lam_equals_lerp(quality, diversity):
    base = tiny_state_dict(2)
    arithmetic = merge_state_dicts([quality, diversity], method="task_arithmetic", lam=0.3, base=base)
    interpolated = merge_state_dicts([quality, diversity], lam=0.3)
    for name in quality:
        torch.testing.assert_close(arithmetic[name], interpolated[name])


# --- validation -----------------------------------------------------------------------------------


def test_mismatched_state_dicts_name_the_first_difference(quality, diversity):
    fc1 = f"{PREFIX}layers.0.fc1.weight"
    missing = {k: v for k, v in diversity.items() if k != fc1}
    with pytest.raises(UserError, match=f"tensor {fc1} is in A but not in B"):
        merge_state_dicts([quality, missing], lam=0.5)
    reshaped = diversity | {fc1: torch.zeros(FFN + 1, HIDDEN)}
    with pytest.raises(UserError, match=rf"tensor {fc1} has shape \[16, 8\] in A but \[17, 8\] in B"):
        merge_state_dicts([quality, reshaped], lam=0.5)
    recast = diversity | {fc1: diversity[fc1].half()}
    with pytest.raises(UserError, match=f"tensor {fc1} has dtype float32 in A but float16 in B"):
        merge_state_dicts([quality, recast], lam=0.5)
    renumbered = diversity | {"decoder.codebook_ids": torch.tensor([1, 0])}
    with pytest.raises(UserError, match="non-float tensor decoder.codebook_ids differs between A and B"):
        merge_state_dicts([quality, renumbered], lam=0.5)


def test_bad_parameters_are_refused(quality, diversity):
    with pytest.raises(UserError, match=r"lam=1.5 is outside \[0, 1\].*--allow-extrapolation"):
        merge_state_dicts([quality, diversity], lam=1.5)
    with pytest.raises(UserError, match="needs the shared base"):
        merge_state_dicts([quality, diversity], method="task_arithmetic", lam=0.5)
    with pytest.raises(UserError, match="extrapolate"):
        merge_state_dicts([quality], method="task_arithmetic", weights=[1.2], base=diversity)
    with pytest.raises(UserError, match="exactly two models"):
        merge_state_dicts([quality], lam=0.5)


def test_mismatched_configs_are_refused_but_provenance_is_ignored(tmp_path, pair, quality):
    bigger = tiny_config() | {"ffn_dim": 32}
    other = write_checkpoint(tmp_path / "other", quality, bigger)
    with pytest.raises(UserError, match="config.json key ffn_dim is 16 in A but 32 in B"):
        merge_checkpoints([pair[0], other], tmp_path / "out", lam=0.5)
    # The pair differs only in musicgen_cfg.beta and transformers_version: that merges fine.
    merge_checkpoints(pair, tmp_path / "ok", lam=0.5)


def test_not_a_checkpoint(tmp_path, pair):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=f"B is not a model checkpoint: no config.json in {empty}"):
        merge_checkpoints([pair[0], empty], tmp_path / "out", lam=0.5)
    (empty / "config.json").write_text("{}")
    with pytest.raises(UserError, match="B is not a model checkpoint: no model.safetensors"):
        merge_checkpoints([pair[0], empty], tmp_path / "out", lam=0.5)
    with pytest.raises(UserError, match="B is not a model checkpoint: .* is not a directory"):
        merge_checkpoints([pair[0], tmp_path / "missing"], tmp_path / "out", lam=0.5)


def test_index_cannot_point_outside_the_checkpoint(tmp_path, pair, quality):
    sharded = write_checkpoint(tmp_path / "sharded", quality, shards=2)
    index_path = sharded / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"] = dict.fromkeys(index["weight_map"], "../elsewhere.safetensors")
    index_path.write_text(json.dumps(index))
    with pytest.raises(UserError, match="A: model.safetensors.index.json names an invalid shard file"):
        merge_checkpoints([sharded, pair[1]], tmp_path / "out", lam=0.5)


def test_truncated_safetensors_gives_a_clear_error(tmp_path, pair):
    weights = pair[1] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(UserError, match="B: .*model.safetensors is truncated"):
        merge_checkpoints(pair, tmp_path / "out", lam=0.5)
    weights.write_bytes(b"\x01\x02")
    with pytest.raises(UserError, match="not a safetensors file"):
        merge_checkpoints(pair, tmp_path / "out", lam=0.5)
    assert not (tmp_path / "out").exists()


# --- streaming checkpoints ------------------------------------------------------------------------


def test_streaming_merge_matches_in_memory_merge_and_records_a_manifest(tmp_path, pair, quality, diversity):
    (pair[0] / "manifest.json").write_text('{"artifact": "distilled student, beta=0"}')
    for name in ("optimizer.safetensors", "trainer_state.json", "README.md"):  # a training checkpoint's files
        (pair[0] / name).write_text("{}")
    out = merge_checkpoints(pair, tmp_path / "out", lam=0.25)
    merged = load_file(out / "model.safetensors")
    assert_state_equal(merged, merge_state_dicts([quality, diversity], lam=0.25))
    assert (out / "tokenizer.json").read_text() == '{"tiny": true}'
    assert not (out / "manifest.json").exists()  # it describes the beta = 0 source, not the merge
    assert not (out / "optimizer.safetensors").exists() and not (out / "trainer_state.json").exists()
    card = (out / "README.md").read_text()  # the merge's own model card, not the source's
    assert "weight merge at lambda = 0.25" in card and "| beta (diversity reward weight) | [0.0, 15.0] |" in card

    config = json.loads((out / "config.json").read_text())
    block = config.pop("musicgen_cfg")
    expected = tiny_config()
    expected_block = expected.pop("musicgen_cfg")
    assert config == expected  # the first model's config
    assert block["beta"] == [0.0, 15.0]  # the sources disagree on it: both, in merge order
    assert block["base_model"] == "default" and block["lambda"] == 0.25 and block["merge"]["method"] == "lerp"
    assert {k: block[k] for k in ("codec", "guidance_scale")} == {"codec": "symbolic", "guidance_scale": 3.0}
    assert expected_block["beta"] == 0.0

    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["method"] == "lerp" and manifest["lam"] == 0.25 and manifest["extrapolation"] is False
    assert manifest["sources"][1] == {
        "role": "B",
        "path": str(pair[1].resolve()),
        "weights_sha256": state_sha256(diversity),  # the identity generate/train manifests record
    }
    assert manifest["weights_sha256"] == state_sha256(merged)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging dir left


def test_streaming_merge_keeps_the_sharding(tmp_path, quality, diversity):
    sharded = write_checkpoint(tmp_path / "q", quality, shards=3)
    single = write_checkpoint(tmp_path / "d", diversity)  # the output follows the first model
    out = merge_checkpoints([sharded, single], tmp_path / "out", lam=1.0)
    shard_files = sorted(p.name for p in out.glob("*.safetensors"))
    assert shard_files == sorted(p.name for p in sharded.glob("*.safetensors"))
    assert len(shard_files) == 3
    index = json.loads((out / "model.safetensors.index.json").read_text())
    merged = {}
    for file in shard_files:
        part = load_file(out / file)
        assert all(index["weight_map"][name] == file for name in part)
        merged |= part
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in quality.values())
    assert_state_equal({name: merged[name] for name in diversity}, diversity)


def test_bounded_shards_cut_the_output_and_read_back_as_the_in_memory_merge(tmp_path, pair, quality, diversity):
    from musicgen_cfg.checkpoint import load_state, open_checkpoint

    bound = 3 * HIDDEN * HIDDEN * 4  # three attention projections per shard
    out = merge_checkpoints(pair, tmp_path / "out", lam=0.25, max_shard_bytes=bound)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and files == [f"model-{k:05d}-of-{len(files):05d}.safetensors" for k in range(1, len(files) + 1)]
    assert not (out / "model.safetensors").exists()
    for file in files:  # every shard within the bound unless one tensor alone is larger
        part = load_file(out / file)
        size = sum(t.numel() * t.element_size() for t in part.values())
        assert size <= bound or len(part) == 1
    assert_state_equal(load_state(out), merge_state_dicts([quality, diversity], lam=0.25))
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["weights_sha256"] == open_checkpoint(out).weights_sha256 == state_sha256(load_state(out))
    again = merge_checkpoints([out, pair[1]], tmp_path / "again", lam=0.0)  # a sharded merge is an input too
    assert_state_equal(load_state(again), load_state(out))


def test_extrapolation_needs_the_flag_and_is_recorded(tmp_path, pair, quality, diversity):
    with pytest.raises(UserError, match="extrapolation"):
        merge_checkpoints(pair, tmp_path / "out", lam=-0.5)
    out = merge_checkpoints(pair, tmp_path / "out", lam=-0.5, allow_extrapolation=True)
    assert json.loads((out / MANIFEST_FILE).read_text())["extrapolation"] is True
    name = f"{PREFIX}layers.0.fc2.weight"
    torch.testing.assert_close(
        load_file(out / "model.safetensors")[name], 1.5 * quality[name] - 0.5 * diversity[name]
    )


def test_existing_output_is_kept_unless_overwrite(tmp_path, pair, diversity):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists"):
        merge_checkpoints(pair, out, lam=1.0)
    assert (out / "keep.txt").read_text() == "mine"
    merge_checkpoints(pair, out, lam=1.0, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert_state_equal(load_file(out / "model.safetensors"), diversity)


# --- the command line -----------------------------------------------------------------------------


def test_cli_sweep_writes_one_dir_per_lam(tmp_path, pair, quality):
    assert (
        run_cli(["merge", "--models", *map(str, pair), "--sweep", "0,0.5,1", "--out", str(tmp_path / "s")])
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["lam_0", "lam_0.5", "lam_1"]
    assert_state_equal(load_file(tmp_path / "s" / "lam_0" / "model.safetensors"), quality)
    manifest = json.loads((tmp_path / "s" / "lam_0.5" / MANIFEST_FILE).read_text())
    assert manifest["lam"] == 0.5


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--lam", "1.5"], "outside"),
        (["--lam", "0.5", "--method", "task_arithmetic"], "--base"),
        (["--sweep", "0,x"], "comma-separated"),
    ],
)
def test_cli_bad_input_is_one_user_error(tmp_path, pair, extra, message):
    with pytest.raises(UserError, match=message) as caught:
        run_cli(["merge", "--models", *map(str, pair), *extra, "--out", str(tmp_path / "out")])
    assert "\n" not in str(caught.value)


# --- LiveMerge --------------------------------------------------------------------------------------


def tiny_live_module():
    from transformers import MusicgenDecoderConfig, MusicgenForCausalLM

    config = MusicgenDecoderConfig(
        hidden_size=HIDDEN, ffn_dim=FFN, num_hidden_layers=1, num_attention_heads=2,
        num_codebooks=CODEBOOKS, vocab_size=VOCAB, pad_token_id=VOCAB, bos_token_id=VOCAB,
    )  # fmt: skip
    return MusicgenForCausalLM(config).eval()


def random_like(module, seed):
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(t.shape, generator=gen) for name, t in module.state_dict().items()}


def test_live_merge_matches_offline_merge_in_the_same_storage():
    module = tiny_live_module()
    quality, diversity = random_like(module, 0), random_like(module, 1)
    pointers = {name: p.data_ptr() for name, p in module.named_parameters()}
    live = LiveMerge(module, quality, diversity, lam=0.3)
    assert live.lam == 0.3
    for lam in (0.3, 0.8, 1.0):
        live.set_lambda(lam)
        offline = merge_state_dicts([quality, diversity], lam=lam)
        for name, param in module.named_parameters():
            torch.testing.assert_close(param.data, offline[name])
            assert param.data_ptr() == pointers[name], name
    assert_state_equal(module.state_dict(), diversity)  # lam = 1 is theta_d exactly
    with pytest.raises(UserError, match="extrapolation"):
        live.set_lambda(1.2)
    assert live.lam == 1.0


def test_live_merge_accepts_the_modules_own_weights_as_an_endpoint():
    module = tiny_live_module()
    quality = {name: t.clone() for name, t in module.state_dict().items()}
    diversity = random_like(module, 1)
    live = LiveMerge(module, module.state_dict(), diversity, lam=1.0)  # aliases the live weights
    live.set_lambda(0.0)
    assert_state_equal(module.state_dict(), quality)


def test_live_merge_holds_handed_over_endpoints_without_copying():
    module = tiny_live_module()
    quality, diversity = random_like(module, 0), random_like(module, 1)
    live = LiveMerge(module, quality, diversity, lam=0.5)
    held = {t.untyped_storage().data_ptr() for _, q, d in live._triples for t in (q, d)}
    assert held == {t.untyped_storage().data_ptr() for t in [*quality.values(), *diversity.values()]}


def test_live_merge_validates_at_construction():
    module = tiny_live_module()
    quality, diversity = random_like(module, 0), random_like(module, 1)
    name = "lm_heads.0.weight"
    with pytest.raises(
        UserError, match=rf"tensor {name} has shape \[6, 8\] in quality but \[6, 9\] in diversity"
    ):
        LiveMerge(module, quality, diversity | {name: torch.zeros(VOCAB, HIDDEN + 1)})
    with pytest.raises(UserError, match=f"module parameter {name} is missing"):
        LiveMerge(
            module,
            {k: v for k, v in quality.items() if k != name},
            {k: v for k, v in diversity.items() if k != name},
        )
    wrong = {name: torch.zeros(VOCAB, HIDDEN + 1)}
    with pytest.raises(UserError, match="in the state dicts but"):
        LiveMerge(module, quality | wrong, diversity | wrong)
