"""docs/ops.md, generated from the op table so it cannot drift.

    convdsl ops --markdown > docs/ops.md     (a test checks the file is current)
"""
from __future__ import annotations

import re

from convdsl.ir.domains import ANY
from convdsl.ir.ops import OPS
from convdsl.ir.optable import EXAMPLE_INPUTS, REQUIRED, Attr, OpDef, describe_kind, format_value

GROUP_ORDER = ["convolution", "linear", "normalization", "activation", "arithmetic", "pooling", "shape",
               "attention", "fft", "ssm"]


def _default(a) -> str:
    if a.default is None:
        return "none"
    if isinstance(a.default, str) and "sym" in a.kind.split("|"):
        return a.default  # a bare word, as written in CDL
    return format_value(a.default)


def domain_text(a: Attr) -> str:
    """An attribute's domain for the docs: its interval (and list length), or "" for kinds without one."""
    if not set(a.kind.split("|")) & {"int", "float", "ints", "dims", "floats"}:
        return ""
    return f"`{(a.domain or ANY).text()}`"


def signature(op: OpDef) -> str:
    parts = [a.name if a.default is REQUIRED else f"{a.name}={_default(a)}" for a in op.attrs]
    return f"{op.name}({', '.join(parts)})"


def example_program(op: OpDef) -> str:
    """A network running ``op``'s example on its ``example_inputs``: the example is a statement
    (``a, b = x | split(...)``), an expression over the inputs (``(a, b) | add``, ``x | relu``), or
    a layer applied to the first input (``conv2d(64, 3)``)."""
    names = [p.split(":")[0].strip() for p in op.example_inputs.split("],")]
    ex = op.example
    if re.match(r"^[\w\s,]+=[^=]", ex):  # an assignment: return what it binds
        body = f"{ex}\n    return {ex.split('=')[0].strip()}"
    elif any(re.search(rf"\b{re.escape(n)}\b", ex) for n in names):
        body = f"return {ex}"
    else:
        body = f"return {names[0]} | {ex}"
    return f"network example({op.example_inputs}) {{\n    {body}\n}}\n"


def render_markdown() -> str:
    groups: dict[str, list[OpDef]] = {}
    for op in OPS.values():
        groups.setdefault(op.group, []).append(op)
    order = [g for g in GROUP_ORDER if g in groups] + sorted(g for g in groups if g not in GROUP_ORDER)
    out = ["# Ops", "",
           "Generated from the op table (`convdsl/ir/ops/`) by `convdsl ops --markdown`; do not edit by hand.",
           "Hyper-parameters are given positionally in the order shown, then by keyword. Input channels and",
           "features are always inferred.",
           "",
           "The domain column is the interval of values each number takes (each entry of a list); whatever",
           "the interval, an integer fits in int32, a float is finite and fits in float32 unless the interval",
           "is closed at infinity (`(0, inf]`), never NaN, and a list has at most 64 entries",
           "(convdsl/ir/domains.py).  `check` refuses anything outside, with the domain and the value.", ""]
    for g in order:
        out.append(f"- [{g}](#{g.replace(' ', '-')}): " + ", ".join(f"`{o.name}`" for o in sorted(groups[g], key=lambda o: o.name)))
    out.append("")
    for g in order:
        out += [f"## {g}", ""]
        for op in sorted(groups[g], key=lambda o: o.name):
            lo, hi = op.inputs
            n_in = f"{lo}" if lo == hi else f"{lo}+" if hi is None else f"{lo}-{hi}"
            out += [f"### `{op.name}`", "", op.doc or "", "",
                    f"- syntax: `{signature(op)}`",
                    f"- inputs: {n_in} ({', '.join(op.input_names)})"]
            if op.shape_rule:
                out.append(f"- shape: `{op.shape_rule}`")
            if op.example:
                on = f" (on `{op.example_inputs}`)" if op.example_inputs != EXAMPLE_INPUTS else ""
                out.append(f"- example: `{op.example}`{on}")
            if op.attrs:
                out += ["", "| hyper-parameter | kind | domain | default | meaning |", "| --- | --- | --- | --- | --- |"]
                for a in op.attrs:
                    default = "required" if a.default is REQUIRED else _default(a)
                    out.append(f"| `{a.name}` | {describe_kind(a)} | {domain_text(a)} | {default} | {a.doc} |")
            out.append("")
    return "\n".join(out).rstrip() + "\n"
