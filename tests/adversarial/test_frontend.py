"""Hostile sources for the front end: files that are not files, bytes that are not UTF-8, imports
of things that are not CDL, nesting without brackets, arithmetic that does not fit a float,
terminal escapes and lines of megabytes.

Every case is a real command line (check, compile, stats, fmt, print, graph), run with the
others in one fresh process under a memory cap (tests/adversarial/batch.py), and must end in
its documented exit code with a located, caret-marked error where the input has a location,
no traceback, within its time limit, with output of bounded size, and without changing a file.
"""
from __future__ import annotations

import os
import re

import pytest

from tests.adversarial.batch import Case, run_cli_batch
from tests.adversarial.harness import assert_no_crash, assert_only_changed, assert_refused, tree_state

NET = "network n(x: f32[N, 3, 8, 8]) {{\n{}\n}}\n"
HEAD = "network n(x: f32[N, 3, 8, 8]) {\n"


def body(*lines: str) -> str:
    return NET.format("\n".join(lines))


class Spec:
    """What one case must end in: exit code, a location (file, line, col) with a caret or none,
    strings that must not appear in the output, a bound on the output's size."""

    def __init__(self, case: Case, code: int | set[int], where: tuple[str, int, int] | None = None,
                 absent: tuple[str, ...] = (), mentions: str | None = None, max_output: int = 20_000) -> None:
        self.case, self.code, self.where = case, code, where
        self.absent, self.mentions, self.max_output = absent, mentions, max_output


