"""Shared maths for methods and the runner: parameter snapshots, effective weights, quadratic penalties."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

PEFT_PREFIX = "base_model.model."


def canonical_name(name: str) -> str:
    """Parameter name without PEFT's wrapping, so drift compares the same tensor before and after wrapping."""
    name = name.removeprefix(PEFT_PREFIX)
    return name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".").replace(
        ".original_module.", ".")


def effective_weights(model: nn.Module, device: torch.device | str | None = "cpu", copy: bool = True
                      ) -> dict[str, Tensor]:
    """Detached float32 copies of the weights the model computes with, by canonical name.

    For a LoRA-wrapped layer the weight is W + Σ_adapters ΔW with ΔW = (α/r)·B·A (peft's `get_delta_weight`,
    which applies the scaling α/r), so weight drift for LoRA is measured on what the network uses. The adapter
    factors themselves are not listed.

    Args:
        device: where the copies go; None keeps each weight on its own device.
        copy: False returns the parameters themselves (detached) wherever no conversion is needed: for reading
            at once, before the model changes again.
    """
    out: dict[str, Tensor] = {}
    lora_layers = {}
    for module_name, module in model.named_modules():
        if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
            lora_layers[module_name] = module
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_" in name or not param.is_floating_point():
                continue
            if ".original_module." in name:
                continue  # peft keeps an untrained copy of modules_to_save; the trained copy is what runs
            out[canonical_name(name)] = param.detach().to(device or param.device, torch.float32, copy=copy)
        for module_name, module in lora_layers.items():
            key = canonical_name(module_name + ".base_layer.weight")
            weight = module.base_layer.weight.detach().float()
            for adapter in getattr(module, "active_adapters", []):
                if adapter in getattr(module, "lora_A", {}) and not getattr(module, "merged", False):
                    weight = weight + module.get_delta_weight(adapter).float()
            out[key] = weight.to(device or weight.device, copy=copy)
    return out


def packed_copies(tensors: Mapping[str, Tensor], device: torch.device | str | None = None) -> dict[str, Tensor]:
    """Copies of `tensors` on `device` (None: each on its own), each a view into one buffer per (device, dtype)
    that all of them share; the views do not overlap.

    For copies kept beside a model while it trains (drift's references, a checkpoint's snapshot): as one block
    per tensor, they settle in the heap that the training steps allocate from and change how the allocator
    trims it, so the steps fault their memory in again; one allocation this size is mapped apart from that heap.
    """
    sizes: dict[tuple[torch.device, torch.dtype], int] = {}
    for tensor in tensors.values():
        key = (_placed(tensor, device), tensor.dtype)
        sizes[key] = sizes.get(key, 0) + tensor.numel()
    buffers = {key: torch.empty(n, device=key[0], dtype=key[1]) for key, n in sizes.items()}
    used = dict.fromkeys(buffers, 0)
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        for name, tensor in tensors.items():
            key = (_placed(tensor, device), tensor.dtype)
            start, used[key] = used[key], used[key] + tensor.numel()
            out[name] = buffers[key][start:used[key]].view(tensor.shape).copy_(tensor)
    return out


def copies_into(kept: Mapping[str, Tensor] | None, tensors: Mapping[str, Tensor],
                device: torch.device | str | None = None) -> dict[str, Tensor]:
    """`tensors` copied into `kept` when it holds the same names with the same shapes, dtypes and devices (its
    buffers reused, nothing allocated), else into new `packed_copies` on `device` (None: each tensor's own)."""
    if kept is None or kept.keys() != tensors.keys() or any(
            (kept[n].shape, kept[n].dtype, kept[n].device) != (t.shape, t.dtype, _placed(t, device))
            for n, t in tensors.items()):
        return packed_copies(tensors, device)
    with torch.no_grad():
        for name, tensor in tensors.items():
            kept[name].copy_(tensor)
    return dict(kept)


def _placed(tensor: Tensor, device: torch.device | str | None) -> torch.device:
    """Where a copy of `tensor` goes: `device`, or the tensor's own when None."""
    return torch.device(device) if device is not None else tensor.device


def snapshot(params: Iterable[tuple[str, nn.Parameter]]) -> dict[str, Tensor]:
    """Detached copies of named parameters on their device (anchors for EWC/SI-style penalties)."""
    return {name: p.detach().clone() for name, p in params}


def quadratic_penalty(params: Iterable[tuple[str, Tensor]], anchor: Mapping[str, Tensor],
                      importance: Mapping[str, Tensor]) -> Tensor:
    """Σ_i Ω_i (θ_i − θ*_i)² over the named parameters present in `importance` (no 1/2 or λ applied)."""
    total: Tensor | None = None
    for name, p in params:
        if name in importance:
            term = (importance[name] * (p - anchor[name]).pow(2)).sum()
            total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return total


def flat_grad(params: Iterable[nn.Parameter]) -> Tensor:
    """All gradients concatenated into one vector (zeros where a gradient is missing)."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


def assign_flat_grad(params: Iterable[nn.Parameter], vector: Tensor) -> None:
    """Write a flat vector back into the parameters' `.grad` fields (inverse of `flat_grad`)."""
    offset = 0
    for p in params:
        n = p.numel()
        chunk = vector[offset:offset + n].view_as(p).to(p.dtype)
        if p.grad is None:
            p.grad = chunk.clone()
        else:
            p.grad.copy_(chunk)
        offset += n


def default_optimizer(params: Sequence[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, with its fused kernel wherever every parameter allows it (floating point, on CPU or CUDA).

    The default (per-tensor) AdamW runs a Python loop of small kernels over the ~100 tensors of a BERT-style
    model; the fused kernel updates them all at once (benchmarks/README.md has the measurement). Same update
    rule, rounding aside.
    """
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True if fused else None)
