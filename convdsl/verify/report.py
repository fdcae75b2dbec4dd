"""The differential report as a rich table (or JSON).

    verify net: 50 inputs (batch 2, seeds 0..49), reference: torch (as written)
    ┏━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━┳━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━┳━━━━━━━━┓
    ┃ backend / pass     ┃ max abs err ┃ max rel err ┃ tolerance        ┃ worst seed ┃ result ┃
    ┡━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━╇━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━╇━━━━━━━━┩
    │ torch-standalone   │           0 │           0 │ exact            │          0 │ pass   │
    │ torch @ O2         │    2.38e-07 │    9.54e-08 │ rtol 1e-4 + 1e-5 │          7 │ pass   │
    │ tvm-llvm           │    1.19e-06 │    4.77e-07 │ rtol 1e-3 + 1e-4 │         12 │ pass   │
    └────────────────────┴─────────────┴─────────────┴──────────────────┴────────────┴────────┘
"""
from __future__ import annotations

import json
import math
from typing import Any

from convdsl.verify.differential import Report, Tolerance
from convdsl.verify.inputs import kind_for_seed


def _num(x: float) -> str:
    if x == 0:
        return "0"
    if math.isinf(x):
        return "-"
    return f"{x:.3g}"


def _tol(t: Tolerance | None) -> str:
    if t is None:
        return ""
    if t.rtol == 0 and t.atol == 0:
        return "exact"
    return f"rtol {t.rtol:.0e}, atol {t.atol:.0e}".replace("e-0", "e-")


def _could_not_run(row) -> bool:
    """The variant raised (no output to compare), as opposed to computing a different one."""
    return not row.ok and bool(row.error) and math.isinf(row.max_abs)


def render(report: Report, console=None, *, title: str = "") -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if console.width < 120 and not console.is_terminal:
        console.width = 120
    table = Table(title=title or f"verify {report.network}", title_justify="left")
    table.add_column("backend / pass")
    for col in ("max abs err", "max rel err"):
        table.add_column(col, justify="right")
    table.add_column("tolerance")
    table.add_column("worst input", justify="right")
    table.add_column("result")
    for row in report.rows:
        seed = "" if row.worst_seed is None else f"seed {row.worst_seed} ({kind_for_seed(row.worst_seed)})"
        result = "[green]pass[/green]" if row.ok else "[red]error[/red]" if _could_not_run(row) else "[red]FAIL[/red]"
        table.add_row(row.variant, _num(row.max_abs), _num(row.max_rel), _tol(row.tol), seed, result)
    console.print(table)
    for row in report.rows:
        if not row.ok:
            console.print(f"[red]{row.variant}[/red]: {row.error}", highlight=False, markup=True)
    errors = sum(1 for r in report.rows if _could_not_run(r))
    fails = sum(1 for r in report.rows if not r.ok) - errors
    parts = ([f"{fails} of {len(report.rows)} disagree"] if fails else []) + \
        ([f"{errors} of {len(report.rows)} could not run (error above)"] if errors else [])
    console.print("[green]all agree[/green]" if report.ok else f"[red]{'; '.join(parts)}[/red]")


def to_json(report: Report) -> str:
    def row(r) -> dict[str, Any]:
        return {"variant": r.variant, "ok": r.ok, "max_abs": None if math.isinf(r.max_abs) else r.max_abs,
                "max_rel": None if math.isinf(r.max_rel) else r.max_rel, "worst_seed": r.worst_seed,
                "examples": r.examples, "error": r.error or None,
                "tolerance": None if r.tol is None else {"rtol": r.tol.rtol, "atol": r.tol.atol}}

    return json.dumps({"network": report.network, "reference": report.reference, "ok": report.ok,
                       "rows": [row(r) for r in report.rows]}, indent=2)
