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
    forbidden = ("tokentrim_cli.decoder", "tokentrim_cli.profiles", "tokentrim_cli.render", "tokentrim_cli.cli")
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


def test_transformers_internals_stay_in_the_engine_files():
    allowed = {"decoder.py", "cache.py", "scoring.py", "model.py", "generation.py", "metrics.py"}
    for path in modules():
        names = imports(path)
        if any(n.startswith("transformers") for n in names):
            assert path.name in allowed, path
