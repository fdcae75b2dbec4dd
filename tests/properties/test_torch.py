"""The torch backend: the standalone artifact, equivalent spellings and torch.export
agree with the in-memory module."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from hypothesis import given

from convdsl.artifact import write_artifact
from convdsl.verify import differential as D
from convdsl.verify.draws import RandomDraw
from convdsl.verify.programs import generate
from convdsl.verify.strategies import case_of, cases

from .helpers import check, examples


@examples(ci=20, thorough=300)
@given(cases())
def test_standalone_artifact_is_bit_identical(case) -> None:
    check(case, ["standalone"], "test_standalone_artifact_is_bit_identical")


@examples(ci=40, thorough=300)
@given(cases())
def test_equivalent_spellings_agree(case) -> None:
    check(case, ["twin"], "test_equivalent_spellings_agree")


@examples(ci=6, thorough=150)
@given(cases(max_statements=5))
def test_torch_export_agrees_with_eager(case) -> None:
    check(case, ["export"], "test_torch_export_agrees_with_eager")


def test_standalone_files_run_in_a_fresh_interpreter(tmp_path) -> None:
    """A sample of artifacts, run by a new Python process that imports nothing from convdsl."""
    expected = {}
    for seed in (1, 2, 3):
        case = case_of(generate(RandomDraw(seed)), seed=seed)
        folder = tmp_path / f"p{seed}"
        write_artifact(case.graph(), folder, "torch")
        for i, x in enumerate(case.inputs()):
            np.save(folder / f"in{i}.npy", x)
        expected[str(folder)] = case.reference()
    script = (
        "import importlib.util, json, sys, glob, numpy as np, torch\n"
        "torch.set_num_threads(1)  # as the in-process reference: the same summation order\n"
        "for folder in json.loads(sys.argv[1]):\n"
        "    spec = importlib.util.spec_from_file_location('m', folder + '/model.py')\n"
        "    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "    xs = [torch.from_numpy(np.load(p)) for p in sorted(glob.glob(folder + '/in*.npy'))]\n"
        "    with torch.inference_mode():\n"
        "        out = m.load()(*xs)\n"
        "    for i, o in enumerate(out if isinstance(out, tuple) else (out,)):\n"
        "        np.save(folder + f'/out{i}.npy', o.numpy())\n"
        "    assert 'convdsl' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script, json.dumps(list(expected))], check=True, cwd=tmp_path,
                   timeout=300)
    for folder, ref in expected.items():
        got = [np.load(f"{folder}/out{i}.npy") for i in range(len(ref))]
        c = D.compare(ref, got, D.EXACT)
        assert c.ok, f"{folder}: {c.why}"
