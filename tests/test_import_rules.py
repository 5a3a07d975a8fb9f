"""What may import what: the table in docs/architecture.md, checked on every module.

The table is parsed from the document (between the ``import-rules`` markers), every
``.py`` file of the package folders is parsed with :mod:`ast` (all ``import`` and
``from ... import`` statements, also those inside functions), and each import of a part
of the package must be allowed for the importing module's part. The checker itself is
tested on a small synthetic tree, so that a broken checker cannot pass silently.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"
STDLIB_ONLY = "stdlib only"
BEGIN, END = "<!-- import-rules: begin -->", "<!-- import-rules: end -->"


@dataclass(frozen=True)
class Rules:
    packages: dict[str, str]  # package name -> part
    allowed: dict[str, set[str]]  # part -> parts it may import (itself included)
    stdlib_only: set[str]  # parts that may import only the standard library

    def part_of(self, module: str) -> str | None:
        best = None
        for package, part in self.packages.items():
            if (module == package or module.startswith(package + ".")) and \
                    (best is None or len(package) > len(best[0])):
                best = (package, part)
        return best[1] if best else None


def parse_rules(text: str) -> Rules:
    """The table between the markers: | part | packages | may import |."""
    try:
        block = text[text.index(BEGIN) + len(BEGIN):text.index(END)]
    except ValueError:
        raise AssertionError("the import-rules table markers are missing") from None
    packages: dict[str, str] = {}
    allowed: dict[str, set[str]] = {}
    stdlib_only: set[str] = set()
    rows = [ln for ln in block.strip().splitlines() if ln.strip().startswith("|")]
    for line in rows[2:]:  # header and separator
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 3, f"bad import-rules row: {line!r}"
        part, pkgs, may = cells
        for pkg in re.findall(r"`([\w.]+)`", pkgs):
            packages[pkg] = part
        if may == STDLIB_ONLY:
            stdlib_only.add(part)
            allowed[part] = {part}
        else:
            allowed[part] = {part} | {p.strip() for p in may.split(",")
                                      if p.strip() not in ("", "-")}
    unknown = {p for deps in allowed.values() for p in deps} - set(allowed)
    assert not unknown, f"import-rules table names unknown parts: {unknown}"
    return Rules(packages, allowed, stdlib_only)


def module_files(root: Path) -> dict[str, Path]:
    """``{module name: file}`` for the package as pyproject's ``package-dir`` maps it."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    package_dir: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    out: dict[str, Path] = {}
    # longer package names first, so that a sub-package's own folder wins
    for package, folder in sorted(package_dir.items(), key=lambda kv: -len(kv[0])):
        base = root / folder
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            out.setdefault(name, path)
    return out


