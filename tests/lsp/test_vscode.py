"""editors/vscode: the TextMate grammar is current and agrees with the compiler's lexer on every
example (checked by vscode-tmgrammar-test, from npm), and the extension packages into a .vsix.

The npm tools come from ``npm ci`` in editors/vscode (``.ci/setup`` runs it).  Without Node.js
these tests skip on a developer machine; under CI (``CI`` set) a missing tool is a failure.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXT = ROOT / "editors" / "vscode"
EXAMPLES = sorted((ROOT / "examples").rglob("*.cdl"))


def _tool(name: str) -> Path:
    tool = EXT / "node_modules" / ".bin" / name
    if shutil.which("node") is None or not tool.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed: .ci/setup runs npm ci in editors/vscode")
        pytest.skip(f"needs Node.js and `npm ci` in editors/vscode ({name})")
    return tool


def test_grammar_is_generated_from_the_current_op_table():
    proc = subprocess.run([sys.executable, str(EXT / "scripts" / "tmgrammar.py"), "--check"], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    grammar = json.loads((EXT / "syntaxes" / "cdl.tmLanguage.json").read_text())
    assert r"conv2d" in grammar["repository"]["op"]["match"] and grammar["scopeName"] == "source.cdl"


def test_grammar_on_every_example(tmp_path):
    tool = _tool("vscode-tmgrammar-test")
    subprocess.run([sys.executable, str(EXT / "scripts" / "grammar_cases.py"), str(tmp_path),
                    *map(str, EXAMPLES)], check=True, cwd=ROOT)
    cases = sorted(tmp_path.glob("*.cdl"))
    assert len(cases) == len(EXAMPLES) >= 50
    assertions = sum(1 for c in cases for line in c.read_text().splitlines() if line.startswith(("# <", "#  ", "# ^")))
    assert assertions > 5000
    proc = subprocess.run(["node", str(tool), "-c", "-g", "syntaxes/cdl.tmLanguage.json", "test/cases/*.cdl",
                           f"{tmp_path}/*.cdl"], capture_output=True, text=True, cwd=EXT, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.stdout.count("run successfuly") == len(cases) + len(list((EXT / "test" / "cases").glob("*.cdl")))


def test_grammar_test_catches_a_wrong_scope(tmp_path):
    """The referee works: an op the grammar does not know fails the test."""
    tool = _tool("vscode-tmgrammar-test")
    bad = tmp_path / "bad.cdl"
    bad.write_text('# SYNTAX TEST "source.cdl" "x"\nblock f(c) = conv2d(c) | notanop\n'
                   "#                         ^^^^^^^ support.function.op.cdl\n")
    proc = subprocess.run(["node", str(tool), "-c", "-g", "syntaxes/cdl.tmLanguage.json", str(bad)],
                          capture_output=True, text=True, cwd=EXT, timeout=120)
    assert proc.returncode != 0 and "support.function.op.cdl" in proc.stdout


def test_extension_packages_into_a_vsix(tmp_path):
    tool = _tool("vsce")
    assert subprocess.run(["node", "--check", "extension.js"], cwd=EXT).returncode == 0
    out = tmp_path / "cdl.vsix"
    proc = subprocess.run(["node", str(tool), "package", "--skip-license", "-o", str(out)], capture_output=True,
                          text=True, cwd=EXT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    names = set(zipfile.ZipFile(out).namelist())
    for f in ("extension/package.json", "extension/extension.js", "extension/language-configuration.json",
              "extension/syntaxes/cdl.tmLanguage.json", "extension/node_modules/vscode-languageclient/package.json"):
        assert f in names, f
    assert not any("/scripts/" in n or "vscode-tmgrammar-test" in n or "@vscode/vsce" in n for n in names)
    manifest = json.loads(zipfile.ZipFile(out).read("extension/package.json"))
    assert manifest["contributes"]["languages"][0]["extensions"] == [".cdl"]
    assert manifest["contributes"]["configuration"]["properties"]["cdl.server.command"]["default"] == ["convdsl", "lsp"]
