"""PyTorch backend: readable generated source + in-memory nn.Module."""
from .artifact import runner, write_artifact
from .codegen import build_module, generate, load_source, state_dict_of
from .lowering import TORCH_LOWERINGS, TorchLowering

__all__ = ["build_module", "generate", "load_source", "state_dict_of", "TORCH_LOWERINGS", "TorchLowering",
           "runner", "write_artifact"]
