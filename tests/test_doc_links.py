"""Every Markdown document the repository cites is in the repository.

Code, configuration, units, the Makefile and the documents themselves name ``.md``
files (``see docs/method.md``, ``[SR](sr.md)``, ``Documentation=file:///opt/...``). A
user's clone has nothing beside it, so each such name must resolve inside the clone:

- a name with a folder (``docs/sr.md``, ``../README.md``) relative to the citing file or
  to the repository root, without leaving the repository;
- an absolute path (a systemd unit's installed copy) by its tail inside the repository;
- a bare name (``MODEL_CARD.md``) beside the citing file, at the root, under ``docs/``,
  or as any file of that name in the repository.

Web addresses, glob patterns and the names of reports the code writes (``GENERATED``)
are not citations.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "venv", "build", "dist", "node_modules", "__pycache__",
             ".pytest_cache", ".ruff_cache", ".mypy_cache", ".ci-cache"}
TEXT_SUFFIXES = {".py", ".md", ".toml", ".cfg", ".ini", ".service", ".conf", ".yaml",
                 ".yml", ".json", ".sh", ".txt", ".example", ".env", ".in", ".html", ".js"}
TEXT_NAMES = {"Makefile", "Dockerfile", "run"}
CITATION = re.compile(r"(?<![\w*{<])((?:[\w.~-]+/|/)*[\w.-]*\w\.md)\b(?![\w/])")
URL = re.compile(r"[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
# reports the code writes into a run's output folder (train/experiments.py,
# benchmarks/real_cv.py): names of outputs, not citations
GENERATED = {"sweep.md", "real_cv.md"}
SELF = Path(__file__).resolve()


def _files(root: Path) -> list[Path]:
    out = []
    for path in root.rglob("*"):
        if any(part in SKIP_DIRS or part.endswith(".egg-info")
               for part in path.relative_to(root).parts[:-1]):
            continue
        if path.is_file() and not path.is_symlink() and (
                path.suffix in TEXT_SUFFIXES or path.name in TEXT_NAMES
                or path.name.startswith("Dockerfile")):
            out.append(path)
    return sorted(out)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def broken_citations(root: Path) -> list[str]:
    """``file:line: name`` for every cited ``.md`` that does not resolve in ``root``."""
    files = _files(root)
    names = {p.name for p in root.rglob("*.md")
             if not any(part in SKIP_DIRS for part in p.relative_to(root).parts)}
    out = []
    for path in files:
        if path.resolve() == SELF:  # its own examples below
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            urls = [m.span() for m in URL.finditer(line) if not
                    m.group(0).startswith("file://")]
            for match in CITATION.finditer(line):
                if any(a <= match.start() < b for a, b in urls):
                    continue
                cited = re.sub(r"^/+", "/", match.group(1))
                if Path(cited).name in GENERATED or _resolves(cited, path, root, names):
                    continue
                entry = f"{path.relative_to(root)}:{lineno}: {cited}"
                if entry not in out:
                    out.append(entry)
    return out


def _resolves(cited: str, citing: Path, root: Path, names: set[str]) -> bool:
    if cited.startswith("/"):  # an installed copy: its tail must be in the repository
        parts = Path(cited).parts[1:]
        return any((root.joinpath(*parts[i:])).is_file() for i in range(len(parts)))
    if "/" not in cited:
        return any((base / cited).is_file() for base in (citing.parent, root, root / "docs")) \
            or cited in names
    for base in (citing.parent, root):
        candidate = base / cited
        if candidate.is_file() and _inside(candidate, root):
            return True
    return False


def test_every_cited_markdown_file_is_in_the_repository():
    found = broken_citations(REPO)
    assert found == [], "citations of documents that are not in the repository:\n" + \
        "\n".join(found)


def test_the_check_finds_what_is_missing(tmp_path):
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "pkg").mkdir()
    (root / "docs" / "method.md").write_text("See [the SR](sr.md) and ../README.md.\n")
    (root / "docs" / "sr.md").write_text("Back to [method](method.md).\n")
    (root / "README.md").write_text("[docs](docs/method.md), https://x.org/NOTES.md\n")
    (root / "pkg" / "a.py").write_text(
        '"""The rule (METHOD.md, "Combining").\n\nSee docs/method.md and DECODE.md."""\n'
        'GLOB = "*/*.md"\n')
    (root / "pkg" / "unit.service").write_text(
        "Documentation=file:///opt/x/docs/admin.md\n")
    (root / "pkg" / "b.py").write_text("# the shared notes: ../shared/DESIGN.md\n")
    found = broken_citations(root)
    assert found == ["pkg/a.py:1: METHOD.md", "pkg/a.py:3: DECODE.md",
                     "pkg/b.py:1: ../shared/DESIGN.md",
                     "pkg/unit.service:1: /opt/x/docs/admin.md"], found
    (root / "docs" / "admin.md").write_text("admin\n")
    (root / "pkg" / "a.py").write_text('"""See docs/method.md."""\n')
    (root / "pkg" / "b.py").write_text("# see ../docs/sr.md\n")
    assert broken_citations(root) == []
