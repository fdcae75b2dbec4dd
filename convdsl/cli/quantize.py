"""The quantize command: a trained program -> an int8 (or fp16/bf16) program, its weights and a report."""
from __future__ import annotations

import json
from pathlib import Path

import click

from convdsl.errors import UsageError
from convdsl.outputs import output_folder, staged_folder
from convdsl.cli.common import Count, Number, program_graph, main, program_options, weights_options


class WeightBits(Count):
    """--weight-bits: 2..8, or auto (this CPU's choice, ``passes.quantize.weight_bits_for_cpu``)."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        return super().convert(value, param, ctx)


@main.command(name="quantize")
@click.argument("file", type=click.Path(dir_okay=False))
@program_options
@weights_options("Trained weights (.safetensors).")
@click.option("--calib", default=None, help="Calibration data: digits, mnist1d[:...] or a .npz (its training inputs; an "
              ".npz of inputs x alone, no labels y, gives its first rows).")
@click.option("--calib-samples", type=Count(1, 10**7), default=512, show_default=True, help="Calibration inputs to run.")
@click.option("--method", "-m", type=click.Choice(["minmax", "percentile", "mse"]), default="minmax",
              show_default=True, help="How activation ranges are chosen.")
@click.option("--percentile", type=Number(0.0, 100.0, lo_open=True), default=99.99, show_default=True, help="Percentile kept by --method percentile.")
@click.option("--keep-float", multiple=True, metavar="NODE", help="Keep NODE in float (id, fnmatch pattern or scope).")
@click.option("--weight-bits", type=WeightBits(2, 8), default="auto", show_default=True,
              help="Weight precision (2-8, stored as int8), or auto: 7 on an AVX2 CPU without AVX-512 VNNI "
                   "(vpmaddubsw then sums exactly), else 8.")
@click.option("--act-dtype", type=click.Choice(["u8", "i8"]), default="u8", show_default=True,
              help="Activation dtype (u8: asymmetric, x86's u8 x s8).")
@click.option("--cast", "cast_to", type=click.Choice(["f16", "bf16"]), default=None,
              help="Instead of int8: cast the network to f16 or bf16 (no calibration).")
@click.option("--no-fold-bn", is_flag=True, help="Do not fold batchnorms into convs first.")
@click.option("--float-residuals", is_flag=True,
              help="Residual adds read the float value a layer's input was quantized from (default: its int8 "
                   "value, dequantized, as ONNX QDQ graphs do: one copy of the tensor).")
@click.option("--data", "-d", default=None, help="Report accuracy before and after on this data's validation split.")
@click.option("--output", "-o", "out", required=True, type=click.Path(file_okay=False), help="Folder to write.")
def quantize_cmd(file, network, sets, choose, bind, max_memory, seed, weights, calib, calib_samples, method,
                 percentile, keep_float, weight_bits, act_dtype, cast_to, no_fold_bn, float_residuals, data, out):
    """Quantize FILE; write OUT/<name>.cdl, OUT/weights.safetensors and OUT/report.{json,md}.

    Post-training int8: batchnorms are folded, convs and linears get int8 weights (symmetric per
    output channel) and int8 activations (per tensor, ranges from --calib), the rest stays float.
    The program is printed as flat CDL with every scale written out; `check`, `compile`, `eval`
    and `--weights` take it as it is."""
    from convdsl.backends.torch import build_module
    from convdsl.lang.printer import print_graph
    from convdsl.ir.verify import verify
    from convdsl.ir.weights import save_weights
    from convdsl.passes import run_passes
    from convdsl.passes.cast import cast
    from convdsl.passes.quantize import quantize_with_report
    from convdsl.train import calibration_batches
    from convdsl.cli.prune import with_scope_comments

    if cast_to is None and not calib:
        raise UsageError("int8 quantization needs calibration data", hint="add --calib digits (or --cast f16)")
    stem = Path(file).stem
    names = {f"{stem}.cdl", "weights.safetensors", "report.json", "report.md"}
    output_folder(out, lambda existing: names)  # refused now, not after calibrating
    g = program_graph(file, network, sets, choose, bind, max_memory, seed, weights=weights)
    folded = g if no_fold_bn else run_passes(g, "fold_bn,remove_identity,dce")
    if cast_to:
        q = cast(folded, cast_to)
        what = f"cast to {cast_to}"
        report: dict = {"cast": cast_to}
    else:
        batches = calibration_batches(calib, samples=calib_samples)  # the training split train/eval use
        from convdsl.backends.tvm.targets import cpu_flags

        q, done = quantize_with_report(folded, batches, method=method, per_layer={k: "float" for k in keep_float},
                                       weight_bits=weight_bits, act_dtype=act_dtype, percentile=percentile,
                                       build=build_module, cpu_flags=cpu_flags(), reuse_int8=not float_residuals)
        q = verify(q)
        report = dict(done.to_json(), calibration=calib)
        why = f" ({done.weight_bits_reason})" if weight_bits == "auto" else ""
        what = (f"int8 ({method} calibration on {report['calibration_samples']} inputs of {calib}, "
                f"{done.weight_bits}-bit weights{why}, {act_dtype} activations)")
    report["params_bytes"] = {"before": g.params.nbytes(), "after": q.params.nbytes()}
    if data:
        from convdsl.train import evaluate, load_dataset

        dataset = load_dataset(data, seed=0)
        report["accuracy"] = {"float": evaluate(g, dataset, build=build_module)["accuracy"],
                              "quantized": evaluate(q, dataset, build=build_module)["accuracy"]}

    folder = Path(out)
    header = f"{q.name}, {what} from {Path(file).name} by `convdsl quantize`.\nWeights: weights.safetensors beside this file."
    with staged_folder(out, replaceable=lambda existing: names) as tmp:  # all four files, or none
        (tmp / f"{stem}.cdl").write_text(with_scope_comments(q, print_graph(q, header=header)), encoding="utf-8")
        save_weights(q, tmp / "weights.safetensors", metadata={"quantized_from": Path(file).name, "how": what})
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        (tmp / "report.md").write_text(to_markdown(q.name, what, report), encoding="utf-8")

    click.echo(f"quantized {q.name}: {what}")
    if "layers" in report:
        click.echo(f"  {len(report['layers'])} layers in int8, {len(report['float'])} kept in float")
        for nid, why in report["float"].items():
            click.echo(f"    {nid}: {why}")
    b = report["params_bytes"]
    click.echo(f"  weights {b['before']:,} -> {b['after']:,} bytes")
    if "accuracy" in report:
        a = report["accuracy"]
        click.echo(f"  accuracy on {data}: float {100 * a['float']:.2f}%, quantized {100 * a['quantized']:.2f}% "
                   f"({100 * (a['quantized'] - a['float']):+.2f} points)")
    for f in (f"{stem}.cdl", "weights.safetensors", "report.json", "report.md"):
        click.echo(f"  {folder / f}")


def to_markdown(name: str, what: str, report: dict) -> str:
    lines = [f"# {name}: {what}", ""]
    if "accuracy" in report:
        a = report["accuracy"]
        lines += [f"Accuracy: float {100 * a['float']:.2f}%, quantized {100 * a['quantized']:.2f}% "
                  f"({100 * (a['quantized'] - a['float']):+.2f} points).", ""]
    b = report["params_bytes"]
    lines += [f"Weights: {b['before']:,} -> {b['after']:,} bytes.", ""]
    if "layers" in report:
        lines += ["| layer | op | input scale / zp | output | fused activation |", "|---|---|---|---|---|"]
        for r in report["layers"]:
            o = r["out"]
            out = "f32" if o["dtype"] == "f32" else f"{o['dtype']} {o['scale']:.6g} / {o['zero_point']}"
            i = r["in"]
            inp = (f"{i['scale']:.6g} / {i['zero_point']}" if "scale" in i  # an int8 input; qlayernorm / qgelu read f32
                   else f"f32 (16-bit step {i['x_scale']:.6g})" if "x_scale" in i else "f32")
            lines.append(f"| {r['node']} | {r['op']} | {inp} | {out} | {r.get('activation') or ('relu' if r['relu'] else '')} |")
        if report["float"]:
            lines += ["", "Kept in float:", ""] + [f"- {k}: {v}" for k, v in report["float"].items()]
    return "\n".join(lines) + "\n"
