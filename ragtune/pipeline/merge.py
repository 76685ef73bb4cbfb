"""Weight-space ensemble (WiSE-FT, Wortsman et al. 2022): the trained weights moved part of the way back to
where training started.

Fine-tuning on synthetic queries shifts the embedder towards the queries a small LLM writes; the people who
search write differently. Averaging the start and the trained weights keeps part of what was learned and part
of what the start already did well, which made stage 1 robust on a held-out corpus's human queries
(docs/embed.md). Only the trained parameters move: a frozen base (``linear_adapter``) is the same at both ends.
"""

from __future__ import annotations

import torch


def trainable_snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter that training will update, by name: the start of the ensemble.

    Example:
        >>> layer = torch.nn.Linear(2, 1)
        >>> _ = layer.bias.requires_grad_(False)
        >>> sorted(trainable_snapshot(layer))
        ['weight']
    """
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def mix_back(model: torch.nn.Module, start: dict[str, torch.Tensor], share: float) -> None:
    """Set each parameter in ``start`` to ``share`` x start + (1 - share) x its trained value, in place.

    Args:
        model: the trained model.
        start: :func:`trainable_snapshot` taken before training.
        share: the start's share, in [0, 1) (the config checks ``embed.base_share``): 0 keeps the trained weights.

    Example:
        >>> layer = torch.nn.Linear(1, 1, bias=False)
        >>> _ = layer.weight.data.fill_(2.0)
        >>> start = trainable_snapshot(layer)
        >>> _ = layer.weight.data.fill_(4.0)  # what training did
        >>> mix_back(layer, start, 0.25)
        >>> layer.weight.item()
        3.5
    """
    for name, param in model.named_parameters():
        if name in start:
            param.mul_(1 - share).add_(start[name].to(param.device, param.dtype), alpha=share)
