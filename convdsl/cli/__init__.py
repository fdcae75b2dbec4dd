"""The ``convdsl`` command line, one module per group of commands.

Every ``ConvDSLError`` is printed as a compiler diagnostic (file:line:col,
caret, expected/got, hint) and turned into its exit code; no traceback is
shown for user mistakes.
"""
from convdsl.cli import build, inspect, train  # noqa: F401  (each module adds its commands to `main`)
from convdsl.cli import tvm  # noqa: F401,E402  (after build: extends `compile` with the TVM options)
from convdsl.cli import prune  # noqa: F401,E402  (the prune command)
from convdsl.cli import search  # noqa: F401,E402  (the search command)
from convdsl.cli import verify  # noqa: F401,E402  (the verify command)
from convdsl.cli import quantize  # noqa: F401,E402  (the quantize command)
from convdsl.cli import tune  # noqa: F401,E402  (the tune command: template knobs)
from convdsl.cli import interop  # noqa: F401,E402  (the import command: ONNX files and PyTorch modules)
from convdsl.cli import lsp  # noqa: F401,E402  (the language server)
from convdsl.cli.common import main

__all__ = ["main"]
