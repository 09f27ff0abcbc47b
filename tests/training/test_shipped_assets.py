"""Nothing a user runs overwrites a shipped artifact (musicgen_cfg/assets/): the README's training commands
export under their run (RUN/final), an --out / --export into the assets is refused unless --rebuild-shipped
true says so (make assets, make gpu-recipe), and a short real run leaves every shipped file as it was.

    python -m pytest -q tests/training/test_shipped_assets.py
"""

import hashlib
from pathlib import Path

import pytest

from musicgen_cfg.cli import main
from musicgen_cfg.config import SHIPPED_ASSETS, load_config
from musicgen_cfg.errors import UserError
from musicgen_cfg.training.distillation import DistillConfig
from musicgen_cfg.training.pretrain import PretrainConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = [(DistillConfig, "configs/quality.yaml"), (DistillConfig, "configs/diversity.yaml"),
           (PretrainConfig, "configs/default_base.yaml"), (DistillConfig, "configs/gpu/quality.yaml"),
           (DistillConfig, "configs/gpu/diversity.yaml"), (PretrainConfig, "configs/gpu/base.yaml")]


def assets_digest() -> dict[str, str]:
    return {str(p.relative_to(SHIPPED_ASSETS)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(SHIPPED_ASSETS.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("cls, path", CONFIGS, ids=[p for _, p in CONFIGS])
def test_shipped_configs_export_under_their_run_and_refuse_the_assets_unless_rebuilding(cls, path):
    config = load_config(cls, ROOT / path)
    assert config.export is None and not config.rebuild_shipped  # -> OUT/final
    target = str(SHIPPED_ASSETS / "default" / "quality")
    for key in ("export", "out"):
        with pytest.raises(UserError, match=f"{key} .* is inside the shipped assets"):
            load_config(cls, ROOT / path, [f"--{key}", target])
    assert load_config(cls, ROOT / path, ["--export", target, "--rebuild-shipped", "true"]).export == target


@pytest.mark.slow  # a train step on the shipped base and a pretrain step
def test_readme_training_commands_leave_the_shipped_assets_unchanged(tmp_path, capsys):
    """The README's `train --config configs/quality.yaml` and `pretrain --config configs/default_base.yaml`,
    cut to one tiny step, write their model under --out and not a byte of the assets."""
    before = assets_digest()
    tiny = ["--steps", "1", "--checkpoint-every", "1", "--eval-every", "1", "--threads", "1", "--device", "cpu"]
    train = ["train", "--config", str(ROOT / "configs/quality.yaml"), "--out", str(tmp_path / "q"), *tiny,
             "--prompts-per-step", "1", "--generations", "2", "--num-frames", "8", "--heldout-prompts", "1",
             "--tensorboard", "false"]
    pretrain = ["pretrain", "--config", str(ROOT / "configs/default_base.yaml"), "--out", str(tmp_path / "b"), *tiny,
                "--batch-size", "2", "--eval-segments", "2"]
    for argv, run in ((train, "q"), (pretrain, "b")):
        assert main(argv) == 0, capsys.readouterr().err
        assert (tmp_path / run / "final" / "model.safetensors").is_file()
    assert assets_digest() == before


def test_the_scorer_trains_outside_the_shipped_assets_unless_rebuilding(tmp_path, monkeypatch):
    from musicgen_cfg import cli

    monkeypatch.chdir(tmp_path)
    assert cli.parse(["judges", "train-scorer"])[1].out == Path("runs/scorer")  # the default: not the shipped one
    shipped = str(SHIPPED_ASSETS / "default" / "scorer")
    with pytest.raises(UserError, match="--out .* is inside the shipped assets"):
        cli.parse(["judges", "train-scorer", "--out", shipped])
    assert str(cli.parse(["judges", "train-scorer", "--out", shipped, "--rebuild-shipped"])[1].out) == shipped


def test_corpus_build_writes_the_shipped_dataset_only_when_told():
    from musicgen_cfg import cli
    from musicgen_cfg.world.corpus_build import rebuild_command

    with pytest.raises(UserError, match="inside the shipped assets"):
        cli.parse(["corpus", "build"])  # its default --out is the shipped dataset
    config = cli.parse(["corpus", "build", "--rebuild-shipped"])[1]
    assert rebuild_command(config) == "musicgen-cfg corpus build --rebuild-shipped"  # what the GPU recipe checks


def test_all_shipped_binaries_together_stay_within_80_mb():
    """The design card's budget: every file the package ships (models, embedders, scorer, dataset) <= 80 MB."""
    assert sum(p.stat().st_size for p in SHIPPED_ASSETS.rglob("*") if p.is_file()) <= 80_000_000
