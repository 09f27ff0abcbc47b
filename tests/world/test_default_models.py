"""The shipped default-world artifacts: they load, match their manifests, generate, and merge."""

import json

import numpy as np
import pytest
import torch

from musicgen_cfg.checkpoint import file_sha256
from musicgen_cfg.model import ASSETS, load_model
from musicgen_cfg.sampler import SamplingConfig

SHIPPED = ["base", "quality", "diversity"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_matches_its_manifest(name):
    manifest = json.loads((ASSETS / name / "manifest.json").read_text())
    assert manifest["model_safetensors_sha256"] == file_sha256(ASSETS / name / "model.safetensors")
    assert manifest["rebuild_command"].startswith("musicgen-cfg ")


def test_dataset_manifest_matches_file():
    manifest = json.loads((ASSETS / "dataset.json").read_text())
    assert manifest["sha256"] == file_sha256(ASSETS / "dataset.npz")


def test_default_model_generates_listenable_audio():
    model = load_model("default")
    out = model.generate(["a joyful Irish jig on the fiddle in D major"] * 2, [0, 1], 3.0, SamplingConfig())
    for g in out:
        assert g.codes.shape[0] == 4 and np.isfinite(g.audio).all() and 0 < np.abs(g.audio).max() <= 1
        assert g.render["instrument"] == "fiddle"
    assert not torch.equal(out[0].codes, out[1].codes)


def test_merging_shipped_quality_and_diversity_at_half_generates(tmp_path):
    from merging.merge import merge_checkpoints

    merged = merge_checkpoints([ASSETS / "quality", ASSETS / "diversity"], tmp_path / "merged", method="lerp", lam=0.5)
    model = load_model(str(merged))
    quality, diversity = load_model("default-quality").lm.state_dict(), load_model("default-diversity").lm.state_dict()
    for name, tensor in model.lm.state_dict().items():
        torch.testing.assert_close(tensor, 0.5 * quality[name] + 0.5 * diversity[name])
    assert json.loads((merged / "config.json").read_text())["musicgen_cfg"]["lambda"] == 0.5
    audio = model.generate(["a Bach chorale for organ in G minor"], [3], 2.0, SamplingConfig())[0].audio
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0
