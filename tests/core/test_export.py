"""Run directories as models, hub-ready exports (musicgen_cfg/export.py), the default teacher gamma, and the
options `app` shares with `demo`.

    .venv/bin/python -m pytest -q tests/core/test_export.py
"""

import json
import shutil

import pytest
import torch

from musicgen_cfg import checkpoint as checkpoint_module
from musicgen_cfg.errors import UserError
from musicgen_cfg.experiments.generate import model_provenance
from musicgen_cfg.export import export_model, licence
from musicgen_cfg.model import load_model, resolve_spec


def test_a_run_directory_means_its_export_else_its_latest_checkpoint(tiny_dir, tmp_path):
    run = tmp_path / "run"
    for step in ("000002", "000004"):
        shutil.copytree(tiny_dir, run / f"checkpoint-{step}")
    said = []
    assert resolve_spec(str(run), log=said.append) == str(run / "checkpoint-000004")
    assert said == [f"{run} is a training run: using its latest checkpoint {run / 'checkpoint-000004'}"]
    (run / "run.json").write_text(json.dumps({"config": {"export": None}}))
    shutil.copytree(tiny_dir, run / "final")
    assert resolve_spec(str(run), log=said.append) == str(run / "final") and "final export" in said[-1]
    elsewhere = tmp_path / "exported"  # `export: DIR` in the run's config
    shutil.copytree(tiny_dir, elsewhere)
    (run / "run.json").write_text(json.dumps({"config": {"export": str(elsewhere)}}))
    assert resolve_spec(str(run), log=said.append) == str(elsewhere)
    assert load_model(str(run)).source == str(elsewhere)


def test_directories_that_are_neither_give_one_line(tmp_path):
    with pytest.raises(UserError, match="neither a model checkpoint .* nor a training run"):
        resolve_spec(str(tmp_path))
    (tmp_path / "run.json").write_text(json.dumps({"config": {}}))
    with pytest.raises(UserError, match="has no export and no checkpoint yet"):
        resolve_spec(str(tmp_path))


def test_default_teacher_gamma_comes_from_the_generation_config(tiny_dir, tmp_path):
    model = load_model(str(tiny_dir))
    assert model.default_guidance_scale == 3.0  # the tiny checkpoint's generation config, like musicgen-small's
    model.generation_config.guidance_scale = 2.5
    model.save(tmp_path / "g25")
    assert load_model(str(tmp_path / "g25")).default_guidance_scale == 2.5


def test_export_is_hub_ready_and_its_provenance_reaches_generate(tiny_dir, tmp_path):
    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    model = load_model(str(tiny_dir))
    provenance = {"beta": 15.0, "teacher_guidance_scale": 3.0, "base_model": "facebook/musicgen-small",
                  "training": {"steps": 7, "prompts": "prompts.txt", "prompts_per_step": 2, "generations": 3,
                               "embedder": "clap:x"}}
    out = export_model(model, tmp_path / "export", provenance, manifest={"artifact": "test"},
                       metrics={"heldout_kl": 1.25})
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: cc-by-nc-4.0\n") and "base_model: facebook/musicgen-small" in card
    assert "| training steps | 7 |" in card and "| heldout_kl | 1.25 |" in card and "non-commercial" in card
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["artifact"] == "test" and manifest["weights_sha256"] == model.weights_sha256()
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["guidance_scale"] == 1.0 and generation["musicgen_cfg"]["beta"] == 15.0
    assert MusicgenForConditionalGeneration.from_pretrained(out).generation_config.guidance_scale == 1.0
    assert AutoProcessor.from_pretrained(out).feature_extractor.sampling_rate == 16000
    exported = load_model(str(out))
    assert exported.default_guidance_scale == 1.0  # sampled without CFG unless asked
    assert model_provenance(exported) | {"model": None} == {
        "model": None, "model_sha256": model.weights_sha256(), "beta": 15.0, "lambda": None,
        "teacher_guidance_scale": 3.0, "dtype": "float32"}


def test_licence_follows_the_base_weights():
    assert licence("facebook/musicgen-medium")[0] == "cc-by-nc-4.0"
    assert licence("default")[0] == "mit"
    tag, text = licence("/data/my-model")
    assert tag == "other" and "/data/my-model" in text


