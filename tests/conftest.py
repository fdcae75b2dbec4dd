"""Shared pytest configuration.

Hypothesis profiles, chosen with ``HYPOTHESIS_PROFILE`` (default ``ci``):

- ``ci``: no deadline (CI machines are slow and shared) and hypothesis'
  default example count for ordinary property tests; the front-end fuzz tests
  (tests/lang/test_fuzz.py) scale themselves to thousands of examples.
- ``thorough``: many more examples everywhere, for a long local or nightly run.

The property suite on random programs (tests/properties/) also scales itself:
each test sets its example count for ``ci`` (the whole suite in a few minutes
on two cores) and for ``thorough`` (2,000 programs in test_all_properties); see
tests/properties/helpers.py and docs/testing.md.

Test tiers (markers registered in pyproject.toml, where unknown markers are errors):
``tvm`` needs TVM, ``zoo`` builds and runs the example models, ``property`` runs hypothesis
suites over random programs (and replays the programs they found), ``slow`` is anything else
that takes seconds.  Whole folders and files get their tier here (``TIERS``); single slow tests
carry ``@pytest.mark.slow``.  The developer's loop (1,154 tests, 80-87 s on two shared cores):

    python -m pytest -q -n 2 -m "not slow and not zoo and not tvm and not property"
"""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=2000, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# path under tests/ (a folder ending in / or a file) -> the tiers of every test in it
TIERS = {
    "backends/tvm/": ("tvm",),
    "benchmarks/": ("tvm",),
    "properties/test_tvm.py": ("tvm", "property"),
    "properties/": ("property",),
    "regressions/test_replay.py": ("property",),
    "lang/test_fuzz.py": ("property",),
    "test_examples.py": ("zoo",),
    "test_papers.py": ("zoo",),
    "test_torchvision_equivalence.py": ("zoo",),
    "test_zoo_reference.py": ("zoo",),
    "passes/test_prune_zoo.py": ("zoo",),
    "search/test_cli.py": ("slow",),
    "search/test_ray.py": ("slow",),
    "train/test_trainer.py": ("slow",),
    "adversarial/": ("slow",),  # real command lines in subprocesses, under memory caps and time limits
    "backends/onnx/test_examples.py": ("zoo",),
    "interop/": ("slow",),  # torch.export and ONNX round trips
    "lsp/test_fuzz.py": ("property",),
}
_TESTS = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        rel = os.path.relpath(str(item.path), _TESTS).replace(os.sep, "/")
        for prefix, tiers in TIERS.items():
            if rel == prefix or (prefix.endswith("/") and rel.startswith(prefix)):
                for tier in tiers:
                    item.add_marker(getattr(pytest.mark, tier))
                break
