"""Model families and the activation / norm / init factories they share."""
from .cnn import CNN
from .layers import (
    ACTIVATIONS,
    INIT_SCHEMES,
    KAIMING_NONLINEARITY,
    NORMS,
    init_weights,
    make_activation,
    make_norm,
)
from .mlp import MLP
from .rnn import GRU, LSTM, RNN

# config name (model=...) -> class; every class takes the same constructor keywords.
MODELS = {"mlp": MLP, "cnn": CNN, "rnn": RNN, "lstm": LSTM, "gru": GRU}

__all__ = [
    "ACTIVATIONS", "CNN", "GRU", "INIT_SCHEMES", "KAIMING_NONLINEARITY", "LSTM", "MLP", "MODELS", "NORMS",
    "RNN", "init_weights", "make_activation", "make_norm",
]
