"""The layer contract: the instruments receive an explicit, ordered list of (name, module), the layers to
watch, and know nothing else about the model.

Where the list comes from, first match wins:
1. name patterns (`model.watch`, `Monitor(watch=...)`): fnmatch patterns against `named_modules()` names;
2. the model's own declaration: a `watched_layers()` method returning the list (gradexp's families: layers.<i>);
3. discovery, for any other nn.Module: the repeated blocks of its largest ModuleList/Sequential, else the leaf
   modules that hold parameters.

Probes that need more than a layer's output ask for a declared capability (`has_capability`), never for an
attribute name: a layer declares the class attribute `gradexp_capabilities = frozenset({...})`."""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any, NamedTuple, Optional, Sequence

from torch import Tensor, nn

from gradexp.config.schema import ConfigError

Layers = list[tuple[str, nn.Module]]

# A layer with this capability calls `self.on_step(t, h_t)` with every hidden state h_t (B, H), as a tensor whose gradient
# is the total dLoss/dh_t (through the recurrence and the layer above), whenever `on_step` is set, and runs its fused
# kernel while it is None (probes/bptt.py).
TIME_STEPS = "time_steps"
# A layer with this capability says where its activation function's output can be seen:
# `activation_site() -> (module, read_its_input, unit_dim)` (probes/act_stats.py: saturation, dead units).
ACTIVATION_SITE = "activation_site"
# A layer with this capability has self-attention: `attention()` returns the module whose `on_attention` callback,
# while set, receives its masked scores and softmax weights (B, heads, T, T) every forward (probes/attn_entropy.py).
ATTENTION = "attention"


class NoLayersFound(ConfigError):
    """Nothing to watch: a one-line refusal like any bad value (the CLI exits 2)."""