def corpus(d) -> dict[str, Spec]:
    """Write the hostile files into ``d`` and say what each command must do with them."""
    specs: dict[str, Spec] = {}

    def write(name: str, data: str | bytes) -> str:
        p = d / name
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        return str(p)

    def add(name: str, case: Case, code, where=None, **kw) -> None:
        specs[name] = Spec(case, code, where, **kw)

    ok = write("ok.cdl", body("  return x | relu"))
    lib = write("lib.cdl", "block cb(c) = conv2d(c, 3, pad=1) | relu\n")

    # ---- the main file is not a regular, bounded file ----------------------------------------
    (d / "dir.cdl").mkdir()
    add("main-directory", Case("check", d / "dir.cdl"), 2, mentions="a directory")
    os.mkfifo(d / "fifo.cdl")
    add("main-fifo", Case("check", d / "fifo.cdl", timeout=10), 2, mentions="not a regular file")
    add("main-dev-zero", Case("check", "/dev/zero", timeout=10), 2, mentions="not a regular file")
    with open(d / "sparse.cdl", "wb") as f:  # 2 GB of zeros that take no disk: refused from stat
        f.truncate(2 * 1024**3)
    add("main-sparse-2GB", Case("check", d / "sparse.cdl", timeout=10), 2, mentions="larger than 4 MiB")
    add("main-over-4MiB", Case("fmt", write("big.cdl", "# " + "x" * (4 * 1024 * 1024) + "\n")), 2,
        mentions="larger than 4 MiB")
    os.symlink("loop_b.cdl", d / "loop_a.cdl")
    os.symlink("loop_a.cdl", d / "loop_b.cdl")
    add("main-symlink-loop", Case("stats", d / "loop_a.cdl"), 2, mentions="symbolic links")
    add("main-missing", Case("print", d / "missing.cdl"), 2, mentions="cannot read")

    # ---- not UTF-8: every command, at the line:column of the first bad byte ---------------------
    latin = write("latin1.cdl", (HEAD + "  # café au lait\n  return x\n}\n").encode("latin-1"))
    where = (latin, 2, 8)
    for cmd in ("check", "compile", "stats", "fmt", "print", "graph"):
        extra = ("-o", d / "out_latin") if cmd == "compile" else ()
        add(f"not-utf8-{cmd}", Case(cmd, latin, *extra), 3, where, mentions="0xE9")
    overlong = write("overlong.cdl", HEAD.encode() + b"  y = \"\xc0\xaf\"\n  return x\n}\n")
    add("not-utf8-overlong-slash", Case("check", overlong), 3, (overlong, 2, 8))
    surrogate = write("surrogate.cdl", HEAD.encode() + b"  return x | \xed\xa0\x80relu\n}\n")
    add("not-utf8-surrogate", Case("check", surrogate), 3, (surrogate, 2, 14))
    truncated = write("truncated.cdl", HEAD.encode() + b"  return x\n}\n# \xe2\x82")
    add("not-utf8-truncated-at-end", Case("fmt", truncated), 3, (truncated, 4, 3))
    utf16 = write("utf16.cdl", body("  return x").encode("utf-16"))
    add("utf16-file", Case("check", utf16), 3, (utf16, 1, 1))

    # accepted: a byte-order mark and CRLF line ends
    add("bom-is-accepted", Case("check", write("bom.cdl", b"\xef\xbb\xbf" + body("  return x").encode())), 0)
    add("crlf-is-accepted", Case("check", write("crlf.cdl", body("  return x | relu").replace("\n", "\r\n"))), 0)
    lone_cr = write("cr.cdl", HEAD + "  y = x\r  return y\n}\n")
    add("lone-carriage-return", Case("check", lone_cr), 3, (lone_cr, 2, 8))

    # ---- imports of things that are not CDL files -------------------------------------------------
    def importer(name: str, target: str) -> str:
        return write(name, f'import "{target}"\n' + body("  return x"))

    for name, target, code, words in [
        ("dir", str(d), 4, "a directory"),
        ("fifo", "fifo.cdl", 4, "not a regular file"),
        ("dev-zero", "/dev/zero", 4, "not a regular file"),
        ("dev-urandom", "/dev/urandom", 4, "not a regular file"),
        ("symlink-loop", "loop_a.cdl", 4, "symbolic links"),
        ("sparse-2GB", "sparse.cdl", 4, "larger than 4 MiB"),
        ("missing", "nope.cdl", 4, "cannot import"),
    ]:
        f = importer(f"imp_{name}.cdl", target)
        add(f"import-{name}", Case("check", f, timeout=10), code, (f, 1, 1), mentions=words)
    nul = write("imp_nul.cdl", 'import "lib\x00.cdl"\n' + body("  return x"))
    add("import-nul-byte", Case("check", nul), 4, (nul, 1, 1), mentions="NUL")
    imp_latin = importer("imp_latin1.cdl", "latin1.cdl")
    add("import-not-utf8", Case("check", imp_latin), 4, (imp_latin, 1, 1), mentions="latin1.cdl:2:8")

    # files that are not CDL: an error names where, never what the file holds
    secret = write("secret.txt", "password = hunter2\napi-key: AKIAEXAMPLESECRET\n")
    imp_secret = importer("imp_secret.cdl", "secret.txt")
    add("import-secret-not-echoed", Case("check", imp_secret), 3, (imp_secret, 1, 1),
        absent=("hunter2", "AKIAEXAMPLESECRET", "api-key"))
    if os.path.exists("/etc/passwd"):
        f = importer("imp_passwd.cdl", "/etc/passwd")
        add("import-etc-passwd-not-echoed", Case("check", f), 3, (f, 1, 1), absent=("root:", "/bin/"))
    if os.path.exists("/proc/self/environ"):
        f = importer("imp_environ.cdl", "/proc/self/environ")
        add("import-proc-environ-not-echoed", Case("check", f), 3, (f, 1, 1), absent=("PATH=", "HOME="))
    if os.path.exists("/proc/cpuinfo"):
        f = importer("imp_cpuinfo.cdl", "/proc/cpuinfo")
        add("import-proc-cpuinfo-not-echoed", Case("check", f), 3, (f, 1, 1), absent=("processor", "vendor_id"))
    # a file named *.cdl is a CDL source: its errors show its lines, as the main file's do
    typo_lib = write("typo_lib.cdl", "block cb(c) = conv2d(c 3) | relu\n")
    uses_typo = write("uses_typo_lib.cdl", 'import "typo_lib.cdl"\n' + body("  return x | cb(4)"))
    add("import-cdl-syntax-error-shows-its-line", Case("check", uses_typo), 3, (typo_lib, 1, 24), mentions="conv2d(c 3)")
    # ... and so does any other file once it has parsed as CDL
    bad_lib = write("bad_lib.txt", "block cb(c) = conv2d(c, 3) | rleu\n")
    uses_bad = write("uses_bad_lib.cdl", 'import "bad_lib.txt"\n' + body("  return x | cb(4)"))
    add("import-parsed-file-error-shows-its-line", Case("check", uses_bad), 4, (bad_lib, 1, 30),
        mentions="conv2d(c, 3) | rleu")

    # imports nested 70 files deep, and 5,000 imports of one file
    for i in range(70):
        write(f"chain{i}.cdl", f'import "chain{i + 1}.cdl"\n' if i < 69 else "X = 1\n")
    chain_main = write("chain_main.cdl", 'import "chain0.cdl"\n' + body("  return x"))
    add("imports-70-files-deep", Case("check", chain_main), 6, mentions="imports nested more than 64")
    many = write("many_imports.cdl", 'import "lib.cdl"\n' * 5_000 + body("  return x | cb(3)"))
    add("5000-imports-of-one-file", Case("check", many, timeout=30), 0)

    # ---- nesting without brackets: refused at the deep expression, never at 1:1 -------------------
    for name, expr in [("minus", "- " * 400 + "1"), ("not", "not " * 400 + "true"), ("pow", "2 ** " * 400 + "1"),
                       ("ifexp", "1 if true else " * 400 + "1")]:
        text = body(f"  y = {expr}", "  return x")
        f = write(f"deep_{name}.cdl", text)
        add(f"nested-{name}", Case("check", f), 6, mentions="nested more than")
    deep_for = write("deep_for.cdl", body(*["  for i in [1] {"] * 300 + ["  }"] * 300 + ["  return x"]))
    add("nested-for", Case("fmt", deep_for), 6, mentions="nested more than")
    rec = write("deep_rec.cdl", "def f(n) = 0 if n == 0 else " + "- " * 150 + "f(n - 1)\n" + body("  y = f(60)", "  return x"))
    add("recursion-inside-deep-expressions", Case("check", rec), 6, (rec, 1, None), mentions="nested more than")

    # ---- tensor-scalar arithmetic: the whole operator x number matrix ----------------------------
    # column 10: the whole expression ("  return " is 9 wide); 14: the number right of the operator
    for expr, column in [
        ("x / 0", 14), ("x / 0.0", 14), ("x * 10 ** 1000", 14), ("10 ** 1000 * x", 10), ("x + 10 ** 400", 14),
        ("x - 1e308 * 10", 14), ("1e308 * 10 - x", 10), ("x / 1e-320", 14), ("2 / x", 10), ("x // 2", 10),
        ("x % 2", 10), ("x ** 2", 10), ("x * true", 10), ("x + none", 10), ('x + "s"', 10), ("x * [2]", 10),
        ("x @ 2", 10), ("x * relu", 10),
    ]:
        f = write(f"arith_{len(specs)}.cdl", body(f"  return {expr}"))
        add(f"tensor-scalar {expr}", Case("check", f), 5, (f, 2, column))

    # ---- numbers that do not print: messages stay short ----------------------------------------------
    huge = write("huge_conv.cdl", body("  return x | conv2d(10 ** 200, 3)"))
    add("huge-int-in-message", Case("check", huge), 5, (huge, 2, 14), max_output=3000)  # out's domain
    flat = write("huge_flatten.cdl", "network n(x: f32[2, 3, 4, 5]) {\n  y = x | reshape([2 ** 62, 2 ** 62, 2, 30])\n"
                 "  return y\n}\n")
    add("dims-over-2**62", Case("check", flat), {5, 6}, (flat, 2, 11), max_output=3000)

    # ---- what the terminal sees ------------------------------------------------------------------------
    esc = write("escape.cdl", body("  return x | \x1b]0;pwned\x07\x1b[2Jrelu"))
    add("terminal-escapes-made-visible", Case("check", esc), 3, (esc, 2, 14), absent=("\x1b", "\x07"))
    bidi = write("bidi.cdl", body('  return x | relu as "a\u202eb"'))
    add("bidi-override-made-visible", Case("check", bidi), 4, (bidi, 2, 22), absent=("\u202e",))
    long_line = write("long_line.cdl", HEAD + '  y = "' + "a" * 600_000 + '" x\n  return x\n}\n')
    add("600-kB-line-shown-as-a-window", Case("check", long_line), 3, (long_line, 2, 600_010), max_output=3000)
    tokens = write("tokens.cdl", HEAD + "  y = [" + "1, " * 60_000 + "1]\n  return x\n}\n")
    add("120,000-tokens", Case("check", tokens, timeout=60), 6, (tokens, 2, None), mentions="100,000 tokens")
    cyr = write("confusable.cdl", body("  return x | r\u0435lu"))  # Cyrillic 'е'
    add("unicode-confusable-name", Case("check", cyr), 3, (cyr, 2, 15))
    label_nl = write("label_nl.cdl", body('  return x | relu as "conv1\\n"'))
    add("label-ending-in-newline", Case("check", label_nl), 4, (label_nl, 2, 22))
    label_nul = write("label_nul.cdl", body('  return x | relu as "a\x00b"'))
    add("label-with-nul", Case("check", label_nul), 4, (label_nul, 2, 22))
    add("control-file-ok", Case("check", ok), 0)
    return specs


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    d = tmp_path_factory.mktemp("frontend")
    specs = corpus(d)
    names = list(specs)
    before = tree_state(d)
    results = run_cli_batch([specs[n].case for n in names], cwd=d, mem_mb=2048)
    after = tree_state(d)
    return specs, dict(zip(names, results)), before, after


