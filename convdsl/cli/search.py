"""The search command: architecture search over a CDL program with choices."""
from __future__ import annotations

import math
import os
from pathlib import Path

import click

from convdsl.errors import UsageError, did_you_mean
from convdsl.cli.common import main

_DATA_HELP = "digits, mnist1d[:samples=N,length=L], or a .npz file with x and y."


@main.command(name="search")
@click.argument("space", required=False, type=click.Path(dir_okay=False))
@click.option("--resume", type=click.Path(file_okay=False), help="Continue the search stored in this folder.")
@click.option("--out", "-o", type=click.Path(file_okay=False), help="Folder for the history, Pareto programs and plot.")
@click.option("--network", "-n", help="Network to search when the file defines several.")
@click.option("--data", "-d", default="digits", show_default=True, help=_DATA_HELP)
@click.option("--val-fraction", default=0.2, show_default=True, help="Share of each class held out for validation.")
@click.option("--split-seed", default=0, show_default=True, help="Seed of the train/validation split.")
@click.option("--budget", type=int, default=None, help="Candidates to evaluate [default: 60]; on --resume, a new total.")
@click.option("--objective", default="accuracy,latency", show_default=True,
              help="accuracy, or accuracy plus a cost: latency, params or macs.")
@click.option("--backend", "-b", default="torch", show_default=True, help="Backend that times the candidates.")
@click.option("--strategy", type=click.Choice(["evolution", "random"]), default="evolution", show_default=True,
              help="Regularized evolution, or random search (the baseline).")
