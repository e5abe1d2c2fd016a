"""Model families and the activation / norm / init factories they share. Which families exist, and what each
takes, is gradexp/config/registry.py's MODELS table.

May import gradexp.config and gradexp.outcome."""
from gradexp.config.registry import MODELS as _FAMILIES
from gradexp.config.registry import resolve as _resolve

from .cnn import CNN
from .layers import init_weights, make_activation, make_norm
from .mlp import MLP
from .resnet import ResNet
from .rnn import GRU, LSTM, RNN
from .transformer import Transformer

# config name (model=...) -> class; every class takes the same constructor keywords.
MODELS = {name: _resolve(family.target) for name, family in _FAMILIES.items()}

__all__ = ["CNN", "GRU", "LSTM", "MLP", "MODELS", "RNN", "ResNet", "Transformer", "init_weights", "make_activation", "make_norm"]
