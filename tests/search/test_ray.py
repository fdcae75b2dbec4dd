"""Two candidates through the Ray executor, on a local Ray started (and stopped) by the test."""
from __future__ import annotations

import pytest

from convdsl.search import RayExecutor, Search, SearchConfig

from .spaces import TINY

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_two_candidates_through_ray(local_ray, tmp_path):
    path = tmp_path / "tiny.cdl"
    path.write_text(TINY)
    cfg = SearchConfig(space_file=str(path), space_text=TINY, budget=2, epochs=1, objective=("accuracy", "params"),
                       strategy="random", lag=1)
    s = Search.create(tmp_path / "out", cfg)
    ex = RayExecutor(workers=2)  # uses the Ray this test started
    assert ex.slots == 2
    s.run(ex)
    ex.close()
    rows = s.store.rows("kind = 'search'")
    assert [r.status for r in rows] == ["done", "done"], [r.error for r in rows]
    assert all(r.worker and 0.0 <= r.val_acc <= 1.0 and r.params > 0 for r in rows)
    assert all((tmp_path / "out" / "weights" / f"{r.id}.safetensors").exists() for r in rows)
    s.close()
    assert local_ray.is_initialized()  # the executor leaves a Ray it did not start running
