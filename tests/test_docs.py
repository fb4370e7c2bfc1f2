"""The user documentation builds without warnings, and every command it shows parses."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from mlsim.cli import build_parser

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _commands() -> list[tuple[str, str]]:
    """(page, command) for every `mlsim ...` line in a bash block of the docs and the README."""
    out = []
    pages = [*sorted(DOCS.glob("*.md")), DOCS.parent / "README.md"]
    for page in pages:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
            for line in block.splitlines():
                line = line.split("  #")[0].strip()
                line = re.sub(r"^\.venv/bin/", "", line)
                if line.startswith("mlsim "):
                    out.append((page.name, line))
    return out


def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    res = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         str(DOCS), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-4000:]
    html = (tmp_path / "html" / "_generated" / "config_train.html").read_text()
    # The generated reference lists keys straight from the schema.
    assert "early_stopping_patience" in html and "init_model" in html


def test_every_documented_command_parses():
    cmds = _commands()
    assert len(cmds) >= 10
    parser = build_parser()
    for page, cmd in cmds:
        args = shlex.split(cmd)[1:]
        if args in (["--help"], ["--version"]):
            continue  # these exit 0 by design
        try:
            parser.parse_args(args)
        except SystemExit as exc:
            pytest.fail(f"{page}: `{cmd}` does not parse (exit {exc.code})")
