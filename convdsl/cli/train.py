"""Commands that fit and score weights on real data: train, eval."""
from __future__ import annotations

import click

from convdsl.cli.common import program_graph, main, program_options, weights_options

_DATA_HELP = "digits, mnist1d[:samples=N,length=L], or a .npz file with x and y."


def _data_options(f):
    f = click.option("--data", "-d", "data", default="digits", show_default=True, help=_DATA_HELP)(f)
    f = click.option("--val-fraction", default=0.2, show_default=True,
                     help="Share of each class held out for validation (.npz without x_val).")(f)
    f = click.option("--split-seed", default=0, show_default=True,
                     help="Seed of the train/validation split; eval must use the one train used.")(f)
    return f


@main.command(name="train")
@click.argument("file", type=click.Path(dir_okay=False))
@program_options
@_data_options
@click.option("--epochs", "-e", default=10, show_default=True, help="Passes over the training split.")
@click.option("--output", "-o", "out", required=True, type=click.Path(dir_okay=False),
              help="Trained weights to write (.safetensors).")
@weights_options("Initial weights (.safetensors).")
@click.option("--lr", type=float, default=None, help="Peak learning rate (default: adamw 3e-3, sgd 0.05).")
@click.option("--batch-size", "-b", default=64, show_default=True)
@click.option("--optimizer", default="adamw", show_default=True, help="adamw or sgd.")
@click.option("--weight-decay", default=5e-4, show_default=True)
@click.option("--threads", default=1, show_default=True, help="Torch intra-op threads (tiny nets: 1 is fastest).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def train_cmd(file, network, sets, choose, bind, max_memory, seed, data, val_fraction, split_seed, epochs, out,
              weights, lr, batch_size, optimizer, weight_decay, threads, progress):
    """Train FILE on a dataset; print a per-epoch table and write the weights.

    --seed fixes the initialization, the shuffling and dropout: the same command gives the same
    weights on the same machine."""
    from convdsl.train import load_dataset

    dataset = load_dataset(data, seed=split_seed, val_fraction=val_fraction)  # a bad dataset costs no torch import
    from rich.console import Console
    from rich.table import Table

    from convdsl.backends.torch import build_module
    from convdsl.ir.weights import save_weights
    from convdsl.train import check_fits, train

    g = program_graph(file, network, sets, choose, bind, max_memory, seed, weights=weights)
    check_fits(g, dataset)
    click.echo(f"training {g.name} ({g.params.count():,} params) on {dataset}")
    result = train(g, dataset, epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                   weight_decay=weight_decay, seed=seed, progress=progress, threads=threads, build=build_module)
    table = Table("epoch", "train loss", "train acc", "val loss", "val acc", "lr", "time", box=None)
    for e in result.history:
        table.add_row(str(e.epoch), f"{e.train_loss:.4f}", f"{100 * e.train_acc:.2f}%", f"{e.val_loss:.4f}",
                      f"{100 * e.val_acc:.2f}%", f"{e.lr:.2e}", f"{e.seconds:.1f}s")
    Console(highlight=False).print(table)
    save_weights(g, out, metadata={"dataset": data, "split_seed": split_seed, "val_fraction": val_fraction,
                                   "epochs": epochs, "seed": seed, "val_accuracy": f"{result.val_accuracy:.6f}"})
    click.echo(f"validation accuracy {100 * result.val_accuracy:.2f}% "
               f"({len(dataset.y_val)} samples) after {epochs} epochs in {result.seconds:.1f} s")
    click.echo(f"wrote {out}")


@main.command(name="eval")
@click.argument("file", type=click.Path(dir_okay=False))
@program_options
@_data_options
@weights_options("Weights (.safetensors).", required=True)
@click.option("--split", type=click.Choice(["val", "train"]), default="val", show_default=True)
@click.option("--batch-size", "-b", default=512, show_default=True)
def eval_cmd(file, network, sets, choose, bind, max_memory, seed, data, val_fraction, split_seed, weights, split,
             batch_size):
    """Report the accuracy of FILE with trained weights on a dataset split."""
    from convdsl.train import load_dataset

    dataset = load_dataset(data, seed=split_seed, val_fraction=val_fraction)  # a bad dataset costs no torch import
    from convdsl.backends.torch import build_module
    from convdsl.train import evaluate

    g = program_graph(file, network, sets, choose, bind, max_memory, seed, weights=weights)
    r = evaluate(g, dataset, split=split, batch_size=batch_size, build=build_module)
    correct = round(r["accuracy"] * r["n"])
    click.echo(f"{g.name} on {dataset.name} ({split}): accuracy {100 * r['accuracy']:.2f}% "
               f"({correct}/{r['n']}), loss {r['loss']:.4f}")
