"""Bad input never crashes the server.

The front end's fuzz corpus (tests/lang/test_fuzz.py: random text over CDL's
alphabet, token soup, seed programs and examples with token- and line-level
edits) is sent to one ``convdsl lsp`` as document changes.  After every
change the server must publish diagnostics for that version, all of them
located inside the document and none an internal error; hover, inlay hints
and completion must answer on the broken text; and after a burst of changes
that it may coalesce, the last (valid) text must be analysed cleanly.
"""
from __future__ import annotations

import random
import pytest

from tests.lang.test_fuzz import CHARS, EXAMPLES, KEYWORDS, LIB, SEEDS, apply_edits
from tests.lsp.session import Session

N_CASES = 240  # awaited one by one: about 10 s
EDIT_KINDS = ["delete", "duplicate", "swap_any", "swap", "number", "name", "insert", "delete_line",
              "duplicate_line", "swap_lines"]


def corpus(n: int, seed: int = 0):
    """(kind, text) cases drawn like the hypothesis strategies of the front-end fuzz tests."""
    rng = random.Random(seed)

    def edits():
        return [(rng.choice(EDIT_KINDS), rng.randrange(10_000), rng.randrange(10_000), rng.randrange(101))
                for _ in range(rng.randint(1, 3))]

    for i in range(n):
        kind = ("text", "soup", "seed", "example")[i % 4]
        if kind == "text":
            yield kind, "".join(rng.choice(CHARS) for _ in range(rng.randrange(121)))
        elif kind == "soup":
            parts = [rng.choice(KEYWORDS) if rng.random() < 0.7 else
                     "".join(rng.choice(CHARS) for _ in range(rng.randrange(5))) for _ in range(rng.randrange(41))]
            yield kind, " ".join(parts)
        elif kind == "seed":
            yield kind, apply_edits(rng.choice(SEEDS), edits())
        else:
            yield kind, apply_edits(rng.choice(EXAMPLES).read_text(), edits())


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    d = tmp_path_factory.mktemp("lspfuzz")
    (d / "lib.cdl").write_text(LIB)  # the seeds import "lib.cdl"
    s = Session(d)
    yield d, s
    s.close()


def _check(session: Session, uri: str, text: str, version: int) -> set[str]:
    diags = session.diagnostics(uri, version)
    n_lines = text.count("\n") + 1
    for d in diags:
        assert d.source == "convdsl" and d.code != "internal error", (d.message, text)
        assert 0 <= d.range.start.line < n_lines and d.range.start <= d.range.end, (d, text)
        assert d.message
    return {d.code for d in diags} or {"clean"}


def test_fuzz_corpus_as_document_changes(workspace):
    d, session = workspace
    uri = session.open(d / "fuzz.cdl", SEEDS[0])
    # the examples import blocks/...: their edits are buffers of a file in examples/ (never written)
    ex_uri = session.open(EXAMPLES[0], EXAMPLES[0].read_text())
    rng = random.Random(1)
    seen: set[str] = set()
    for n, (kind, text) in enumerate(corpus(N_CASES)):
        target = ex_uri if kind == "example" else uri
        v = session.change(target, text)
        seen |= _check(session, target, text, v)
        if n % 6 == 0:  # requests on broken text still get answers
            lines = text.split("\n")
            line = rng.randrange(len(lines))
            col = rng.randrange(len(lines[line]) + 1)
            session.hover(target, line, col)
            session.completion(target, line, col)
            session.hints(target)
    # a burst the server may coalesce, ending on a valid program
    for kind, text in corpus(40, seed=2):
        session.change(uri, text)
    v = session.change(uri, SEEDS[2])
    assert session.diagnostics(uri, v) == []
    assert session.hints(uri)  # shapes are back
    assert not [m for m in session.messages if "Traceback" in m or "internal error" in m]
    # the corpus reached the parser, the elaborator and the op table, and some edits left valid programs
    assert {"syntax error", "name error", "clean"} <= seen and seen & {"type error", "shape error"}, seen
