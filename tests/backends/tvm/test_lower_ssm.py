"""The TIR selective scan (lower_ssm.scan_kernel) against the sequential reference, and its exp."""
from __future__ import annotations

import numpy as np
import pytest
import torch

tvm = pytest.importorskip("tvm")

from convdsl.backends.torch.runtime import SelectiveScan  # noqa: E402
from convdsl.backends.tvm.lower_ssm import fast_exp, scan_kernel  # noqa: E402


@pytest.mark.parametrize("state, strength", [(16, 0.1), (5, 4.0)])
def test_scan_kernel_matches_sequential_steps(state, strength):
    rng = np.random.default_rng(state)
    n, c, L = 2, 3, 257
    u, B, C = (rng.standard_normal(s).astype(np.float32) for s in ((n, c, L), (n, L, state), (n, L, state)))
    dt = (strength * rng.random((n, c, L))).astype(np.float32)
    A = -np.tile(np.arange(1, state + 1, dtype=np.float32), (c, 1))
    f = scan_kernel(n, c, L, state, gpu=False).with_attr("global_symbol", "scan")
    lib = tvm.compile(tvm.IRModule({"scan": f}), target=tvm.target.Target({"kind": "llvm"}))
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in (u, dt, A, B, C)] + [tvm.runtime.tensor(np.zeros((n, c, L), np.float32), dev)]
    lib["scan"](*args)
    want = SelectiveScan.scan_steps(*(torch.from_numpy(a).double() for a in (u, dt, A, B, C))).numpy()
    np.testing.assert_allclose(args[-1].numpy(), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_fast_exp_is_float32_accurate():
    from tvm import te

    x = te.placeholder((4096,), "float32", name="x")
    y = te.compute(x.shape, lambda i: fast_exp(x[i]), name="y")
    lib = tvm.compile(te.create_prim_func([x, y]), target="llvm")
    a = np.linspace(-100, 88, 4096).astype(np.float32)
    out = tvm.runtime.tensor(np.zeros(4096, np.float32), tvm.cpu())
    lib(tvm.runtime.tensor(a, tvm.cpu()), out)
    want = np.exp(a.astype(np.float64))
    normal = want > 1e-37
    assert np.max(np.abs(out.numpy()[normal] - want[normal]) / want[normal]) < 1e-6
    assert np.all(out.numpy()[~normal] < 1e-36)
