"""convdsl: a compiler for neural networks written as text.

    import convdsl
    g = convdsl.load_graph("examples/resnet18.cdl")     # checked graph IR
    model = convdsl.compile("examples/resnet18.cdl")    # torch nn.Module
"""
from convdsl.api import compile, import_model, load_graph
from convdsl.errors import ConvDSLError
from convdsl.version import __version__

__all__ = ["compile", "import_model", "load_graph", "ConvDSLError", "__version__"]