def layer_output(output: Any) -> Optional[Tensor]:
    """The tensor a layer's output stands for, which the instruments measure: the output itself, or the first tensor of
    a tuple or list (nn.MultiheadAttention's (output, weights), a block's (x, aux_loss), a Hugging Face layer's
    (hidden_states, ...)): a tuple lost every activation tag in silence (found by a researcher). None otherwise."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((t for t in output if isinstance(t, Tensor)), None)
    return None


def has_capability(module: nn.Module, capability: str) -> bool:
    return capability in getattr(type(module), "gradexp_capabilities", frozenset())


def watched_layers(model: nn.Module, patterns: Sequence[str] = (), key: str = "model.watch") -> Layers:
    """The ordered (name, module) list the instruments watch; raises NoLayersFound when it would be empty. `key`:
    where the user gave the patterns (the Monitor's argument is `watch`)."""
    if patterns:
        layers = matching(model, patterns, key)
    elif callable(getattr(model, "watched_layers", None)):
        layers = list(model.watched_layers())
    else:
        layers = discover(model)
    if not layers:
        raise NoLayersFound("model", type(model).__name__, f"a model with parameters to watch, or {key}"
                            " patterns that match its modules (it has none)")
    return layers


class Depths(NamedTuple):
    """Where the watched layers lie in the model (depths_of)."""
    per_layer: list[int]  # each watched layer's depth
    model: int            # the hidden layers the gradient crosses, which the verdict's cause names


def depths_of(model: nn.Module, layers: Layers) -> Depths:
    """Each watched layer's depth: its place among the layers watched by default (the model's own declaration, else
    discovery), or the place of the default layer it is part of (`layers.3.linear` is in `layers.3`); a module before
    the first default layer or after the last (an embedding, a head) goes before or after them, in the order the
    model registers its modules. Where the watched layers do not run along those places (two parts of one layer may
    share one), their places in the list. A watched subset, model.watch=[layers.0,layers.5], spans 5 layers, not 1
    (found by a new user: its gain read x0.058 per layer where all six layers read x0.565, and layers.5 was called
    'layer 1'). None is below 0 (an embedding before layer 0 is 0, and the rest one further).
    The model's depth: as many as it watches by default (and the watched ones outside them) where the watched layers
    lie along those, else as many as are watched. One walk of the model for both (a run needs both)."""
    try:
        default = watched_layers(model)
    except NoLayersFound:  # nothing to discover (a user's parameters at the top level): the watched list is all
        default = []
    place = {id(module): i for i, (_, module) in enumerate(default)}
    found = [place.get(id(module), _containing(default, name)) for name, module in layers]
    before, after = _outside(model, default, [module for (_, module), i in zip(layers, found) if i is None])
    found = [i if i is not None else before.get(id(module), after.get(id(module))) for (_, module), i in
             zip(layers, found)]
    if all(i is not None for i in found) and all(a <= b for a, b in zip(found, found[1:])) and found[0] < found[-1]:
        return Depths([i - min(found[0], 0) for i in found], len(default) + len(before) + len(after))
    return Depths(list(range(len(layers))), len(layers))


def _containing(default: Layers, name: str) -> Optional[int]:
    """The place of the default layer whose name is a dotted prefix of `name`, None without one."""
    return next((i for i, (outer, _) in enumerate(default) if name.startswith(f"{outer}.")), None)


def _outside(model: nn.Module, default: Layers, modules: list[nn.Module]) -> tuple[dict[int, int], dict[int, int]]:
    """Places for modules registered before the first default layer (-k .. -1) and after the last one's
    (len(default) ..), by registration order; a module between two default layers gets none."""
    if not default or not modules:
        return {}, {}
    order = {id(module): k for k, (_, module) in enumerate(model.named_modules())}
    first = order[id(default[0][1])]
    last = max(order[id(module)] for name, module in model.named_modules() if name and any(
        name == outer or name.startswith(f"{outer}.") for outer, _ in default[-1:]))
    early = sorted((m for m in modules if order.get(id(m), first) < first), key=lambda m: order[id(m)])
    late = sorted((m for m in modules if order.get(id(m), last) > last), key=lambda m: order[id(m)])
    return ({id(m): k - len(early) for k, m in enumerate(early)},
            {id(m): len(default) + k for k, m in enumerate(late)})


def matching(model: nn.Module, patterns: Sequence[str], key: str = "model.watch") -> Layers:
    """Modules whose name matches any pattern, in registration (forward) order; each pattern must match. Of one
    pattern's matches, a module inside another is left out: fnmatch's `*` also matches dots, so `blocks.*` matched
    blocks.0 and blocks.0.conv alike, and the depth profile interleaved blocks with their own parts (found by a user).
    A module another pattern names stays (watch=["backbone", "backbone.layer4"] watches both)."""
    named = [(name, m) for name, m in model.named_modules() if name]
    kept: set[str] = set()
    for pattern in patterns:
        outer: list[str] = []  # this pattern's matches not inside another of them (registration order: parents first)
        for name, _ in named:
            if fnmatchcase(name, pattern) and not any(name.startswith(f"{parent}.") for parent in outer):
                outer.append(name)
        if not outer:
            sample = ", ".join(name for name, _ in named[:6])
            raise NoLayersFound(key, pattern, f"fnmatch patterns that match module names, e.g. {sample}")
        kept.update(outer)
    return [(name, m) for name, m in named if name in kept]


def discover(model: nn.Module) -> Layers:
    """The repeated blocks of the largest ModuleList/Sequential (a Transformer's blocks, a ResNet stage),
    else the leaf modules that hold parameters."""
    containers = [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.ModuleList, nn.Sequential))]
    best = max(containers, key=lambda c: len(_repeated(c[1])), default=None)
    if best is not None and len(_repeated(best[1])) >= 2:
        prefix = f"{best[0]}." if best[0] else ""
        return [(f"{prefix}{i}", child) for i, child in _repeated(best[1])]
    return [(name, m) for name, m in model.named_modules() if name and any(True for _ in m.parameters(recurse=False))]


def _repeated(container: nn.Module) -> list[tuple[str, nn.Module]]:
    """The children of the container's most common type that hold parameters."""
    children = [(name, c) for name, c in container.named_children() if any(True for _ in c.parameters())]
    if not children:
        return []
    types = [type(c) for _, c in children]
    common = max(set(types), key=types.count)
    return [(name, c) for name, c in children if type(c) is common]
