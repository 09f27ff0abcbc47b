"""The one-way dependency rule of docs/architecture.md, checked on every import statement (also the lazy
ones inside functions): a module imports only from its own part or from parts of a lower layer.

    pytest tests/test_architecture.py
"""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("musicgen_cfg", "rl", "merging", "app")
# Most specific prefix first. Layer 0 is the model core: everything in musicgen_cfg/ not named below. Parts of
# one layer import none of each other: the world trains its scorer with the core's optim.py, not training/.
PARTS = (
    ("musicgen_cfg.cli", "cli", 6),
    ("app", "app", 5),
    ("musicgen_cfg.experiments", "experiments", 4),
    ("musicgen_cfg.distillation", "distillation", 3),
    ("musicgen_cfg.training.pretrain", "pretraining", 2),
    ("rl", "rl", 2),
    ("musicgen_cfg.world", "world", 1),
    ("musicgen_cfg.training", "training", 1),
    ("merging", "merging", 1),
    ("musicgen_cfg", "core", 0),
)


def part_of(module: str) -> tuple[str, int] | None:
    for prefix, name, layer in PARTS:
        if module == prefix or module.startswith(prefix + "."):
            return name, layer
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every project import in `path`, relative imports resolved."""
    found = []
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from musicgen_cfg.world import corpus` imports musicgen_cfg.world.corpus
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] in PACKAGES]


def violations() -> list[str]:
    bad = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name, layer = part_of(module_name(path))
            for line, target in imports(path):
                target_part = part_of(target)
                if target_part is None or target_part[0] == name:
                    continue
                if target_part[1] >= layer:
                    bad.append(f"{path.relative_to(ROOT)}:{line}: {name} (layer {layer}) imports {target} "
                               f"({target_part[0]}, layer {target_part[1]})")
    return bad


def test_dependencies_point_one_way():
    assert violations() == []


@pytest.mark.parametrize("module, part", [
    ("musicgen_cfg.model", "core"), ("musicgen_cfg.codecs.encodec", "core"), ("musicgen_cfg.world.codec", "world"),
    ("musicgen_cfg.training.run", "training"), ("musicgen_cfg.experiments.generate", "experiments"),
    ("rl.reward", "rl"), ("app.ui", "app"),
])
def test_parts_are_named_as_in_the_docs(module, part):
    assert part_of(module)[0] == part


def test_the_check_sees_a_violation(tmp_path, monkeypatch):
    """A core module importing the world, even lazily inside a function, is reported."""
    core = tmp_path / "musicgen_cfg"
    core.mkdir()
    (core / "model.py").write_text("def f():\n    from musicgen_cfg.world import corpus\n")
    for package in PACKAGES[1:]:
        (tmp_path / package).mkdir()
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert violations() == ["musicgen_cfg/model.py:2: core (layer 0) imports musicgen_cfg.world.corpus (world, layer 1)"]
