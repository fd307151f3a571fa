"""ctxsae_core: per-position and contextual sparse autoencoders over windows [batch, T, d].

Knows nothing of images, LLMs or scenes: it sees tensors and a context axis."""

from ctxsae_core.axes import ContextAxis, make_axis
from ctxsae_core.config import (
    BatchTopK,
    ContextualConfig,
    JumpReLU,
    ReLU,
    SAEConfig,
    TopK,
    TrainConfig,
)
from ctxsae_core.contextual import ContextualSAE
from ctxsae_common.errors import InputError
from ctxsae_core.sae import SAE, BaseSAE, LossTerms, SAEOutput

__all__ = [
    "SAE", "BaseSAE", "BatchTopK", "ContextAxis", "ContextualConfig", "ContextualSAE", "InputError",
    "JumpReLU", "LossTerms", "ReLU", "SAEConfig", "SAEOutput", "TopK", "TrainConfig", "make_axis",
]
