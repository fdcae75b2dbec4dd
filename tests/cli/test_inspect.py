"""The commands that look at a program (convdsl/cli/inspect.py), run as a user runs them."""
from __future__ import annotations

import csv
import io
import json

from click.testing import CliRunner

from convdsl.cli import main

EXAMPLES = "examples"


def _stats(*args):
    r = CliRunner().invoke(main, ["stats", *args])
    assert r.exit_code == 0, r.output
    return r.output


def test_piped_stats_are_complete_in_every_format():
    """Issue 14 item 8: `convdsl stats net.cdl | less` was cut to 80 columns: the summary ended
    mid-number, names wrapped mid-word (`features.3.s` / `queeze`), ops were cut (`maxpo…`)."""
    f = f"{EXAMPLES}/mobilenet_v3_large.cdl"
    doc = json.loads(_stats(f, "--format", "json"))
    table = _stats(f)  # CliRunner's stdout is not a terminal, as a pipe
    lines = table.splitlines()
    for layer in doc["layers"]:
        row = next(ln for ln in lines if ln.startswith(f"│ {layer['name']} "))
        cells = [c.strip() for c in row.split("│")[1:-1]]
        assert cells[:2] == [layer["name"], layer["op"]]
        assert cells[3:6] == [f"{n:,}" if n else "-" for n in (layer["params"], layer["macs"], layer["flops"])]
    t = doc["totals"]
    assert lines[-1] == (f"{t['params']:,} params ({t['trainable_params']:,} trainable, {t['buffers']:,} buffer "
                         "elements) · 216.59 MMACs · 452.02 MFLOPs · activations 52.1 MiB (sum), peak "
                         f"{t['peak_act_bytes'] / 2**20:.1f} MiB (inference) · weights 21.0 MiB")
    for fmt, sep in (("tsv", "\t"), ("csv", ",")):
        rows = list(csv.DictReader(io.StringIO(_stats(f, "--format", fmt)), delimiter=sep))
        assert [r["layer"] for r in rows] == [x["name"] for x in doc["layers"]]
        assert [int(r["flops"]) for r in rows] == [x["flops"] for x in doc["layers"]]
        assert sum(int(r["params"]) for r in rows) == t["params"]


def test_every_command_that_looks_at_a_search_space_shows_its_first_options(tmp_path):
    """Issue 14 item 13: `stats papers/nasnet_cell.cdl` exited 7 while `check` took the first
    options.  Now check, stats, graph and print all show the first options and say so on stderr
    (their stdout stays a table, a graph, a program); compile still refuses."""
    f = f"{EXAMPLES}/papers/nasnet_cell.cdl"
    runner = CliRunner()
    doc = None
    for cmd in (["check"], ["stats", "--format", "json"], ["graph"], ["print"]):
        r = runner.invoke(main, [*cmd, f])
        assert r.exit_code == 0, r.output
        assert "search space: 20 open choice(s)" in r.output
        if cmd[0] == "stats":
            doc = json.loads(r.stdout)
    chosen = json.loads(runner.invoke(main, ["stats", "--json", f, *(f"--choose={k}=0" for k in (
        f"b{b}.{p}" for b in range(5) for p in ("in_a", "in_b", "op_a", "op_b")))]).stdout)
    assert doc == chosen
    r = runner.invoke(main, ["compile", f, "-o", str(tmp_path / "out")])
    assert r.exit_code == 7 and "--choose b0.in_a=INDEX" in r.output


def test_outputs_have_the_names_the_program_gave_them_in_every_command(tmp_path):
    """Issue 14 item 11: `check` and manifest.json said `logits`, `convdsl run` of the compiled
    folder said `flatten_` (the node), and a returned expression was called `out`."""
    f = tmp_path / "net.cdl"
    f.write_text("network n(x: f32[N, 3, 8, 8]) {\n"
                 "    logits = x | conv2d(4, 3) | flatten\n"
                 "    return logits, x | global_avgpool(keepdim=false) | linear(2) as fc\n"
                 "}\n")
    runner = CliRunner()
    check = runner.invoke(main, ["check", str(f)])
    assert "output logits: f32[N, 144]" in check.output and "output fc: f32[N, 2]" in check.output
    assert runner.invoke(main, ["compile", str(f), "-o", str(tmp_path / "out")]).exit_code == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [o["name"] for o in manifest["outputs"]] == ["logits", "fc"]
    for target in (f, tmp_path / "out"):
        r = runner.invoke(main, ["run", str(target)])
        assert r.exit_code == 0, r.output
        assert [ln.split(":")[0].strip() for ln in r.output.splitlines()[1:]] == ["logits", "fc"]


def test_help_says_what_stats_count_and_which_backends_compile():
    """Issue 14 item 14: MACs/FLOPs and the activation sum were defined only in a module docstring,
    and `compile --help` said 'Code generator: torch.'"""
    stats = CliRunner().invoke(main, ["stats", "--help"]).output
    for words in ("multiply-accumulates of conv, linear, matmul", "2 per MAC", "SUM over layers",
                  "PEAK of one inference pass"):
        assert words in " ".join(stats.split()), words
    compile_help = " ".join(CliRunner().invoke(main, ["compile", "--help"]).output.split())
    for backend in ("torch", "tvm-llvm", "tvm-cuda", "onnx"):
        assert backend in compile_help.split("Code generator:")[1]
    import convdsl

    assert "weights" in convdsl.compile.__doc__ and "bind" in convdsl.compile.__doc__


def test_check_folds_a_symbolic_batch_and_back_as_the_user_wrote_it(tmp_path):
    """Issue 14 item 2, the user's commands: reshape([-1, 64, 8, 8]) after reshape([-1, 16, 8, 8]) on
    f32[N, 64, 8, 8] failed with 'cannot view f32[4*N, 16, 8, 8]', and reshape([dim(x, 0), ...]) with
    'bad value for reshape(shape=...)'; a shape that cannot hold for every N is a located error."""
    f = tmp_path / "fold.cdl"
    f.write_text("network fold(x: f32[N, 64, 8, 8]) {\n"
                 "    y = x | reshape([-1, 16, 8, 8])\n"
                 "    z = y | reshape([-1, 64, 8, 8])\n"
                 "    return z | reshape([dim(x, 0), 64, 64]) as out\n"
                 "}\n")
    r = CliRunner().invoke(main, ["check", str(f)])
    assert r.exit_code == 0, r.output
    assert "output out: f32[N, 64, 64]" in r.output
    f.write_text(f.read_text().replace("[-1, 16, 8, 8]", "[-1, 3, 8, 8]"))
    r = CliRunner().invoke(main, ["check", str(f)])
    assert r.exit_code == 5 and f"{f}:2:13: shape error: reshape: cannot view f32[N, 64, 8, 8]" in r.output
    assert "-1 cannot take a part of N" in r.output
