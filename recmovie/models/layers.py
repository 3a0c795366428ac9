"""Building blocks the neural families share: the MLP builder and weight initialisation."""
from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "silu": nn.SiLU}


def mlp(widths: list[int], activation: str = "relu", dropout: float | None = None, activate_input: bool = False,
        activate_output: bool = False, inplace: bool = False) -> nn.Sequential:
    """Linear layers widths[0] -> ... -> widths[-1] with `activation` between them, and before the
    first / after the last when asked; each activation followed by Dropout(dropout) unless dropout is
    None. `inplace`: a ReLU that overwrites its input (safe where the input is always a fresh sum)."""
    def act() -> list[nn.Module]:
        layer = nn.ReLU(inplace=True) if activation == "relu" and inplace else ACTIVATIONS[activation]()
        return [layer] + ([nn.Dropout(dropout)] if dropout is not None else [])

    layers = act() if activate_input else []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2 or activate_output:
            layers += act()
    return nn.Sequential(*layers)


def init_weights(module: nn.Module, weight: str = "normal", std: float = 0.02, bias_std: float = 0.0,
                 types: tuple[type, ...] = (nn.Linear, nn.Embedding)) -> None:
    """Every layer of `types` in `module`: weights Glorot-uniform (`weight="xavier"`) or N(0, std);
    linear biases N(0, bias_std) (0: zeros); an embedding's padding row zeroed."""
    for m in module.modules():
        if not isinstance(m, types):
            continue
        if weight == "xavier":
            nn.init.xavier_uniform_(m.weight)
        else:
            nn.init.normal_(m.weight, std=std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            if bias_std > 0:
                nn.init.normal_(m.bias, std=bias_std)
            else:
                nn.init.zeros_(m.bias)
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            with torch.no_grad():
                m.weight[m.padding_idx].zero_()
