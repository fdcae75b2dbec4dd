"""`convdsl import`: an ONNX file or a PyTorch factory as a readable CDL program plus its weights.

    convdsl import net.onnx -o net.cdl                       # + net.safetensors
    convdsl import torchvision.models:resnet18 -o r18.cdl    # traced with torch.export
    convdsl import mypkg.nets:Net --args '{"width": 32}' --input-shape 1,3,64,64 -o net.cdl

Outputs are written to temporary files and renamed once everything succeeded, so a
failed import leaves no partial file behind.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import click

from convdsl.errors import SourceError, UsageError
from convdsl.cli.common import main


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise UsageError(f"cannot read --input-shape {text!r}", hint="e.g. 1,3,224,224") from None
    if not dims or any(d <= 0 for d in dims):
        raise UsageError(f"--input-shape needs positive sizes, got {text!r}")
    return dims


def _write_atomic(pairs: list[tuple[Path, bytes]]) -> None:
    """Write every file to a temporary name first; rename them all only when all are written."""
    tmps = []
    try:
        for path, data in pairs:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            tmp.write_bytes(data)
            tmps.append((tmp, path))
        for tmp, path in tmps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in tmps:
            if tmp.exists():
                tmp.unlink()


@main.command(name="import")
@click.argument("source")
@click.option("--output", "-o", "out", required=True, type=click.Path(dir_okay=False),
              help="The .cdl file to write (the weights go next to it as .safetensors).")
@click.option("--args", "args_json", default=None, metavar="JSON",
              help="Keyword arguments of the factory, as a JSON object (package.module:factory sources).")
@click.option("--input-shape", default="1,3,224,224", show_default=True, metavar="D,D,...",
              help="Shape of the example input used to trace a factory's model (dim 0 stays symbolic).")
@click.option("--name", default=None, help="Name of the network (default: from the source).")
def import_cmd(source, out, args_json, input_shape, name):
    """Import SOURCE (a .onnx file, or package.module:factory) as a readable CDL program."""
    from safetensors.numpy import save

    from convdsl.importer import import_onnx, import_torch

    if source.endswith(".onnx") or Path(source).is_file():
        if args_json:
            raise UsageError("--args applies to package.module:factory sources, not to .onnx files")
        result = import_onnx(source, name)
    else:
        module = _factory(source, args_json)
        import torch

        shape = _shape(input_shape)
        batch = max(shape[0], 2)  # a batch of 2 keeps the batch dim symbolic in torch.export
        x = torch.randn((batch,) + shape[1:])
        result = import_torch(module, (x,), name=name or source.rsplit(":", 1)[-1])
    out = Path(out)
    weights_path = out.with_suffix(".safetensors")
    arrays = {k: v if v.flags.c_contiguous else v.copy() for k, v in result.weights.items()}
    _write_atomic([(out, result.text.encode()), (weights_path, save(arrays, metadata={"network": result.graph.name}))])
    click.echo(f"imported {result.graph.name}: {len(result.flat)} ops, {result.graph.params.count():,} params, "
               f"{result.text.count(chr(10))} lines of CDL -> {out}, {weights_path}")
    if result.renamed:
        click.echo(f"  note: {len(result.renamed)} parameter(s) have a convdsl name other than the source's key "
                   "(listed at the top of the .cdl)")


def _factory(source: str, args_json: str | None):
    """``package.module:factory`` -> the module it builds (imported, never evaluated as text)."""
    import importlib

    if ":" not in source:
        raise UsageError(f"{source!r} is neither an .onnx file nor package.module:factory",
                         hint="e.g. torchvision.models:resnet18, timm:convnext_tiny, mypkg.nets:Net")
    mod_name, attr = source.rsplit(":", 1)
    kwargs = {}
    if args_json:
        try:
            kwargs = json.loads(args_json)
        except json.JSONDecodeError as e:
            raise UsageError(f"--args is not valid JSON ({e})") from None
        if not isinstance(kwargs, dict):
            raise UsageError("--args must be a JSON object of keyword arguments")
    try:
        package = importlib.import_module(mod_name)
    except ImportError as e:
        raise SourceError(f"cannot import module '{mod_name}' ({e})", hint="is the package installed?") from None
    fn = package
    for part in attr.split("."):
        if not part.isidentifier() or not hasattr(fn, part):
            raise SourceError(f"module '{mod_name}' has no attribute '{attr}'",
                              hint=_near(part, dir(package)))
        fn = getattr(fn, part)
    if not callable(fn):
        raise SourceError(f"'{source}' is not callable")
    if "pretrained" not in kwargs and _takes(fn, "pretrained"):
        kwargs["pretrained"] = False  # never download at run time
    if "weights" not in kwargs and _takes(fn, "weights"):
        kwargs["weights"] = None
    try:
        module = fn(**kwargs)
    except Exception as e:  # the user's code raised
        raise SourceError(f"calling '{source}' failed: {type(e).__name__}: {e}") from None
    import torch

    if not isinstance(module, torch.nn.Module):
        raise SourceError(f"'{source}' returned {type(module).__name__}, not a torch.nn.Module")
    return module.eval()


def _takes(fn, name: str) -> bool:
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params


def _near(name: str, names) -> str | None:
    from convdsl.errors import did_you_mean

    return did_you_mean(name, [n for n in names if not n.startswith("_")])
