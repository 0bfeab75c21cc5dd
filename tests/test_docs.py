"""The documentation points at files that exist: every repository path the README links or quotes
(Markdown links, images, and `docs/...`, `benchmarks/...`, `scripts/...` paths in backticks) is a
file or folder tracked by git, so a fresh clone shows what the README shows."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Folders whose files the README may name in backticks (results/ is the benchmarks' own output
# folder, written by the commands the README gives, and not part of the repository).
QUOTED_ROOTS = ("docs/", "benchmarks/", "scripts/", "examples/", "tests/", "csrc/", "rnnfast/")


def tracked_paths() -> set[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = set(out.split())
    folders = {os.path.dirname(f) for f in files}
    while folders - {""}:
        parents = {os.path.dirname(d) for d in folders} - folders
        if not parents - {""}:
            break
        folders |= parents
    return files | {d + "/" for d in folders if d} | {d for d in folders if d}


def readme_paths(text: str) -> set[str]:
    links = re.findall(r"\]\(([^)#\s]+)", text)  # [text](path) and ![alt](path)
    quoted = re.findall(r"`([A-Za-z0-9_./-]+)`", text)
    paths = {p for p in links if "://" not in p}
    paths |= {q for q in quoted if q.startswith(QUOTED_ROOTS) and ("." in os.path.basename(q) or q.endswith("/"))}
    return {p.removeprefix("./") for p in paths}


def test_every_path_the_readme_names_is_in_git():
    with open(os.path.join(ROOT, "README.md")) as f:
        paths = readme_paths(f.read())
    assert "docs/ARCHITECTURE.md" in paths  # the parser finds links at all
    missing = sorted(p for p in paths if p not in tracked_paths())
    assert not missing, f"README names paths that git does not track: {missing}"


def file_map_paths() -> list[str]:
    """The paths the file map of docs/ARCHITECTURE.md names: the first column of its code block,
    where `dir/a.h, b.cpp` means dir/a.h and dir/b.cpp, and `x.h, .cpp` means x.h and x.cpp."""
    with open(os.path.join(ROOT, "docs", "ARCHITECTURE.md")) as f:
        text = f.read()
    section = text.split("## File map", 1)[1]
    block = section.split("```", 2)[1]
    paths = []
    for line in block.strip().splitlines():
        names = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
        first, *rest = [n.strip() for n in names.split(",")]
        paths.append(first)
        folder, stem = os.path.dirname(first), os.path.splitext(first)[0]
        for name in rest:
            paths.append(stem + name if name.startswith(".") else os.path.join(folder, name))
    return paths


def test_the_file_map_names_existing_files():
    tracked = tracked_paths()
    paths = file_map_paths()
    assert len(paths) > 50
    missing = sorted(p for p in paths if p.rstrip("/") not in tracked and p not in tracked)
    assert not missing, f"docs/ARCHITECTURE.md's file map names paths that git does not track: {missing}"


def test_every_source_file_is_in_the_file_map():
    named = set(file_map_paths())
    folders = tuple(p for p in named if p.endswith("/"))
    sources = [f for f in tracked_paths() if not f.endswith("/") and os.path.isfile(os.path.join(ROOT, f))
               and f.startswith(("csrc/", "rnnfast/", "scripts/", "benchmarks/", "examples/"))
               and not f.startswith(("examples/data/",))]
    unlisted = sorted(f for f in sources if f not in named and not f.startswith(folders))
    assert not unlisted, f"source files missing from docs/ARCHITECTURE.md's file map: {unlisted}"
