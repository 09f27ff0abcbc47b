"""The one-way rule of docs/architecture.md between packages, checked on every import statement (also the
lazy ones inside functions): a module imports only from its own package or from a package of a lower layer.

    pytest tests/test_architecture.py

A package is a folder with an __init__.py (musicgen_cfg/ itself holds only the model core's modules); its
layer is the `Layer N` its __init__ docstring declares, so the rule has no table to keep in step here.
"""

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = ("musicgen_cfg", "rl", "merging", "app")
LAYER = re.compile(r"^Layer (\d+)\b", re.MULTILINE)


def packages() -> dict[str, int]:
    """dotted package name -> its declared layer, for every package folder of the top-level packages."""
    found = {}
    for top in TOP_LEVEL:
        for init in sorted((ROOT / top).rglob("__init__.py")):
            name = ".".join(init.parent.relative_to(ROOT).parts)
            match = LAYER.search(ast.get_docstring(ast.parse(init.read_text())) or "")
            assert match, f"{init.relative_to(ROOT)}: its docstring declares no 'Layer N'"
            found[name] = int(match.group(1))
    return found


def package_of(module: str, known: dict[str, int]) -> str | None:
    """The most specific known package that holds `module` (a module's own package, or a package itself)."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in known:
            return ".".join(parts[:end])
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
    return [(line, name) for line, name in found if name.split(".")[0] in TOP_LEVEL]


def violations() -> list[str]:
    known = packages()
    bad = []
    for top in TOP_LEVEL:
        for path in sorted((ROOT / top).rglob("*.py")):
            source = package_of(module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0],
                                known)
            for line, target in imports(path):
                target_package = package_of(target, known)
                if target_package == source:
                    continue
                if target_package is None or known[target_package] >= known[source]:
                    shown = "?" if target_package is None else known[target_package]
                    bad.append(f"{path.relative_to(ROOT)}:{line}: {source} (layer {known[source]}) imports {target} "
                               f"({target_package}, layer {shown})")
    return bad


def test_dependencies_point_one_way():
    assert violations() == []


def test_every_package_declares_its_layer_and_the_core_is_at_the_bottom():
    known = packages()
    assert known["musicgen_cfg"] < min(layer for name, layer in known.items() if name.startswith("musicgen_cfg.")
                                       and name != "musicgen_cfg.codecs")
    assert known["musicgen_cfg.cli"] == max(known.values())  # the command table: nothing imports it


@pytest.mark.parametrize("module, package", [
    ("musicgen_cfg.model", "musicgen_cfg"), ("musicgen_cfg.codecs.encodec", "musicgen_cfg.codecs"),
    ("musicgen_cfg.world.codec", "musicgen_cfg.world"), ("musicgen_cfg.training.distillation", "musicgen_cfg.training"),
    ("musicgen_cfg.experiments.generate", "musicgen_cfg.experiments"), ("rl.reward", "rl"), ("app.ui", "app"),
])
def test_modules_belong_to_their_folders_package(module, package):
    assert package_of(module, packages()) == package


def test_the_check_sees_a_violation(tmp_path, monkeypatch):
    """A core module importing the world, even lazily inside a function, is reported; so is a package without a layer."""
    for folder, layer in (("musicgen_cfg", 1), ("musicgen_cfg/world", 2), ("rl", 3), ("merging", 2), ("app", 6)):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "__init__.py").write_text(f'"""A package.\n\nLayer {layer}: for the test."""\n')
    (tmp_path / "musicgen_cfg" / "model.py").write_text("def f():\n    from musicgen_cfg.world import corpus\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert violations() == ["musicgen_cfg/model.py:2: musicgen_cfg (layer 1) imports musicgen_cfg.world.corpus "
                            "(musicgen_cfg.world, layer 2)"]
    (tmp_path / "rl" / "__init__.py").write_text('"""A package without its layer."""\n')
    with pytest.raises(AssertionError, match="rl/__init__.py: its docstring declares no 'Layer N'"):
        packages()
