"""The documentation stays true to the code: the command line reference is generated from the
parser, every training config key is documented, the README fits on a page, and the package
keeps the why in its comments, docstrings and configs, not run history or measured figures."""
from __future__ import annotations

import ast
import io
import os
import re
import runpy
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SRC = ROOT / "src" / "simmpnet"


def _load_generator() -> SimpleNamespace:
    # run_path compiles the script without writing docs/__pycache__
    return SimpleNamespace(**runpy.run_path(str(DOCS / "gen_cli_reference.py"), run_name="gen_cli_reference"))


def test_cli_reference_is_generated_from_the_parser():
    generator = _load_generator()
    committed = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert committed == generator.render(), (
        "docs/cli.md differs from the parser's help: run `python docs/gen_cli_reference.py` and commit it"
    )


def test_cli_reference_covers_every_command():
    from simmpnet.cli import build_parser

    page = (DOCS / "cli.md").read_text(encoding="utf-8")
    commands = _load_generator()._subcommands(build_parser())
    assert commands, "the parser has no subcommands"
    for name in commands:
        assert f"## `simmpnet {name}`" in page


def _train_config_fields() -> list[str]:
    tree = ast.parse((SRC / "training" / "config.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "TrainConfig":
            return [
                item.target.id
                for item in node.body
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
            ]
    raise AssertionError("TrainConfig not found in training/config.py")


def test_every_training_config_key_is_documented():
    page = (DOCS / "training.md").read_text(encoding="utf-8")
    fields = _train_config_fields()
    assert len(fields) > 30
    missing = [name for name in fields if f"| `{name}` |" not in page]
    assert not missing, f"docs/training.md has no table row for the TrainConfig keys {missing}"


def test_readme_fits_on_a_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; the details belong in docs/"


# ---------------------------------------------------------------------------- history out of the code
#: References to a specification that is not in the repository ("SPEC section N"); the docs
#: pages hold what it said, and the code points to them (e.g. "docs/method.md").
SPEC_REFERENCE = re.compile(r"\bSPEC\b")

#: Figures of runs: measured percentages ("74.8 %", "73.0-74.5 %"), speed-ups of one machine
#: ("3x faster"), dates of runs ("2026-11-26") and measured DSC values ("DSC 74.8").  Integer
#: percentages without a range ("cut 70 / 10 / 20 %") are rules, not measurements, and pass.
RUN_FIGURES = {
    "measured percentage": re.compile(r"\d+\.\d+\s*%"),
    "percentage range": re.compile(r"\d+(?:\.\d+)?\s*[-\u2013]\s*\d+(?:\.\d+)?\s*%"),
    "speed-up": re.compile(r"\b\d+(?:\.\d+)?\s*x\s+(?:faster|slower)\b", re.IGNORECASE),
    "date": re.compile(r"\b20\d\d-[01]\d-[0-3]\d\b"),
    "measured DSC": re.compile(r"\bDSC\s+(?:of\s+)?\d+\.\d+"),
}


def _prose(path: Path) -> list[tuple[int, str]]:
    """(line, text) of the comments and docstrings of a Python file, or of every line of a
    YAML file: the places where prose lives, not the code's strings (format strings, messages)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        return list(enumerate(text.splitlines(), start=1))
    found: list[tuple[int, str]] = []
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT:
            found.append((token.start[0], token.string))
    for node in ast.walk(ast.parse(text)):
        # Docstrings, and bare strings that document an attribute.
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            for offset, line in enumerate(node.value.value.splitlines()):
                found.append((node.lineno + offset, line))
    return found


def _prose_files() -> list[Path]:
    files = sorted(SRC.rglob("*.py")) + sorted(SRC.rglob("*.yaml")) + sorted((ROOT / "configs").glob("*.yaml"))
    return [path for path in files if "__pycache__" not in path.parts]


def test_prose_scanner_reads_comments_docstrings_and_yaml(tmp_path):
    source = tmp_path / "example.py"
    source.write_text(
        '"""Module docstring: 74.8 %."""\n'
        'x = f"{100 * 0.5:.1f}%"  # a comment: 3x faster\n'
        'message = "73.0-74.5 %"\n'
    )
    texts = [text for _, text in _prose(source)]
    assert any("74.8 %" in t for t in texts) and any("3x faster" in t for t in texts)
    assert not any("73.0-74.5" in t for t in texts)  # a code string, not prose
    assert not any(p.search(":.1f}%") for p in RUN_FIGURES.values())
    for sample in ("74.8 %", "73.0-74.5 %", "about 3x faster", "on 2026-11-26", "DSC 74.8"):
        assert any(p.search(sample) for p in RUN_FIGURES.values()), sample
    for sample in ("cut 70 / 10 / 20 % into", "DSC 0, Jaccard 0", "%d steps", "0.5-99.5 percentiles"):
        assert not any(p.search(sample) for p in RUN_FIGURES.values()), sample


@pytest.mark.parametrize("path", _prose_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_spec_sections_or_run_figures(path):
    problems = []
    for line, text in _prose(path):
        if SPEC_REFERENCE.search(text):
            problems.append(f"{line}: cites the SPEC; point to the docs page instead: {text.strip()}")
        for name, pattern in RUN_FIGURES.items():
            if pattern.search(text):
                problems.append(f"{line}: {name} of a run; keep the why, move the figure to docs/: {text.strip()}")
    assert not problems, f"{path.relative_to(ROOT)}:\n" + "\n".join(problems)


def _makefile_docs_command() -> list[str]:
    """The docs build of `make test-all` (what CI runs), with $(PY) this interpreter."""
    recipe = (ROOT / "Makefile").read_text(encoding="utf-8").split("\ntest-all:", 1)[1].split("\n\n", 1)[0]
    line = next(line.strip() for line in recipe.splitlines() if "mkdocs build" in line)
    words = [word for word in line.split() if "=" not in word or word.startswith("-")]
    return [sys.executable if word == "$(PY)" else word for word in words]


@pytest.mark.slow
def test_a_broken_link_fails_the_docs_build(tmp_path):
    """The CI docs build is strict and keeps its warnings visible: a link to a missing page
    fails it, while the same site without that link builds."""
    pytest.importorskip("mkdocs", reason="the docs extra (make test-all installs it)")
    command = _makefile_docs_command()
    assert "--strict" in command and "--quiet" not in command and "-q" not in command
    site = tmp_path / "site"
    shutil.copytree(DOCS, site / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("mkdocs.yml", *(p.name for p in ROOT.glob("*.md"))):  # the root's files are snippets
        shutil.copy(ROOT / name, site / name)
    (site / "src").symlink_to(ROOT / "src")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")

    def build() -> subprocess.CompletedProcess:
        return subprocess.run(
            [*command, "-d", str(tmp_path / "out")], cwd=site, env=env, capture_output=True, text=True,
            encoding="utf-8", errors="replace",
        )

    clean = build()
    assert clean.returncode == 0, clean.stderr[-3000:]
    page = site / "docs" / "getting-started.md"
    page.write_text(page.read_text(encoding="utf-8") + "\nSee [the missing page](no-such-page.md).\n", encoding="utf-8")
    broken = build()
    assert broken.returncode != 0
    assert "no-such-page.md" in broken.stderr + broken.stdout