@click.option("--seed", default=0, show_default=True, help="Seed of the search, the initializations and shuffling.")
@click.option("--epochs", "-e", default=6, show_default=True, help="Training epochs per candidate.")
@click.option("--seeds", default=1, show_default=True,
              help="Training seeds per candidate (and reference): accuracy is their mean, which the noise of "
                   "one short training run on a small validation set makes worth its cost.")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--lr", type=float, default=None, help="Peak learning rate (default: the trainer's).")
@click.option("--optimizer", default="adamw", show_default=True)
@click.option("--weight-decay", default=5e-4, show_default=True)
@click.option("--population", default=10, show_default=True, help="Evolution: population size (aging).")
@click.option("--tournament", default=3, show_default=True, help="Evolution: candidates per tournament.")
@click.option("--max-params", type=int, default=None, help="Reject candidates with more parameters.")
@click.option("--latency-clock", type=click.Choice(["cpu", "wall"]), default="cpu", show_default=True,
              help="cpu: process CPU time per forward pass (robust on a shared machine); wall: wall clock.")
@click.option("--latency-batch", default=1, show_default=True, help="Batch size of the timed forward pass.")
@click.option("--reference", "references", multiple=True, type=click.Path(dir_okay=False),
              help="A plain program to train and time the same way, for comparison (repeatable).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--address", default=None, help="Ray cluster address (auto, host:port, ray://...); none: a local Ray.")
@click.option("--workers", "-j", type=int, default=None,
              help="Evaluations at once [default: the cores this process may use].")
@click.option("--time-limit", type=float, default=None,
              help="Start no evaluation after this many seconds; those running finish (continue with --resume).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def search_cmd(space, resume, out, network, data, val_fraction, split_seed, budget, objective, backend, strategy,
               seed, epochs, seeds, batch_size, lr, optimizer, weight_decay, population, tournament, max_params,
               latency_clock, latency_batch, references, executor, address, workers, time_limit, progress):
    """Search the choices and the program of SPACE (a .cdl file with choice(...)).

    Each candidate is a plain program: it is trained briefly with the trainer of `convdsl train`
    and timed on --backend.  Every candidate goes into OUT/search.sqlite as it finishes, so a
    stopped or killed search continues with `convdsl search --resume OUT`.  At the end OUT holds
    the Pareto set (pareto/*.cdl with weights), summary.md/json and pareto.png/svg.

    The programs proposed depend only on --seed and on the workers given when the search
    started (with --objective accuracy,latency also on the measured times)."""
    from convdsl.api import BACKENDS
    from convdsl.search import Search, SearchConfig, make_executor, write_report
    from convdsl.search.progress import SearchProgress
    from convdsl.search.space import read_space_file

    cores = len(os.sched_getaffinity(0))
    if workers is not None:
        most = max(4, 2 * cores) if executor == "local" else 4096  # ~850 MB each: more cores than this gain nothing
        if not 1 <= workers <= most:
            raise UsageError(f"--workers must be between 1 and {most} for --executor {executor}, got {workers}",
                             hint=f"this machine lets the search use {cores} core(s); each worker runs one thread")
    workers = workers or cores
    if time_limit is not None and not (math.isfinite(time_limit) and time_limit >= 0):
        raise UsageError(f"--time-limit must be a number of seconds (0 or more), got {time_limit}")
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend '{backend}'", hint=did_you_mean(backend, BACKENDS) or f"backends: {', '.join(BACKENDS)}")
    if resume:
        if space:
            raise UsageError("give either SPACE or --resume, not both")
        s = Search.open(resume, budget=budget)
        folder = Path(resume)
    else:
        if not space or not out:
            raise UsageError("search needs SPACE and --out", hint="convdsl search space.cdl --out results/")
        text = read_space_file(space)
        refs = [{"name": Path(r).stem, "file": str(Path(r)), "text": read_space_file(r)} for r in references]
        config = SearchConfig(
            space_file=str(Path(space)), space_text=text, network=network, strategy=strategy, budget=60 if budget is None else budget,
            seed=seed, objective=tuple(o.strip() for o in objective.split(",") if o.strip()), data=data,
            val_fraction=val_fraction, split_seed=split_seed, epochs=epochs, seeds=seeds, batch_size=batch_size, lr=lr,
            optimizer=optimizer, weight_decay=weight_decay, backend=backend, latency_batch=latency_batch,
            latency_clock=latency_clock, population=population, sample=tournament, lag=max(0, workers - 1),
            max_params=max_params, references=refs)
        s = Search.create(out, config)
        folder = Path(out)
        if s.store.replaced_incomplete:
            click.echo(f"note: {folder}/search.sqlite was an incomplete history (a search stopped while creating it, "
                       "before any evaluation): replaced", err=True)
    try:
        c = s.config
        click.echo(f"searching {c.space_file} ({s.space.size():,} choice combinations, {len(s.space.choices)} choices) "
                   f"by {c.strategy}: {c.budget} candidates, {c.epochs} epochs x {c.seeds} seed(s) each on {s.dataset}, "
                   f"objective {','.join(c.objective)}; {workers} {executor} worker(s); history in {folder}",
                   err=True)
        display = SearchProgress(s, enabled=progress)
        try:
            ex = make_executor(executor, workers, address)
            try:
                s.run(ex, on_event=display, stop_after=time_limit)
            finally:
                ex.close()  # evaluations still in flight are stopped; they stay 'running' for the resume
        except KeyboardInterrupt:
            display.close()
            click.echo(f"interrupted; continue with: convdsl search --resume {folder}", err=True)
            raise SystemExit(130)
        finally:
            display.close()
        summary = write_report(s.store, folder)
    finally:
        s.close()
    _print_summary(summary, s.config)
    unfinished = summary["counts"]["pending"]
    if unfinished:
        click.echo(f"{unfinished} candidate(s) unfinished; continue with: convdsl search --resume {folder}")
    click.echo(f"wrote {folder}/pareto/ ({len(summary['front'])} programs), {folder}/summary.md, {folder}/pareto.png")


def _print_summary(summary: dict, config) -> None:
    from convdsl.cli.common import stdout_console
    from rich.table import Table

    cost = config.cost
    t = Table("#", "val acc", "params", "MACs", "latency ms", "from", "choices", box=None,
              title=f"Pareto front (accuracy vs {cost or 'nothing'})")
    for r in summary["front"]:
        origin = f"#{r['parent']} {r['operator']}" if r["parent"] is not None else (r["operator"] or "")
        t.add_row(str(r["id"]), f"{100 * r['val_acc']:.2f}%", f"{r['params']:,}", f"{r['macs']:,}",
                  f"{r['latency_ms']:.3f}", origin, r["choices"])
    for r in summary["references"]:
        if r["val_acc"] is None:
            continue
        beat = ", ".join(f"#{i}" for i in r["beaten_by"]) or "none"
        t.add_row(r["name"], f"{100 * r['val_acc']:.2f}%", f"{r['params']:,}", f"{r['macs']:,}",
                  f"{r['latency_ms']:.3f}", "reference", f"beaten by {beat}")
    console = stdout_console()
    console.print(t)
    c, s = summary["counts"], summary["seconds"]
    console.print(f"{c['done']} done, {c['failed']} failed, {c['repeats']} repeats, {c['rejected']} rejected mutants; "
                  f"{s['wall']:.0f} s wall, {s['evaluations']:.0f} s of evaluations")


@main.command(name="search-report")
@click.argument("folders", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--cost-limit", type=float, default=None,
              help="Also report the best accuracy of candidates at or under this cost.")
def search_report_cmd(folders, cost_limit):
    """Rewrite the report of finished searches; with several FOLDERS, compare them
    (e.g. evolution against random search over seeds)."""
    from convdsl.cli.common import stdout_console
    from rich.table import Table

    from convdsl.search import Store, write_report
    from convdsl.search.report import compare

    for f in folders:
        store = Store(f, lock=True)  # one report writer at a time: not while a search runs on the folder
        try:
            write_report(store, f)
        finally:
            store.close()
    rows = compare(folders, cost_limit)
    limit = f"best acc, {rows[0]['cost']} <= {cost_limit:,g}" if cost_limit is not None else None
    t = Table("search", "strategy", "seed", "done", "best acc", *([limit] if limit else []), "hypervolume",
              "front", "rejected", "wall s", box=None)
    for r in rows:
        within = [f"{100 * r['best_acc_within']:.2f}%" if r["best_acc_within"] is not None else "-"] if limit else []
        t.add_row(r["folder"], r["strategy"], str(r["seed"]), str(r["done"]),
                  f"{100 * r['best_acc']:.2f}%" if r["best_acc"] is not None else "-", *within,
                  f"{r['hypervolume']:.4f}", str(r["front"]), str(r["rejected"]), f"{r['wall_seconds']:.0f}")
    stdout_console().print(t)