def imports_of(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import statement of a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # ``from mammo_density import worker`` imports a part too
            for alias in node.names:
                found.append((node.lineno, f"{target}.{alias.name}"))
    return found


def violations(root: Path, rules: Rules) -> list[str]:
    """Every import that the rules forbid, as ``file:line: a -> b (part -> part)``."""
    files = module_files(root)
    siblings: dict[Path, set[str]] = {}
    out = []
    for module, path in sorted(files.items()):
        part = rules.part_of(module)
        if part is None:
            continue
        reported: set[int] = set()  # one finding per statement
        for line, target in imports_of(path, module):
            if line in reported:
                continue
            where = f"{path.relative_to(root)}:{line}"
            if part in rules.stdlib_only:
                top = target.split(".")[0]
                folder = siblings.setdefault(
                    path.parent, {p.stem for p in path.parent.glob("*.py")})
                if top in sys.stdlib_module_names or top in ("orthanc", "__future__") \
                        or top in folder:
                    continue
                out.append(f"{where}: {module} -> {target} ({part} may import the "
                           "standard library only)")
                reported.add(line)
                continue
            other = rules.part_of(target)
            if other is None and target.startswith("mammo_density."):
                continue  # ``from mammo_density.x import name``: the module itself counts
            if other is not None and other not in rules.allowed[part]:
                out.append(f"{where}: {module} -> {target} ({part} -> {other})")
                reported.add(line)
    return out


def _repo_rules() -> Rules:
    return parse_rules(DOC.read_text(encoding="utf-8"))


def test_every_module_follows_the_import_rules():
    rules = _repo_rules()
    files = module_files(REPO)
    assert len(files) > 50, "the package folders were not found"
    for part in ("core", "listener", "orthanc", "worker", "train", "commands"):
        assert part in rules.allowed, part
        assert any(rules.part_of(m) == part for m in files), f"no module in {part}"
    found = violations(REPO, rules)
    assert found == [], "forbidden imports:\n" + "\n".join(found)


def _tree(tmp_path: Path) -> Path:
    """A miniature of the repository: the same pyproject package-dir, a module per part."""
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "architecture.md").write_text(DOC.read_text(encoding="utf-8"))
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    dirs = pyproject["tool"]["setuptools"]["package-dir"]
    lines = ["[tool.setuptools]", "package-dir = { " + ", ".join(
        f'"{k}" = "{v}"' for k, v in dirs.items()) + " }"]
    (root / "pyproject.toml").write_text("\n".join(lines) + "\n")
    files = {
        "mammo_density/__init__.py": "",
        "mammo_density/views.py": "import json\n",
        "mammo_density/commands/__init__.py": "",
        "mammo_density/commands/serve.py": "from mammo_density.plugin import state\n"
                                           "from mammo_density.worker import pipeline\n",
        "plugin/__init__.py": "",
        "plugin/state.py": "from mammo_density.views import x\nfrom . import outbox\n",
        "plugin/outbox.py": "",
        "plugin/orthanc/__init__.py": "",
        "plugin/orthanc/script.py": "import json\nimport orthanc\nimport helper\n",
        "plugin/orthanc/helper.py": "from collections import abc\n",
        "worker/__init__.py": "",
        "worker/pipeline.py": "from mammo_density.views import x\n\n\ndef f():\n"
                              "    from mammo_density.worker import sr\n",
        "worker/sr.py": "",
        "train/__init__.py": "",
        "train/metrics.py": "from mammo_density.worker import combine\n",
        "onnx_models/__init__.py": "",
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checker_passes_a_clean_tree(tmp_path):
    root = _tree(tmp_path)
    assert violations(root, _repo_rules()) == []


@pytest.mark.parametrize(("rel", "line", "expected"), [
    # the pipeline reaching back into the listener, even lazily inside a function
    ("worker/pipeline.py", "def g():\n    from mammo_density.plugin.state import StateDB\n",
     "worker -> listener"),
    ("worker/pipeline.py", "import mammo_density.plugin.outbox\n", "worker -> listener"),
    ("worker/pipeline.py", "from mammo_density import plugin\n", "worker -> listener"),
    ("worker/pipeline.py", "from ..plugin import state\n", "worker -> listener"),
    ("mammo_density/views.py", "from mammo_density.worker.sr import x\n", "core -> worker"),
    ("mammo_density/views.py", "from .commands import serve\n", "core -> commands"),
    ("plugin/state.py", "from mammo_density.worker import pipeline\n",
     "listener -> worker"),
    ("plugin/state.py", "from mammo_density.train import metrics\n", "listener -> train"),
    ("train/metrics.py", "from mammo_density.plugin import state\n", "train -> listener"),
    ("worker/sr.py", "from mammo_density.train.metrics import x\n", "worker -> train"),
    ("plugin/orthanc/script.py", "import numpy\n", "standard library only"),
    ("plugin/orthanc/script.py", "from mammo_density.views import x\n",
     "standard library only"),
])
def test_the_checker_catches_a_forbidden_import(tmp_path, rel, line, expected):
    root = _tree(tmp_path)
    path = root / rel
    path.write_text(path.read_text() + line)
    found = violations(root, _repo_rules())
    assert len(found) == 1 and expected in found[0], found
    assert found[0].startswith(rel + ":")


def test_a_rule_change_in_the_document_changes_the_check(tmp_path):
    """The table is the rule: allowing worker -> listener in the document lets the same
    import through; removing train -> worker makes train's import an error."""
    root = _tree(tmp_path)
    (root / "worker" / "sr.py").write_text("from mammo_density.plugin import outbox\n")
    text = DOC.read_text(encoding="utf-8")
    assert len(violations(root, parse_rules(text))) == 1
    looser = text.replace("| worker | `mammo_density.worker` | core |",
                          "| worker | `mammo_density.worker` | core, listener |")
    assert looser != text and violations(root, parse_rules(looser)) == []
    stricter = text.replace("| train | `mammo_density.train` | core, worker |",
                            "| train | `mammo_density.train` | core |")
    assert stricter != text
    assert any("train -> worker" in v for v in violations(root, parse_rules(stricter)))
