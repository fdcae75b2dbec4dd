"""The prune command: a trained program -> a smaller program, its weights and a report."""
from __future__ import annotations

import json
from pathlib import Path

import click

from convdsl.errors import UsageError
from convdsl.outputs import output_folder, staged_folder
from convdsl.cli.common import Count, Number, program_graph, main, program_options, weights_options


@main.command(name="prune")
@click.argument("file", type=click.Path(dir_okay=False))
@program_options
@weights_options("Trained weights (.safetensors).")
@click.option("--ratio", "-r", type=Number(0.0, 1.0), default=0.5, show_default=True, help="Fraction of the target to remove.")
@click.option("--target", type=click.Choice(["macs", "params", "channels"]), default="macs", show_default=True,
              help="What --ratio measures: MACs or parameters (the channel ratio is searched), or channels.")
@click.option("--criterion", "-c", type=click.Choice(["l1", "l2", "bn_scale", "taylor", "activation"]),
              default="l1", show_default=True, help="Channel importance; taylor and activation need --data.")
@click.option("--scope", type=click.Choice(["global", "layer"]), default="global", show_default=True,
              help="Rank channels across all groups, or remove the same share from every group.")
@click.option("--data", "-d", default=None,
              help="digits, mnist1d[:...] or a .npz (x, y): calibration for taylor/activation, and fine-tuning.")
