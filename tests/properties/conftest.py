"""One torch thread while the property tests run: the programs are tiny, and on a shared
two-core machine thread contention makes a 4x4 convolution cost 40 ms instead of 1 ms."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
