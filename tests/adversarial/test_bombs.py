"""Resource bombs: short programs that ask elaboration for hours or terabytes.

Each is a handful of lines; each must be refused (a resource error, exit code 6, or a located
type/shape error) at the expression that asks too much, within seconds and under a 2 GiB
memory cap, or -- for the ones that are legal but large -- finish within the same bounds.
The limits are in convdsl/lang/limits.py; the work budget is calibrated so that the worst case
takes a few seconds (see MAX_WORK there).
"""
from __future__ import annotations

import pytest

from tests.adversarial.batch import Case, run_cli_batch
from tests.adversarial.harness import assert_no_crash, assert_refused

HEAD = "network n(x: f32[N, 4]) {\n"


def net(*lines: str, head: str = "") -> str:
    return head + HEAD + "".join(f"  {l}\n" for l in lines) + "}\n"


# name -> (program, exit code (0: accepted), the line of the location (None: no location), words)
BOMBS = {
    # values whose size multiplies through aliasing: 10**12 items behind five short lists
    "str-of-aliased-list": (net("a = [1] * 1000", "b = [a] * 1000", "c = [b] * 1000", "d = [c] * 1000",
                                "s = str(d)", "return x"), 6, 4, "list too long"),
    "compare-aliased-lists": (net("a = [1] * 1000", "b = [a] * 1000", "c = [b]", "d = [b]",
                                  "repeat 100000 {", "  t = c == d", "}", "return x"), 6, 7, "too long"),
    "label-of-aliased-list": (net("a = [1] * 1000", "b = [a] * 1000", 'return x | relu as "l{b}"'), 5, 4, None),
    "lists-nested-100-deep": (net("a = 1", "repeat 100 {", "  a = [a]", "}", "return x"), 6, 4, "nested"),
    "zip-of-wide-lists": (net("a = range(1000000)", "z = zip(a, a, a, a, a, a, a, a)", "return x"), 6, 3, None),
    "enumerate-of-a-million": (net("a = range(1000000)", "repeat 100000 {", "  e = enumerate(a)", "}", "return x"),
                               6, 4, None),
    # ops by the million from a six-line program: pipelines of pipelines
    "million-relus": (net("r1 = relu | relu | relu | relu | relu | relu | relu | relu | relu | relu",
                          "r2 = r1 | r1 | r1 | r1 | r1 | r1 | r1 | r1 | r1 | r1",
                          "r3 = r2 | r2 | r2 | r2 | r2 | r2 | r2 | r2 | r2 | r2",
                          "r4 = r3 | r3 | r3 | r3 | r3 | r3 | r3 | r3 | r3 | r3",
                          "r5 = r4 | r4 | r4 | r4 | r4 | r4 | r4 | r4 | r4 | r4",
                          "r6 = r5 | r5 | r5 | r5 | r5 | r5 | r5 | r5 | r5 | r5",
                          "return x | r6"), 6, 6, "ops"),
    "pipeline-doubling": (net("r = relu", "repeat 40 {", "  r = r | r", "}", "return x | r"), 6, 4, None),
    "nodes-past-the-limit": (net("repeat 60000 {", "  x = x | relu", "}", "return x"), 6, 3, "nodes"),
    "block-calls-doubling": ("def f(n) = 1 if n == 0 else f(n - 1) + f(n - 1)\n" + net("y = f(40)", "return x"),
                             6, None, None),
    # shapes that no backend can hold
    "reshape-to-rank-1000000": (net("y = x", "repeat 100 {", "  y = y | reshape([1] * 999999 + [4])", "}",
                                    "return y"), 5, 4, "items"),
    "reshape-to-rank-65": (net("return x | reshape([1] * 63 + [1, 4])"), 5, 2, "rank"),
    "input-of-rank-100": ("network n(x: f32[" + ", ".join(["1"] * 100) + "]) {\n  return x\n}\n", 5, 1, "rank"),
    "dimension-over-2**62": ("network n(x: f32[N, " + str(2**62 + 1) + "]) {\n  return x\n}\n", 6, 1, "2**62"),
    "attribute-over-int32": (net("return x | linear(2 ** 70)"), 5, 2, "int32"),  # its domain, before any shape
    # time: strings, lists and loops inside the step limit
    "string-copied-100000-times": (net('s = "ab"', "repeat 18 {", "  s = s + s", "}", "repeat 100000 {",
                                       '  t = s + "c"', "}", "return x"), 6, 7, "too long"),
    "string-doubled-past-a-million": (net('s = "ab"', "repeat 40 {", "  s = s + s", "}", "return x"), 6, 4,
                                      "string too long"),
    "range-rebuilt-100000-times": (net("repeat 100000 {", "  a = range(1000000)", "}", "return x"), 6, 3,
                                   "too long"),
    "sum-of-a-million-100000-times": (net("a = range(1000000)", "repeat 100000 {", "  t = sum(a)", "}", "return x"),
                                      6, 4, "too long"),
    "label-of-half-a-million-characters": (net('s = "a"', "repeat 19 {", "  s = s + s", "}",
                                               'return x | relu as "{s}"'), 4, 6, "characters"),
    "block-given-100000-arguments": ("block b(c)(x) {\n  return x\n}\n" + net("f = b", "repeat 100000 {",
                                                                              "  f = f(1)", "}", "return x"),
                                     5, 7, "at most 1"),
    "repeat-a-trillion": (net("repeat 10 ** 12 {", "}", "return x"), 6, 2, None),
    "range-of-2**100": (net("a = range(2 ** 100)", "return x"), 6, 2, None),
    "integer-of-10000-bits": (net("a = 2 ** 4000 * 2 ** 4000", "return x"), 6, 2, None),
    # op attributes whose values the op table loops over (found by fuzzing every attribute)
    "heads-hint-over-2**62-divisors": ("network n(x: f32[N, 16, 64]) {\n  return x | mhsa(3, dim=2 ** 62)\n}\n",
                                       5, 2, "heads"),
    "scan-state-of-2**40": ("network n(x: f32[N, 16, 64]) {\n  return x | selective_scan(state=2 ** 40)\n}\n",
                            5, 2, "state"),
    "float-attribute-of-2**4000": (net("return x | leaky_relu(slope=2 ** 4000)"), 5, 2, "float"),
    # legal and large: finishes within the bounds
    "10000-relus-accepted": (net("repeat 10000 {", "  x = x | relu", "}", "return x"), 0, None, None),
}


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    d = tmp_path_factory.mktemp("bombs")
    names = list(BOMBS)
    for name in names:
        (d / f"{name}.cdl").write_text(BOMBS[name][0])
    results = run_cli_batch([Case("check", f"{n}.cdl", timeout=40) for n in names], cwd=d, mem_mb=2048)
    return d, dict(zip(names, results))


@pytest.mark.parametrize("name", list(BOMBS))
def test_bomb_is_refused_in_bounded_time_and_memory(ran, name):
    d, results = ran
    _, code, line, words = BOMBS[name]
    r = results[name]
    if code == 0:
        assert_no_crash(r)
        assert r.returncode == 0, r.output[-2000:]
    else:
        assert_refused(r, exit_code=code, location=None if line is None else f"{name}.cdl:{line}:",
                       mentions=words)
        assert f"{name}.cdl:" in r.stderr, f"{name}: the refusal names no location\n{r.stderr[-1000:]}"
    assert r.seconds < 30, f"{name}: took {r.seconds:.1f} s"
