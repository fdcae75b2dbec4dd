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
                         "elements) · 216.59 MMACs · 452.02 MFLOPs · activations 52.1 MiB · weights 21.0 MiB")
    for fmt, sep in (("tsv", "\t"), ("csv", ",")):
        rows = list(csv.DictReader(io.StringIO(_stats(f, "--format", fmt)), delimiter=sep))
        assert [r["layer"] for r in rows] == [x["name"] for x in doc["layers"]]
        assert [int(r["flops"]) for r in rows] == [x["flops"] for x in doc["layers"]]
        assert sum(int(r["params"]) for r in rows) == t["params"]
