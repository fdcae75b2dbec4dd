"""convdsl: a compiler for neural networks written as text.

    import convdsl
    g = convdsl.load_graph("examples/resnet18.cdl")     # checked graph IR
    model = convdsl.compile("examples/resnet18.cdl")    # torch nn.Module
"""
__version__ = "0.1.0"

from convdsl.api import compile, import_model, load_graph  # noqa: E402
from convdsl.errors import ConvDSLError  # noqa: E402

__all__ = ["compile", "import_model", "load_graph", "ConvDSLError", "__version__"]
