"""What a search leaves behind: the Pareto set as plain .cdl programs with their weights, a summary
table (Markdown and JSON) and a plot of accuracy against cost with the front highlighted.

    OUT/pareto/01_c17.cdl            resolved program (every choice fixed), header with its metrics
    OUT/pareto/01_c17.safetensors    its trained weights
    OUT/summary.md, summary.json     the front, the references, counts and timings
    OUT/pareto.png, pareto.svg       all candidates, the front, the references

Every file is written whole (``files.write_atomic``) and the Pareto folder is built aside and
renamed into place, so a search killed while reporting leaves the previous report or the new one,
never a mix, and the next ``--resume`` or ``search-report`` writes it again.  Text from the
history that lands in a program's header comments is kept on one line (a newline in a data file
name must not end the comment and turn the rest into CDL).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from convdsl.errors import ConvDSLError
from convdsl.lang import ast
from convdsl.lang.format import format_expr
from convdsl.lang.parser import parse
from convdsl.search.evolution import pareto_front
from convdsl.search.faults import stop_point
from convdsl.search.files import cannot_write, own_dir, write_atomic
from convdsl.search.history import HistoryError
from convdsl.search.runner import SearchConfig
from convdsl.search.space import choices_of, render
from convdsl.search.store import Row, Store, weights_path

COST_LABEL = {"latency": "latency (ms)", "params": "parameters", "macs": "MACs"}


def fmt_cost(name: str, v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f} ms" if name == "latency" else f"{int(v):,}"


def describe(row: Row) -> str:
    """The selected option of each choice the candidate reaches: ``mixer1=attn_mixer(2) width=24``."""
    try:
        program = parse(row.program, "<candidate>")
    except Exception:
        return ""
    choices = choices_of(program)
    parts = []
    for key in row.active:
        c = choices.get(key)
        i = row.selection.get(key, 0)
        if c is not None and 0 <= i < len(c.options):
            parts.append(f"{key}={format_expr(c.options[i])}")
    return " ".join(parts)


def beaten_by(front: Sequence[Row], ref: Row, cost: str | None) -> list[Row]:
    """Front members with higher accuracy than ``ref`` at equal or lower cost."""
    if ref.val_acc is None:
        return []
    out = []
    for r in front:
        if r.val_acc is None or r.val_acc <= ref.val_acc:
            continue
        if cost is not None and (r.metric(cost) is None or ref.metric(cost) is None or r.metric(cost) > ref.metric(cost)):
            continue
        out.append(r)
    return out


def one_line(text: Any) -> str:
    """``text`` with every line break and control character escaped (``\\n``), for comments and
    titles."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def summarize(store: Store) -> dict[str, Any]:
    config = SearchConfig.from_history(store)
    rows = store.rows()
    search = [r for r in rows if r.kind == "search"]
    done = [r for r in search if r.status == "done"]
    refs = [r for r in rows if r.kind == "reference"]
    front = pareto_front(done, config.objective)
    events = store.events()
    wall, t_open = 0.0, None
    for e in events:  # time the search was actually running, over all its sessions
        if e["what"] in ("start", "resume"):
            t_open = e["t"]
        elif e["what"] == "stop" and t_open is not None:
            wall += e["t"] - t_open
            t_open = None
    cost = config.cost
    rejected = store.rejected_counts()
    return {
        "config": {k: v for k, v in config.to_json().items() if k not in ("space_text", "sources", "references")},
        "references": [{**_row_json(r, cost), "beaten_by": [b.id for b in beaten_by(front, r, cost)]} for r in refs],
        "front": [_row_json(r, cost) for r in front],
        "counts": {
            "proposed": len(search), "done": len(done), "failed": sum(r.status == "failed" for r in search),
            "pending": sum(r.status in ("pending", "running") for r in search),
            "repeats": sum(r.cached_from is not None for r in search),
            "rejected": sum(sum(v.values()) for v in rejected.values()),
            "rejected_by_operator": rejected,
            "operators": _count(r.operator or "sample" for r in search),
            "resumes": sum(e["what"] == "resume" for e in events),
        },
        "seconds": {"wall": wall, "evaluations": sum(r.seconds or 0.0 for r in rows),
                    "training": sum(r.train_seconds or 0.0 for r in rows)},
        "best_accuracy": max((r.val_acc for r in done), default=None),
    }


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