def _names():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as t:  # the corpus' names, to parametrize over
        return list(corpus(Path(t)))


@pytest.mark.parametrize("name", _names())
def test_hostile_source(ran, name):
    specs, results, _, _ = ran
    spec, r = specs[name], results[name]
    if spec.code == 0:
        assert_no_crash(r)
        assert r.returncode == 0, f"{name}: refused\n{r.output[-2000:]}"
    else:
        location = None
        if spec.where:
            file, line, column = spec.where
            location = f"{file}:{line}:" + ("" if column is None else str(column))
        assert_refused(r, exit_code=spec.code, location=location, mentions=spec.mentions)
    for word in spec.absent:
        assert word not in r.output, f"{name}: {word!r} reached the output:\n{r.output[-2000:]}"
    assert len(r.output) <= spec.max_output, f"{name}: {len(r.output):,} characters of output"


def test_no_file_changed(ran):
    _, _, before, after = ran
    assert_only_changed(before, after)  # a refused compile writes nothing either


def test_terminal_escapes_are_replaced_one_for_one(ran):
    """The caret stays under the bad character: each control character becomes one visible one."""
    specs, results, _, _ = ran
    err = results["terminal-escapes-made-visible"].stderr
    lines = err.splitlines()
    src = next(i for i, l in enumerate(lines) if l.lstrip().startswith("2 |"))
    caret = lines[src + 1].index("^")
    assert lines[src][caret] == "\u241b"  # the ESC character, drawn as a symbol
    assert re.search(r"unexpected character '\\x1b'", err)
