"""The layering of docs/ARCHITECTURE.md, read from the code's own imports.

Every `import` / `from ... import` in `advtrain/` (top-level and inside functions) is mapped to the
package it names; a module may only import packages of its own layer or below. A new upward import fails
here with the file and line, which is the point: it is how circles between packages start.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "advtrain"

#: package (the first name under `advtrain`) -> layer, as in docs/ARCHITECTURE.md.
LAYERS: dict[str, int] = {
    "errors": 0,
    "values": 0,
    "resources": 0,
    "compat": 0,
    "utils": 1,
    "attacks": 2,
    "losses": 2,
    "data": 2,
    "models": 2,
    "config": 3,
    "eval": 4,
    "export": 4,
    "report": 4,
    "engine": 5,
    "__init__": 6,
    "cli": 7,
    "__main__": 8,
}

#: Imports inside one layer that the document allows (importer, imported).
ALLOWED_SIDEWAYS = {
    ("models", "data"),
    ("export", "eval"),
    ("report", "eval"),
    *((p, "errors") for p in ("values", "resources", "compat")),
}


def _package_of(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in `path`, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module_parts = ["advtrain", *path.relative_to(ROOT).with_suffix("").parts]
    if module_parts[-1] == "__init__":
        module_parts = module_parts[:-1]
        package_parts = module_parts
    else:
        package_parts = module_parts[:-1]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - (node.level - 1)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            # `from advtrain import eval` names a package through the top-level module.
            if name == "advtrain":
                out += [(node.lineno, f"advtrain.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, name))
    return out


def _target(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "advtrain":
        return None
    if len(parts) == 1:
        return "__init__"
    return (
        parts[1] if parts[1] in LAYERS else "__init__"
    )  # `from advtrain import X` of a public name


def _violations() -> list[str]:
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        src = _package_of(path)
        if src not in LAYERS:
            bad.append(f"{path}: package {src!r} has no layer in docs/ARCHITECTURE.md")
            continue
        for line, name in _imports(path):
            dst = _target(name)
            if dst is None or dst == src:
                continue
            if LAYERS[dst] > LAYERS[src] or (
                LAYERS[dst] == LAYERS[src] and (src, dst) not in ALLOWED_SIDEWAYS
            ):
                # The public top-level module is imported lazily for its version string only.
                if dst == "__init__" and name == "advtrain":
                    continue
                bad.append(
                    f"{path.relative_to(ROOT.parent)}:{line}: {src} (layer {LAYERS[src]}) imports {name}"
                )
    return bad


def test_every_import_goes_down_the_layers_or_sideways_where_documented() -> None:
    assert _violations() == []


def test_the_scan_sees_imports_at_all() -> None:
    """Guard against a scanner that finds nothing: the engine imports eval, the CLI imports the engine."""
    engine = [n for p in (ROOT / "engine").rglob("*.py") for _, n in _imports(p)]
    cli = [n for p in (ROOT / "cli").rglob("*.py") for _, n in _imports(p)]
    assert any(n.startswith("advtrain.eval") for n in engine)
    assert any(n.startswith("advtrain.engine") for n in cli)


@pytest.mark.parametrize(
    "package", ["eval", "export", "report", "models", "data", "attacks", "losses"]
)
def test_no_library_package_imports_the_cli_or_the_engine(package: str) -> None:
    names = [n for p in (ROOT / package).rglob("*.py") for _, n in _imports(p)]
    assert not [n for n in names if n.startswith(("advtrain.cli", "advtrain.engine"))]
