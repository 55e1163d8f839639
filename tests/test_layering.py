"""The import rules of style.md §2.3, read from the source with ast."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tokentrim_cli"


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # resolve relative imports against the file's package
                parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)[: -node.level]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def modules(folder: str = "") -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py"))


def test_only_cli_imports_typer_and_only_cli_or_render_import_rich():
    for path in modules():
        names = imports(path)
        in_cli = "cli" in path.relative_to(PACKAGE).parts or path.name == "__main__.py"
        if not in_cli:
            assert not any(n == "typer" or n.startswith("typer.") for n in names), path
            assert not any(n.startswith("tokentrim_cli.cli") for n in names), path
        if not in_cli and path.name != "render.py":
            assert not any(n == "rich" or n.startswith("rich.") for n in names), path


def test_methods_see_only_the_contract():
    forbidden = ("tokentrim_cli.engine", "tokentrim_cli.profiles", "tokentrim_cli.render", "tokentrim_cli.cli", "transformers")
    for path in modules("methods"):
        assert not any(n.startswith(forbidden) for n in imports(path)), path


def test_library_never_prints_or_exits():
    for path in modules():
        if "cli" in path.relative_to(PACKAGE).parts or path.name == "__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("print", "exit", "quit"), f"{path}:{node.lineno}"
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                assert (node.value.id, node.attr) != ("sys", "exit"), f"{path}:{node.lineno}"


# Files that may touch transformers' internals: the engine package, and the two that build models.
ENGINE = {"engine"}
BUILDERS = {"model.py", "assembly.py"}
# Attributes that belong to transformers' model and cache classes: reading them outside the engine
# ties that code to one transformers version (engine.md "transformers symbols this relies on").
INTERNALS = {
    "language_model", "vision_tower", "multi_modal_projector", "self_attn", "q_proj", "k_proj", "v_proj",
    "o_proj", "input_layernorm", "rotary_emb", "embed_tokens", "layer_norm1", "norm1", "pre_layrnorm", "encoder",
    "get_image_features", "_attn_implementation", "layers", "lm_head", "image_newline",
}  # fmt: skip
PUBLIC_TRANSFORMERS = {"transformers"}  # `from transformers import X`: the documented top-level API


def _outside_engine(path: Path) -> bool:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] not in ENGINE and path.name not in BUILDERS


def test_transformers_internals_stay_in_the_engine():
    """Outside engine/, model.py and assembly.py: no transformers submodule imports, and no attribute
    access into a model's or a cache's internals (a method reading `tower.encoder.layers` fails here)."""
    offenders = []
    for path in modules():
        if not _outside_engine(path):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in INTERNALS:
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("transformers"):
                if node.module not in PUBLIC_TRANSFORMERS:
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} from {node.module}")
            if isinstance(node, ast.Import) and any(a.name.startswith("transformers.") for a in node.names):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} import {node.names[0].name}")
    assert offenders == []


def test_the_layering_test_catches_an_attribute_reach(tmp_path, monkeypatch):
    """The rule above is not vacuous: a method that runs the tower itself is caught."""
    sneaky = "def on_vision(self, vision):\n    return vision.model.vision_tower.encoder.layers[0]\n"
    found = [n.attr for n in ast.walk(ast.parse(sneaky)) if isinstance(n, ast.Attribute) and n.attr in INTERNALS]
    assert found == ["layers", "encoder", "vision_tower"]


def test_one_generation_path():
    """generate() of transformers is called in one place (generation.run), and only the engine and
    generation.py build a Trimmer."""
    callers, builders = [], []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "generate" and isinstance(node.ctx, ast.Load):
                if isinstance(getattr(node, "value", None), ast.Name) and node.value.id == "model":
                    callers.append(path.name)
            if isinstance(node, ast.Name) and node.id == "Trimmer" and isinstance(node.ctx, ast.Load):
                builders.append(str(path.relative_to(PACKAGE)))
    assert set(callers) == {"generation.py"}
    assert set(builders) <= {"generation.py", "__init__.py", "engine/trimmer.py", "engine/__init__.py"}
