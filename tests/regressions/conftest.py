"""The replayed regressions run with one torch thread, like the property tests they come from."""
from tests.properties.conftest import _one_torch_thread  # noqa: F401  (an autouse fixture)
