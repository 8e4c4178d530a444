"""Mean pooling for BERT-style classifiers: the readout sentence-transformers checkpoints were trained with.

transformers' `BertModel` hands its pooler the last layer's token states only, without the attention mask, so
`MeanPooler` takes the mask from a forward pre-hook on the encoder (`capture_mask`) and averages the states of
the real tokens. Installed by `clbench.models.use_mean_pooling`; it has no parameters.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn


class MeanPooler(nn.Module):
    """Masked mean of token states: Σ_t m_t h_t / Σ_t m_t over the positions t with attention mask m_t = 1."""

    def __init__(self) -> None:
        super().__init__()
        self.mask: Tensor | None = None  # [batch, seq] of the encoder call in progress

    def capture_mask(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Forward pre-hook on the encoder: keep the call's attention mask for `forward`."""
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        if mask is not None and mask.dim() == 4:  # an additive [batch, 1, 1, seq] mask: 0 where attended
            mask = (mask[:, 0, 0, :] == 0).long()
        self.mask = mask

    def forward(self, hidden: Tensor) -> Tensor:  # hidden: [batch, seq, dim]
        if self.mask is None:
            return hidden.mean(dim=1)
        weights = self.mask[:, :hidden.shape[1]].to(hidden.dtype).unsqueeze(-1)  # [batch, seq, 1]
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # [batch, dim]
