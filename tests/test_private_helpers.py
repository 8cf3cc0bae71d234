"""A private (underscored) name is its module's own business: no module of the package, its demo launcher or its
benchmarks imports one from another module. What is shared is public, with a docstring, in the module owning it."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sources() -> list[Path]:
    return [path for folder in ("vitlm", "demos", "benchmarks") for path in sorted((REPO / folder).rglob("*.py"))]


def test_no_module_imports_another_modules_private_names():
    imported = [
        f"{path.relative_to(REPO)}:{node.lineno} imports {alias.name} from {'.' * node.level}{node.module or ''}"
        for path in sources()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    ]
    assert sources() and not imported, "\n".join(imported)