def test_an_export_of_an_export_keeps_the_licence(tiny_dir, tmp_path):
    model = load_model(str(tiny_dir))
    first = export_model(model, tmp_path / "first", {"beta": 0.0, "base_model": "facebook/musicgen-small"})
    again = export_model(load_model(str(first)), tmp_path / "again", {"beta": 0.0, "base_model": str(first)})
    assert licence(str(first))[0] == "cc-by-nc-4.0"
    assert (again / "README.md").read_text().startswith("---\nlicense: cc-by-nc-4.0\n")


def test_app_and_demo_share_the_server_options():
    from musicgen_cfg import cli

    common = ["--no-browser", "--host", "0.0.0.0", "--port", "7999", "--share", "--device", "cpu", "--out", "o"]
    _, demo = cli.parse(["demo", *common])
    _, app = cli.parse(["app", "--quality", "q", "--diversity", "d", *common])
    options = ("no_browser", "host", "port", "share", "device", "out")
    assert {k: getattr(demo, k) for k in options} == {k: getattr(app, k) for k in options}
    assert app.no_browser and app.port == 7999


def test_generate_without_gamma_says_what_the_checkpoint_recommends(tiny_dir, tmp_path, capsys):
    from musicgen_cfg.cli import main

    args = ["generate", "--model", str(tiny_dir), "--prompt", "sad piano", "--duration", "0.2", "--out"]
    assert main([*args, str(tmp_path / "plain")]) == 0
    assert "pass --guidance-scale 3 for that" in capsys.readouterr().err
    assert main([*args, str(tmp_path / "cfg"), "--guidance-scale", "3"]) == 0
    assert "note:" not in capsys.readouterr().err


def test_an_export_over_the_shard_bound_is_sharded_and_loads_back_everywhere(tiny_dir, tiny_hf, tmp_path):
    from transformers import MusicgenForConditionalGeneration

    model = load_model(str(tiny_dir))
    provenance = {"beta": 0.0, "base_model": str(tiny_dir)}
    out = export_model(model, tmp_path / "sharded", provenance, manifest={}, max_shard_bytes=64 * 1024)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and not (out / "model.safetensors").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert "model_safetensors_sha256" not in manifest
    assert manifest["model_shards_sha256"] == {name: checkpoint_module.file_sha256(out / name)
                                               for name in [*shards, "model.safetensors.index.json"]}
    reference = tiny_hf.state_dict()
    for name, tensor in MusicgenForConditionalGeneration.from_pretrained(out).state_dict().items():
        assert torch.equal(tensor, reference[name]), name
    again = load_model(str(out))
    assert again.weights_sha256() == model.weights_sha256() == manifest["weights_sha256"]
    one = export_model(model, tmp_path / "one", provenance, manifest={})  # the default bound: a tiny model is one file
    assert sorted(p.name for p in one.glob("*.safetensors")) == ["model.safetensors"]
    assert json.loads((one / "manifest.json").read_text())["model_safetensors_sha256"] == checkpoint_module.file_sha256(
        one / "model.safetensors")


def test_saving_writes_from_the_tensors_themselves(tiny_dir, tmp_path, monkeypatch):
    """No copy of the model while it is saved: only the second name of T5's tied embeddings is written from one."""
    model = load_model(str(tiny_dir))
    written = {}
    save_file = checkpoint_module.save_file

    def recording(tensors, filename, metadata=None):
        written.update({name: t.untyped_storage().data_ptr() for name, t in tensors.items()})
        save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint_module, "save_file", recording)
    model.save(tmp_path / "saved")
    held = {**model.lm.state_dict(), **{f"text_encoder.{k}": v for k, v in model.text_encoder.encoder.state_dict().items()},
            **{f"audio_encoder.{k}": v for k, v in model.codec.model.state_dict().items()}}
    assert written.keys() == held.keys()
    copied = [name for name, tensor in held.items() if written[name] != tensor.untyped_storage().data_ptr()]
    assert copied == ["text_encoder.encoder.embed_tokens.weight"]  # tied to text_encoder.shared.weight
    assert load_model(str(tmp_path / "saved")).weights_sha256() == model.weights_sha256()
