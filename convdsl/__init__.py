"""convdsl: a compiler for neural networks written as text."""
__version__ = "0.1.0"
