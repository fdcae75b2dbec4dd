"""Failing programs saved as .cdl files, and read back for replay.

A regression file is a CDL file whose header comments say how to replay it:

    # convdsl regression: found by test_passes_preserve_outputs
    # checks: passes
    # seed: 17
    # batch: 2
    # kind: large
    # weights-seed: 3
    # xfail: fold_bn drops the conv bias when ... (reported; not in convdsl.verify)
    # expect-error: must be at most the input size
    # error: after pass fold_bn differs from torch eager ...
    network net(x0: f32[N, 4, 8, 8]) { ... }
    network twin(x0: f32[N, 4, 8, 8]) { ... }      # optional: the equivalent spelling

``checks`` names properties of ``properties.PROPERTIES`` (comma-separated, or
``all``); ``xfail`` marks a known bug outside this package, with the reason;
``expect-error`` says the program must be refused at elaboration with a
``ConvDSLError`` (location and hint) whose message contains the text: a bug
that was fixed by refusing the program stays a regression that way;
``expect-unsupported`` says a property must decline to judge the program
(``Unsupported``) with a reason containing the text: a false alarm fixed by
recognising when no implementation can meet the tolerance.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Optional

from convdsl.verify.properties import Case

_HEADER = re.compile(r"#\s*([a-z-]+):\s*(.*)")
FIELDS = ("checks", "seed", "batch", "kind", "weights-seed", "xfail", "expect-error", "expect-unsupported", "error")


def to_text(case: Case, checks: str, found_by: str = "", error: str = "", xfail: str = "",
            expect_error: str = "") -> str:
    """The regression file for ``case`` (a generated program, optionally with its twin)."""
    head = [f"# convdsl regression: found by {found_by or 'hand'}", f"# checks: {checks}",
            f"# seed: {case.seed}", f"# batch: {case.batch}"]
    if case.kind:
        head.append(f"# kind: {case.kind}")
    head.append(f"# weights-seed: {case.weights_seed}")
    if xfail:
        head.append(f"# xfail: {xfail}")
    if expect_error:
        head.append(f"# expect-error: {expect_error}")
    if error:
        head.append("# error: " + " ".join(error.split())[:400])
    body = _rename(case.text, "net")
    if case.twin:
        body = body.rstrip("\n") + "\n\n" + _network_part(_rename(case.twin, "twin")) + "\n"
    return "\n".join(head) + "\n" + body


def _rename(text: str, name: str) -> str:
    return re.sub(r"^network \w+\(", f"network {name}(", text, count=1, flags=re.M)


def _network_part(text: str) -> str:
    i = text.index("\nnetwork ") + 1 if not text.startswith("network ") else 0
    return text[i:].rstrip("\n")


def save(case: Case, folder: str | Path, checks: str, found_by: str = "", error: str = "", xfail: str = "",
         name: Optional[str] = None, expect_error: str = "") -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = to_text(case, checks, found_by, error, xfail, expect_error)
    if name is None:
        name = f"{found_by or 'found'}_{hashlib.sha1(case.text.encode()).hexdigest()[:8]}"
    path = folder / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.cdl"
    path.write_text(text)
    return path


def header(path: str | Path) -> dict[str, str]:
    """The header fields of a regression file (the first value of each)."""
    meta: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        m = _HEADER.match(line)
        if m and m.group(1) in FIELDS:
            meta.setdefault(m.group(1), m.group(2).strip())
    return meta


def load(path: str | Path) -> tuple[Case, list[str], str]:
    """(case, checks, xfail reason or "") of a regression file."""
    text = Path(path).read_text()
    meta = header(path)
    has_twin = re.search(r"^network twin\(", text, flags=re.M) is not None
    has_net = re.search(r"^network net\(", text, flags=re.M) is not None
    case = Case(text, twin=text if has_twin else None, seed=int(meta.get("seed", 0)),
                batch=int(meta.get("batch", 2)), kind=meta.get("kind") or None,
                weights_seed=int(meta.get("weights-seed", 0)),
                network="net" if has_net and has_twin else None, twin_network="twin" if has_twin else None)
    checks = [c.strip() for c in meta.get("checks", "all").split(",") if c.strip()]
    return case, checks, meta.get("xfail", "")


def check_refused(case: Case, expected: str) -> None:
    """The program of ``case`` is refused at elaboration with a ``ConvDSLError`` whose message
    contains ``expected`` and that points at the source and gives a hint (``# expect-error:``)."""
    from convdsl.errors import ConvDSLError

    from convdsl.verify.properties import PropertyFailed

    try:
        case.graph()
    except ConvDSLError as e:
        if expected not in e.render():
            raise PropertyFailed(f"refused, but not with {expected!r}: {e.render()}") from e
        if e.span is None or not e.hint:
            raise PropertyFailed(f"refused without a source location or a hint: {e.render()}") from e
        return
    raise PropertyFailed(f"the program elaborates; expected a ConvDSLError with {expected!r}")
