"""Options every command shares (convdsl/cli/common.py), run as a user runs them."""
from __future__ import annotations

import textwrap

import numpy as np
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from convdsl.cli import main

NET = textwrap.dedent("""
    network n(x: f32[N, 3, 8, 8]) {
        y = x | conv2d(4, 3, pad=1, bias=false) as "features.0" | batchnorm as "features.1" | relu
        return y | global_avgpool(keepdim=false) | linear(5) as classifier
    }
    """)


class Reference(torch.nn.Module):
    """The torch model the program describes, with a buffer the program does not have (as
    MaxViT's relative_position_index) and torchvision's num_batches_tracked."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1, bias=False), torch.nn.BatchNorm2d(4))
        self.classifier = torch.nn.Linear(4, 5)
        self.register_buffer("relative_position_index", torch.arange(6))

    def forward(self, x):
        return self.classifier(torch.relu(self.features(x)).mean((2, 3)))


def _setup(tmp_path, prefix=""):
    torch.manual_seed(0)
    ref = Reference().eval()
    ref.features[1].running_mean.uniform_(-1, 1)
    (tmp_path / "net.cdl").write_text(NET)
    save_file({prefix + k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "w.safetensors"))
    return ref


def _run(tmp_path, *args):
    return CliRunner().invoke(main, ["run", str(tmp_path / "net.cdl"), "-w", str(tmp_path / "w.safetensors"),
                                     "--input", str(tmp_path / "x.npy"), "--save", str(tmp_path / "y.npy"), *args])


def test_weights_with_a_derived_buffer_load_non_strict_and_say_what_was_ignored(tmp_path):
    """Issue 14 item 5: a state_dict with a buffer the program derives itself was refused, with
    10 notes, no totals, num_batches_tracked first."""
    ref = _setup(tmp_path, prefix="module.")
    x = torch.randn(2, 3, 8, 8)
    np.save(tmp_path / "x.npy", x.numpy())

    strict = _run(tmp_path)
    assert strict.exit_code == 9
    notes = [line for line in strict.output.splitlines() if "note:" in line]
    assert [n.split(":")[1] for n in notes] == [" 9 key(s) of the file not in the network",
                                                " 8 parameter(s) of the network missing from the file"]
    assert notes[0].endswith("and 4 more") and notes[1].endswith("and 3 more")
    assert "'module.classifier.bias' (did you mean 'classifier.bias'" in notes[0]
    assert "num_batches_tracked" not in strict.output  # the counters rank last, behind the real mismatches
    assert "--weights-map" in strict.output and "--non-strict" in strict.output

    ok = _run(tmp_path, "--weights-map", r"^module\.=", "--non-strict")
    assert ok.exit_code == 0, ok.output
    assert "renamed 9 key(s)" in ok.output
    assert ("warning: --non-strict: 1 key(s) of the file not in the network, ignored: relative_position_index"
            in ok.output)
    with torch.no_grad():
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"), ref(x).numpy(), rtol=1e-5, atol=1e-6)


def test_bad_weights_map_rules_are_usage_errors(tmp_path):
    _setup(tmp_path)
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 8, 8), np.float32))
    r = _run(tmp_path, "--weights-map", "(=x")
    assert r.exit_code == 2 and "--weights-map '(=x'" in r.output and "Traceback" not in r.output
    r = _run(tmp_path, "--weights-map", "^(features)=\\2")
    assert r.exit_code == 2 and "invalid group reference" in r.output
