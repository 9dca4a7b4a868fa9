"""The package's layers: the method modules a student reads import nothing of the evidence layer
(experiments, the book, figures, tables, reports, comparisons), and no module changes another
module's state: a speed switch is an argument or an attribute, never a module global."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lossless"
METHOD_MODULES = ("models", "augment", "methods", "optim", "engine", "pretrain", "finetune", "pseudo", "active",
                  "ensemble", "filters", "fixmatch", "evaluate", "probes", "features")
EVIDENCE = {"experiments", "book", "viz", "tables", "report", "comparison"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str) -> bool:
    p = PACKAGE.parent.joinpath(*dotted.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def imports(path: Path, name: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``path`` (the module ``name``, by default its
    place in the package), inside functions too: ``from . import x`` names ``lossless.x`` when
    that is a module."""
    here = (name or module_name(path)).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names if is_module(f"{base}.{a.name}")]
    return found


def layer_of(dotted: str) -> str | None:
    parts = dotted.split(".")
    return parts[1] if parts[0] == "lossless" and len(parts) > 1 else None


def method_files() -> list[Path]:
    out = []
    for name in METHOD_MODULES:
        p = PACKAGE / name
        out += sorted(p.glob("*.py")) if p.is_dir() else [p.with_suffix(".py")]
    return out


@pytest.mark.parametrize("path", method_files(), ids=lambda p: module_name(p))
def test_a_method_module_imports_nothing_of_the_evidence_layer(path):
    wrong = [f"line {line}: {name}" for line, name in imports(path) if layer_of(name) in EVIDENCE]
    assert not wrong, f"{module_name(path)} imports the book's layers: {wrong}"


def module_aliases(tree: ast.AST, path: Path, name: str | None = None) -> set[str]:
    """Names that ``path`` binds to a module of the package (``from . import runs``,
    ``import lossless.kernels as k``, ``from .methods import common``)."""
    here = (name or module_name(path)).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(a.asname or a.name.split(".")[0]) for a in node.names if a.name.startswith("lossless")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            if base.startswith("lossless"):
                names |= {a.asname or a.name for a in node.names if is_module(f"{base}.{a.name}")}
    return names


def module_writes(path: Path, name: str | None = None) -> list[str]:
    """Assignments to another module's attribute, ``setattr`` on one, and ``global`` statements."""
    tree = ast.parse(path.read_text())
    aliases = module_aliases(tree, path, name)
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        flat = [t for target in targets for t in (target.elts if isinstance(target, ast.Tuple) else [target])]
        for t in flat:
            root = t
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(t, ast.Attribute) and isinstance(root, ast.Name) and root.id in aliases:
                found.append(f"line {node.lineno}: assigns {ast.unparse(t)}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr" \
                and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id in aliases:
            found.append(f"line {node.lineno}: setattr on {node.args[0].id}")
        if isinstance(node, ast.Global):
            found.append(f"line {node.lineno}: global {', '.join(node.names)}")
    return found


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: module_name(p))
def test_no_module_changes_another_modules_state(path):
    wrong = module_writes(path)
    assert not wrong, f"{module_name(path)} changes module state: {wrong}"


def test_the_checks_see_what_they_guard(tmp_path):
    """The two scanners find the faults they exist for, in a module written for the purpose."""
    bad = tmp_path / "probe.py"
    bad.write_text("from . import kernels\nfrom .methods import common\nfrom .viz import x\n"
                   "def f():\n    global Y\n    from . import tables\n    kernels.GEMM_MAX_PIXELS = 0\n"
                   "    kernels.A, common.SHARE_PASS = 1, False\n    setattr(common, 'B', 2)\n    x.y = 1\n")
    assert {layer_of(n) for _, n in imports(bad, "lossless.probe")} >= {"viz", "tables"}
    assert len(module_writes(bad, "lossless.probe")) == 5, module_writes(bad, "lossless.probe")


def test_the_readme_names_every_module_in_its_layer():
    """The README's layout is the newcomer's map: each module of the package, and each
    experiment, is named in it, and no more than 120 lines hold it."""
    readme = (PACKAGE.parent / "README.md").read_text()
    names = {p.stem for p in PACKAGE.glob("*.py") if not p.stem.startswith("_")} | \
            {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} | \
            {p.stem for p in (PACKAGE / "experiments").glob("*.py") if not p.stem.startswith("_")}
    missing = sorted(n for n in names if f"`{n}`" not in readme)
    assert not missing, f"the README's layout leaves out {missing}"
    assert len(readme.splitlines()) <= 120
