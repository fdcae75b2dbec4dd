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
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=2000, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