def _row_json(r: Row, cost: str | None) -> dict[str, Any]:
    return {"id": r.id, "name": r.name, "status": r.status, "val_acc": r.val_acc, "params": r.params, "macs": r.macs,
            "latency_ms": r.latency_ms, "latency_wall_ms": r.latency_wall_ms, "latency_cpu_ms": r.latency_cpu_ms,
            "seconds": r.seconds, "parent": r.parent, "operator": r.operator, "detail": r.detail,
            "choices": describe(r) if r.kind == "search" else "", "hash": r.hash}


def write_report(store: Store, folder: str | os.PathLike | None = None, plot: bool = True) -> dict[str, Any]:
    """Write the Pareto programs and weights, the summary and the plot; return the summary.
    The caller holds the folder (``Store(lock=True)``): one report writer at a time."""
    folder = Path(folder or store.folder)
    config = SearchConfig.from_history(store)
    summary = summarize(store)
    out, staging = folder / "pareto", folder / "pareto.partial"
    _remove_tree(staging)  # a report a kill interrupted
    own_dir(staging)
    for k, entry in enumerate(summary["front"], 1):
        row = store.row(entry["id"])
        stem = f"{k:02d}_c{row.id}"
        write_atomic(staging / f"{stem}.cdl", _program_file(store, row, config, k, len(summary["front"]), out))
        src = weights_path(store.folder, row.cached_from if row.cached_from is not None else row.id)
        if src.is_file() and not src.is_symlink():
            try:
                data = src.read_bytes()
            except OSError as e:
                raise HistoryError(f"cannot read {src}: {e.strerror or e}") from None
            write_atomic(staging / f"{stem}.safetensors", data)
        entry["file"] = f"pareto/{stem}.cdl"
    stop_point("report")
    _remove_tree(out)
    try:
        os.rename(staging, out)
    except OSError as e:
        raise cannot_write(out, e) from None
    write_atomic(folder / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_atomic(folder / "summary.md", markdown(summary, config))
    if plot:
        draw(store, config, folder)
    return summary


def _remove_tree(path: Path) -> None:
    """A folder the report owns, gone; a link in its place is removed, never followed."""
    try:
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
    except OSError as e:
        raise cannot_write(path, e) from None


def _program_file(store: Store, row: Row, config: SearchConfig, k: int, n: int, out: Path) -> str:
    """The resolved program, with imports re-pointed from the space's folder to ``out``."""
    try:
        program = parse(row.text, config.space_file)
    except ConvDSLError as e:
        raise HistoryError(f"{store.path}: candidate {row.id}: its stored program does not parse",
                           notes=[e.render()], hint="the file was left as it is: restore it from a copy") from None
    base = Path(config.space_file).parent
    for item in program.items:
        if isinstance(item, ast.Import):
            item.path = os.path.relpath((base / item.path).resolve(), out.resolve())
    cost = config.cost
    head = [
        f"# convdsl search: candidate #{row.id}, Pareto point {k} of {n} "
        f"({config.strategy}, seed {config.seed}, {config.budget} candidates)",
        f"# validation accuracy {100 * row.val_acc:.2f}% on {config.data} after {config.epochs} epochs"
        + (f" (mean of training seeds {config.seed}-{config.seed + config.seeds - 1}; the weights are seed {config.seed}'s)"
           if config.seeds > 1 else "") + "; "
        f"{row.params:,} params; {row.macs:,} MACs; latency {row.latency_ms:.3f} ms "
        f"({config.latency_clock}, {config.backend}, batch {config.latency_batch})",
        f"# weights: {k:02d}_c{row.id}.safetensors" + (f"; objective accuracy vs {cost}" if cost else ""),
    ]
    if row.operator and row.parent is not None:
        head.append(f"# from #{row.parent} by {row.operator}: {row.detail}")
    return "\n".join(one_line(line) for line in head) + "\n\n" + render(program)


def markdown(summary: dict[str, Any], config: SearchConfig) -> str:
    cost = config.cost
    c = summary["counts"]
    s = summary["seconds"]
    lines = [
        f"# Search: {one_line(Path(config.space_file).name)} ({config.strategy}, seed {config.seed})",
        "",
        f"objective: {', '.join(config.objective)}; data: {one_line(config.data)}; {config.epochs} epochs, batch "
        f"{config.batch_size}; latency: {config.backend}, batch {config.latency_batch}, {config.latency_clock} clock",
        "",
        f"{c['proposed']} candidates ({c['done']} done, {c['failed']} failed, {c['pending']} unfinished, "
        f"{c['repeats']} repeats answered from the history); {c['rejected']} mutants/samples rejected; "
        f"{c['resumes']} resumes; {s['wall']:.0f} s wall, {s['evaluations']:.0f} s of evaluations",
        "",
        "## Pareto front",
        "",
        "| # | val acc | params | MACs | latency (ms) | from | choices |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in summary["front"]:
        origin = f"#{r['parent']} {r['operator']}" if r["parent"] is not None else r["operator"] or ""
        lines.append(f"| {r['id']} | {100 * r['val_acc']:.2f}% | {r['params']:,} | {r['macs']:,} | "
                     f"{r['latency_ms']:.3f} | {origin} | {r['choices']} |")
    if summary["references"]:
        lines += ["", "## References (same trainer, data, epochs and timing)", "",
                  f"| program | val acc | params | MACs | latency (ms) | beaten by (higher accuracy, {cost or 'any'} <=) |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in summary["references"]:
            if r["val_acc"] is None:
                lines.append(f"| {r['name']} | ({r['status']}) | | | | |")
                continue
            beat = ", ".join(f"#{i}" for i in r["beaten_by"]) or "none"
            lines.append(f"| {r['name']} | {100 * r['val_acc']:.2f}% | {r['params']:,} | {r['macs']:,} | "
                         f"{r['latency_ms']:.3f} | {beat} |")
    if c["rejected_by_operator"]:
        lines += ["", "## Rejected mutants", "", "| operator | reason | count |", "| --- | --- | --- |"]
        for op, reasons in sorted(c["rejected_by_operator"].items()):
            for reason, n in sorted(reasons.items()):
                lines.append(f"| {op} | {reason} | {n} |")
    return "\n".join(lines) + "\n"


def draw(store: Store, config: SearchConfig, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    # names and file names are text, never TeX: a '$' in a file name must not start mathtext
    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        _draw(store, config, folder)


def _draw(store: Store, config: SearchConfig, folder: Path) -> None:
    import io

    import matplotlib.pyplot as plt

    cost = config.cost or "params"
    objective = ("accuracy", cost)
    rows = store.rows("status = 'done'")
    search = [r for r in rows if r.kind == "search" and r.metric(cost) is not None]
    refs = [r for r in rows if r.kind == "reference" and r.metric(cost) is not None]
    front = pareto_front(search, objective)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=150)
    ax.scatter([r.metric(cost) for r in search], [100 * r.val_acc for r in search], s=14, color="0.65",
               label=f"candidates ({len(search)})", zorder=2)
    if front:
        xs = [r.metric(cost) for r in front]
        ys = [100 * r.val_acc for r in front]
        ax.step(xs, ys, where="post", color="tab:red", lw=1.2, zorder=3)
        ax.scatter(xs, ys, s=30, color="tab:red", label=f"Pareto front ({len(front)})", zorder=4)
        for r, x, y in zip(front, xs, ys):
            ax.annotate(f"#{r.id}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7, color="tab:red")
    for r in refs:
        ax.scatter([r.metric(cost)], [100 * r.val_acc], marker="*", s=120, color="black", zorder=5)
        ax.annotate(one_line(r.name or f"ref {r.id}"), (r.metric(cost), 100 * r.val_acc), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)
    vals = [r.metric(cost) for r in search + refs]
    if vals and min(vals) > 0 and max(vals) / min(vals) > 8:
        ax.set_xscale("log")
    accs = [100 * r.val_acc for r in search + refs]
    if accs:  # zoom on the useful part: failed-to-learn candidates would squash the front
        top = max(accs)
        ax.set_ylim(max(min(accs), top - 15) - 0.5, top + 0.5)
    ax.set_xlabel(COST_LABEL[cost] + (f" ({config.latency_clock}, {config.backend})" if cost == "latency" else ""))
    ax.set_ylabel(f"validation accuracy (%), {one_line(config.data)}")
    ax.set_title(f"{one_line(Path(config.space_file).name)}: {config.strategy}, seed {config.seed}, "
                 f"{len(search)} candidates, {config.epochs} epochs", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    for fmt in ("png", "svg"):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt)
        write_atomic(folder / f"pareto.{fmt}", buf.getvalue())
    plt.close(fig)



# ---- comparing searches ---------------------------------------------------------------------
def hypervolume(rows: Sequence[Row], cost: str, acc_floor: float, cost_ceiling: float) -> float:
    """Area dominated by the front in (accuracy, log10 cost), bounded by ``acc_floor`` and
    ``cost_ceiling``: larger is better; one number for a whole trade-off curve."""
    import math

    pts = sorted((r.metric(cost), r.val_acc) for r in rows
                 if r.val_acc is not None and r.metric(cost) is not None and r.val_acc > acc_floor
                 and 0 < r.metric(cost) < cost_ceiling)
    area, best = 0.0, acc_floor
    hi = math.log10(cost_ceiling)
    for i, (c, a) in enumerate(pts):  # sweep by cost: the best accuracy so far holds until the next point
        best = max(best, a)
        nxt = math.log10(pts[i + 1][0]) if i + 1 < len(pts) else hi
        area += (best - acc_floor) * (nxt - math.log10(c))
    return area


def compare(folders: Sequence[str | os.PathLike], cost_limit: float | None = None) -> list[dict[str, Any]]:
    """One row per search: strategy, seed, best accuracy, best accuracy within ``cost_limit``,
    hypervolume (bounds shared by all the searches compared)."""
    runs = []
    for f in folders:
        store = Store(f)
        try:
            config = SearchConfig.from_history(store)
            done = store.rows("kind = 'search' AND status = 'done'")
            runs.append((f, config, done, summarize(store)))
        finally:
            store.close()
    cost = runs[0][1].cost or "params"
    every = [r for _, _, done, _ in runs for r in done if r.metric(cost) is not None]
    ceiling = 1.1 * max((r.metric(cost) for r in every), default=1.0)
    floor = 0.9
    out = []
    for f, config, done, summary in runs:
        within = [r.val_acc for r in done if cost_limit is None or (r.metric(cost) or float("inf")) <= cost_limit]
        out.append({"folder": str(f), "strategy": config.strategy, "seed": config.seed, "done": len(done),
                    "best_acc": max((r.val_acc for r in done), default=None),
                    "best_acc_within": max(within, default=None), "cost": cost, "cost_limit": cost_limit,
                    "hypervolume": hypervolume(done, cost, floor, ceiling),
                    "front": len(summary["front"]), "rejected": summary["counts"]["rejected"],
                    "wall_seconds": summary["seconds"]["wall"]})
    return out