@click.option("--calib-samples", type=Count(1, 10**7), default=256, show_default=True, help="Samples the data criteria look at.")
@click.option("--round-to", type=Count(1, 2**16), default=1, show_default=True, help="Keep channel counts multiples of this (e.g. 8).")
@click.option("--protect", multiple=True, metavar="NODE", help="Keep the output channels of NODE (fnmatch pattern).")
@click.option("--prune-first-last", is_flag=True, help="Also prune the first and last layers (protected by default).")
@click.option("--max-group-ratio", type=Number(0.0, 1.0), default=0.9, show_default=True, help="Most any one group may lose (global scope).")
@click.option("--tolerance", type=Number(0.0, 1.0, lo_open=True), default=0.005, show_default=True, help="How close the measured reduction must get.")
@click.option("--finetune-epochs", type=Count(0, 10**4), default=0, show_default=True, help="Train the pruned network on --data after.")
@click.option("--lr", type=Number(0.0, 10.0, lo_open=True), default=None, help="Fine-tuning learning rate (default: the trainer's).")
@click.option("--batch-size", "-b", type=Count(1, 2**20), default=64, show_default=True, help="Fine-tuning batch size.")
@click.option("--output", "-o", "out", required=True, type=click.Path(file_okay=False), help="Folder to write.")
def prune_cmd(file, network, sets, choose, bind, max_memory, seed, weights, ratio, target, criterion, scope, data,
              calib_samples, round_to, protect, prune_first_last, max_group_ratio, tolerance, finetune_epochs, lr,
              batch_size, out):
    """Prune channels of FILE; write OUT/<name>.cdl, OUT/weights.safetensors and OUT/report.{json,md}.

    The new program is the pruned graph printed as flat CDL (one statement per op, the original
    instance names kept, so parameter names match the weights file, and a comment where each
    block instance starts); `convdsl check`, `compile` and `--weights` take it as it is."""
    from convdsl.backends.torch import build_module
    from convdsl.lang.printer import print_graph
    from convdsl.ir.weights import save_weights
    from convdsl.passes.prune import DEFAULT_PROTECT, prune_with_report, to_markdown

    if finetune_epochs and not data:
        raise UsageError("--finetune-epochs needs --data", hint="e.g. --data digits")
    names = {f"{Path(file).stem}.cdl", "weights.safetensors", "report.json", "report.md"}
    output_folder(out, lambda existing: names)  # refused now, not after pruning
    g = program_graph(file, network, sets, choose, bind, max_memory, seed, weights=weights)
    dataset = None
    if data:
        from convdsl.train import check_fits, load_dataset

        dataset = load_dataset(data, seed=0)
        if finetune_epochs:
            check_fits(g, dataset)
    protect_all = ([] if prune_first_last else list(DEFAULT_PROTECT)) + list(protect)
    small, rep, _ = prune_with_report(g, ratio, criterion, target=target, scope=scope, round_to=round_to,
                                      protect=protect_all, data=dataset, tolerance=tolerance,
                                      max_group_ratio=max_group_ratio, calib_samples=calib_samples, seed=seed,
                                      build=build_module)
    if dataset is not None and finetune_epochs:
        from convdsl.train import evaluate, train

        acc = {"original": evaluate(g, dataset, build=build_module)["accuracy"],
               "pruned": evaluate(small, dataset, build=build_module)["accuracy"]}
        train(small, dataset, finetune_epochs, batch_size=batch_size, lr=lr, seed=seed, progress=False,
              build=build_module)
        acc["fine-tuned"] = evaluate(small, dataset, build=build_module)["accuracy"]
        rep["accuracy"] = acc

    stem = Path(file).stem
    r = rep["reduction"]
    header = (f"{small.name}, pruned from {Path(file).name} by `convdsl prune` (criterion {criterion}, "
              f"{ratio:.0%} of {target}):\n"
              f"params {rep['before']['params']:,} -> {rep['after']['params']:,} (-{r['params']:.1%}), "
              f"MACs {rep['before']['macs']:,} -> {rep['after']['macs']:,} (-{r['macs']:.1%}).\n"
              f"Weights: weights.safetensors beside this file.")
    with staged_folder(out, replaceable=lambda existing: names) as tmp:  # all four files, or none
        (tmp / f"{stem}.cdl").write_text(with_scope_comments(small, print_graph(small, header=header)), encoding="utf-8")
        save_weights(small, tmp / "weights.safetensors",
                     metadata={"pruned_from": Path(file).name, "criterion": criterion, "ratio": ratio, "target": target})
        (tmp / "report.json").write_text(json.dumps(rep, indent=2, default=_jsonable) + "\n", encoding="utf-8")
        (tmp / "report.md").write_text(to_markdown(rep), encoding="utf-8")
    folder = Path(out)
    click.echo(f"pruned {small.name}: params {rep['before']['params']:,} -> {rep['after']['params']:,} "
               f"(-{r['params']:.1%}), MACs {rep['before']['macs']:,} -> {rep['after']['macs']:,} (-{r['macs']:.1%})")
    changed = [gr for gr in rep["groups"] if gr["channels"] and gr["channels"][0] != gr["channels"][1]]
    click.echo(f"  {len(changed)} of {sum(1 for gr in rep['groups'] if gr['channels'])} channel groups shrank "
               f"(channel ratio {rep['channel_ratio']:.3f})")
    for note in rep["notes"]:
        click.echo(f"  note: {note}")
    if "accuracy" in rep:
        click.echo("  accuracy: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in rep["accuracy"].items()))
    for f in (f"{stem}.cdl", "weights.safetensors", "report.json", "report.md"):
        click.echo(f"  {folder / f}")


def with_scope_comments(graph, text: str) -> str:
    """The printer's flat program with a ``# layer2.0 (basic)`` line where each block instance's
    statements start (the printer writes one statement per node, in ``graph.nodes()`` order)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("network ")), None)
    nodes = [n for n in graph.nodes() if n.op != "input"]
    if start is None or len(lines) < start + len(nodes) + 2:
        return text
    out, last = lines[:start + 1], ""
    for node, line in zip(nodes, lines[start + 1:start + 1 + len(nodes)]):
        if node.scope and node.scope != last:
            out.append(f"    # {node.scope}" + (f" ({node.block})" if node.block else ""))
        last = node.scope
        out.append(line)
    return "\n".join(out + lines[start + 1 + len(nodes):]) + "\n"


def _jsonable(v):
    import numpy as np

    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"cannot write {type(v).__name__} to JSON")
