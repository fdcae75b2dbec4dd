"""PyTorch backend: readable generated source + in-memory nn.Module."""
from convdsl.backends.torch.artifact import check_artifact, runner, write_artifact
from convdsl.backends.torch.codegen import build_module, generate, load_source, state_dict_of
from convdsl.backends.torch.common import TorchLowering
from convdsl.backends.torch.lowering import TORCH_LOWERINGS

__all__ = ["build_module", "generate", "load_source", "state_dict_of", "TORCH_LOWERINGS", "TorchLowering",
           "runner", "write_artifact", "check_artifact"]
