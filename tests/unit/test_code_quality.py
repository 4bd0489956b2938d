"""Style and types are part of the suite, so CI enforces them like behaviour."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "argv",
    [
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
        ["mypy"],
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_tool_is_clean(argv: list[str]) -> None:
    done = subprocess.run(
        [str(BIN / argv[0]), *argv[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr


def module_table() -> str:
    """Each module of the package with the first line of its docstring: its one job."""
    package = ROOT / "flowflexd"
    rows = []
    for path in sorted(package.rglob("*.py")):
        if path.name == "__main__.py":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert doc, f"{path.relative_to(ROOT)} has no docstring saying what it is for"
        where = path.parent if path.name == "__init__.py" else path.with_suffix("")
        name = ".".join(where.relative_to(ROOT).parts)
        rows.append(f"| `{name}` | {doc.splitlines()[0]} |")
    return "\n".join(["| module | its one job |", "| --- | --- |", *rows])


def test_the_readme_names_every_module_with_its_one_job() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("-->\n", readme.index("<!-- modules:")) + len("-->\n")
    end = readme.index("\n<!-- /modules -->")
    assert readme[start:end] == module_table(), (
        "README's module table is out of date; replace it with:\n" + module_table()
    )


@pytest.mark.parametrize("document", ["README.md", "bench/HISTORY.md"])
def test_every_benchmark_result_cited_is_in_the_repository(document: str) -> None:
    """A figure in the README or the bench history must be checkable: its JSON is committed."""
    cited = set(re.findall(r"bench/results/[\w.-]+\.json", (ROOT / document).read_text()))
    tracked = subprocess.run(
        ["git", "ls-files", "bench/results"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()

    assert cited, f"{document} cites no benchmark results: has the Performance section moved?"
    assert sorted(cited - set(tracked)) == []
