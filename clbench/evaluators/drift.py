"""Weight-space and function-space drift between a model before and after training a task.

Weight space (fractional Frobenius change, as in Figure 1 of the FIP paper, Raghavan & Thomson 2024):

    d(W) = ‖W_after − W_before‖_F / ‖W_before‖_F                per parameter tensor
    d    = ‖θ_after − θ_before‖_F / ‖θ_before‖_F                overall, θ = all tensors concatenated
    d(G) = sqrt(Σ_{W∈G} ‖ΔW‖²_F) / sqrt(Σ_{W∈G} ‖W_before‖²_F)  per group G (e.g. one transformer layer)

For LoRA, pass the *effective* weights W + ΔW with ΔW = (α/r)·B·A (`lora_delta_weight`); the FIP authors'
notebook omitted the α/r scaling.

Function space, on the same inputs x_n (previous tasks' test inputs), with p = softmax(before logits) and
q = softmax(after logits) over the classes c:

    KL(p‖q)      = (1/N) Σ_n Σ_c p_nc (log p_nc − log q_nc)
    Bhattacharyya = (1/N) Σ_n −log Σ_c sqrt(p_nc q_nc)
    agreement     = (1/N) Σ_n [argmax_c p_nc = argmax_c q_nc]

References:
    G. Raghavan, B. Tharwat, S. N. Hari, D. Satani, R. Liu, M. Thomson. Engineering flexible machine
    learning systems by traversing functionally invariant paths (FIP). Nature Machine Intelligence, 2024.
    A. Bhattacharyya. On a measure of divergence between two statistical populations defined by their
    probability distributions. Bull. Calcutta Math. Soc., 1943.
    E. J. Hu et al. LoRA: Low-Rank Adaptation of Large Language Models. ICLR 2022.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
from torch import Tensor

from clbench.evaluators.accuracy import EvaluatorError

# `prefix.layer.3.`, `prefix.layers.3.`, `prefix.h.3.` or `prefix.blocks.3.` (BERT, LLaMA, GPT-2, ViT).
_LAYER = re.compile(r"^(.*?\b(?:layer|layers|h|blocks)\.\d+)\.")
# Prefixes PEFT adds when it wraps a model; stripped so LoRA and full fine-tuning share group names.
_WRAPPER_PREFIXES = ("base_model.model.", "_orig_mod.", "module.")


def _squared_norms(
    before: Mapping[str, Tensor], after: Mapping[str, Tensor], strict: bool
) -> dict[str, tuple[float, float]]:
    """Return {name: (‖after − before‖²_F, ‖before‖²_F)} over floating-point tensors, accumulated in float64.

    Runs where the tensors are (the runner keeps its references on the model's device) and reads the results
    back with one synchronisation, not one per tensor.
    """
    if strict and before.keys() != after.keys():
        only_before = sorted(set(before) - set(after))[:3]
        only_after = sorted(set(after) - set(before))[:3]
        raise EvaluatorError(
            f"drift: parameter names differ (only before: {only_before}, only after: {only_after}); "
            "map both to the same names (e.g. LoRA effective weights) or pass strict=False"
        )
    names: list[str] = []
    sums: list[Tensor] = []  # float64 scalars: change², base² per tensor, in order
    scratch: dict[tuple[torch.device, torch.dtype], Tensor] = {}  # one reused buffer for the differences
    for name, w0 in before.items():
        if name not in after or not torch.is_floating_point(w0):
            continue  # integer buffers (position ids, counters) are not weights
        w1 = after[name]
        if w0.shape != w1.shape:
            raise EvaluatorError(
                f"drift: {name!r} has shape {tuple(w0.shape)} before, {tuple(w1.shape)} after"
            )
        # Differences in at least float32 (exactly rounded), written into a reused buffer: a fresh allocation
        # per tensor costs more than the subtraction (page faults on every large tensor, twice per task).
        work = torch.promote_types(w0.dtype, torch.float32)
        w0w = w0.detach().to(work)
        w1w = w1.detach().to(device=w0w.device, dtype=work)
        key = (w0w.device, work)
        buffer = scratch.get(key)
        if buffer is None or buffer.numel() < w0w.numel():
            buffer = scratch[key] = torch.empty(_largest(before), device=w0w.device, dtype=work)
        diff = torch.sub(w1w, w0w, out=buffer[:w0w.numel()].view(w0w.shape))
        names.append(name)
        sums += [_sum_of_squares(diff), _sum_of_squares(w0w)]
    if not sums:
        return {}
    device = sums[0].device
    values = torch.stack([v.to(device) for v in sums]).tolist()
    return {name: (values[2 * i], values[2 * i + 1]) for i, name in enumerate(names)}


ROW = 4096  # elements per row of `_sum_of_squares`'s first, working-precision stage


def _sum_of_squares(x: Tensor) -> Tensor:
    """Σ x² as a float64 scalar: rows of `ROW` elements in x's precision, their sums added in float64.

    A float32 norm of a whole embedding matrix in one go accumulates rounding error with its length (on a CPU
    it lost 4e-4 relative on 12M elements); per row the error stays at float32 rounding, and the float64 sum
    over rows keeps it there, at the cost of one float32 pass rather than a float64 copy of every weight.
    """
    flat = x.reshape(-1)
    full = flat.numel() // ROW * ROW
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    if full:
        total = torch.linalg.vector_norm(flat[:full].view(-1, ROW), dim=1).double().square().sum()
    if full < flat.numel():
        total = total + torch.linalg.vector_norm(flat[full:]).double().square()
    return total


def _largest(tensors: Mapping[str, Tensor]) -> int:
    return max((t.numel() for t in tensors.values() if torch.is_floating_point(t)), default=0)


def _ratio(diff_sq: float, base_sq: float) -> float:
    if base_sq > 0.0:
        return math.sqrt(diff_sq / base_sq)
    return 0.0 if diff_sq == 0.0 else float("nan")


def frobenius_drift(
    before: Mapping[str, Tensor], after: Mapping[str, Tensor], *, strict: bool = True
) -> tuple[dict[str, float], float]:
    """Fractional Frobenius change per tensor and overall: ‖θ_after − θ_before‖_F / ‖θ_before‖_F.

    The overall value is over the concatenation of all tensors (a large tensor weighs more), not the mean of
    the per-tensor ratios. Sums are taken in float64. Non-floating-point tensors (integer buffers) are skipped.

    Zero-norm tensors (e.g. a zero-initialised bias or LoRA B): the ratio is undefined, so the per-tensor
    value is 0.0 if the tensor did not change and NaN if it did. Their change still counts in the overall
    numerator; the overall value is NaN only if every tensor had zero norm before and something changed.

    Args:
        before: Name → tensor before training (e.g. ``{n: p.detach().clone() for n, p in
            model.named_parameters()}``). For LoRA pass effective weights, see `lora_delta_weight`.
        after: Name → tensor after training, same names and shapes.
        strict: If True the two mappings must have the same names; if False only common names are used.

    Returns:
        (per_tensor, overall): per-tensor fractional change keyed by name, in the order of ``before``, and
        the overall fractional change.

    Raises:
        EvaluatorError: If names (strict) or shapes differ.
    """
    per_tensor, overall, _ = frobenius_drift_norms(before, after, strict=strict)
    return per_tensor, overall


def frobenius_drift_norms(
    before: Mapping[str, Tensor], after: Mapping[str, Tensor], *, strict: bool = True
) -> tuple[dict[str, float], float, dict[str, tuple[float, float]]]:
    """`frobenius_drift`'s (per_tensor, overall) plus {name: (‖before‖_F, ‖after − before‖_F)}, from one pass.

    The norms let reports regroup the drift exactly (e.g. per layer) without a second pass over the weights.
    """
    norms = _squared_norms(before, after, strict)
    per_tensor = {name: _ratio(d, b) for name, (d, b) in norms.items()}
    overall = _ratio(sum(d for d, _ in norms.values()), sum(b for _, b in norms.values()))
    return per_tensor, overall, {name: (math.sqrt(b), math.sqrt(d)) for name, (d, b) in norms.items()}


def layer_key(name: str) -> str:
    """Group name of a parameter for per-layer plots.

    ``bert.encoder.layer.3.attention.self.query.weight`` → ``bert.encoder.layer.3``; names without a layer
    index keep at most their first two module components: ``bert.embeddings.LayerNorm.weight`` →
    ``bert.embeddings``, ``classifier.weight`` → ``classifier``. PEFT's ``base_model.model.`` prefix is
    stripped so LoRA and full fine-tuning produce the same groups.

    Args:
        name: Parameter name as in ``named_parameters()``.

    Returns:
        The group name.
    """
    for prefix in _WRAPPER_PREFIXES:
        name = name.removeprefix(prefix)
    match = _LAYER.match(name)
    if match:
        return match.group(1)
    modules = name.split(".")[:-1] or [name]
    return ".".join(modules[:2])


def grouped_frobenius_drift(
    before: Mapping[str, Tensor],
    after: Mapping[str, Tensor],
    group: Callable[[str], str] = layer_key,
    *,
    strict: bool = True,
) -> dict[str, float]:
    """Fractional Frobenius change per group of tensors (by default per transformer layer).

    d(G) = sqrt(Σ_{W∈G} ‖W_after − W_before‖²_F) / sqrt(Σ_{W∈G} ‖W_before‖²_F), i.e. the overall formula of
    `frobenius_drift` restricted to the group (not an average of per-tensor ratios). Zero-norm groups follow
    the same rule as zero-norm tensors there.

    Args:
        before: Name → tensor before training.
        after: Name → tensor after training.
        group: Maps a tensor name to its group; defaults to `layer_key`.
        strict: As in `frobenius_drift`.

    Returns:
        Group → fractional change, in order of first appearance in ``before`` (embeddings, layer 0, 1, ...).
    """
    sums: dict[str, list[float]] = {}
    for name, (d, b) in _squared_norms(before, after, strict).items():
        acc = sums.setdefault(group(name), [0.0, 0.0])
        acc[0] += d
        acc[1] += b
    return {key: _ratio(d, b) for key, (d, b) in sums.items()}


def lora_delta_weight(lora_a: Tensor, lora_b: Tensor, alpha: float, rank: int) -> Tensor:
    """Effective LoRA weight update ΔW = (α/r)·B·A (Hu et al., 2022, Sec. 4.1).

    Args:
        lora_a: A, ``# [rank, in_features]``.
        lora_b: B, ``# [out_features, rank]``.
        alpha: The LoRA scaling numerator α.
        rank: The rank r.

    Returns:
        ΔW, ``# [out_features, in_features]``, to add to the frozen base weight.
    """
    if lora_a.shape[0] != rank or lora_b.shape[1] != rank:
        raise EvaluatorError(
            f"LoRA shapes A {tuple(lora_a.shape)}, B {tuple(lora_b.shape)} do not match rank {rank}"
        )
    return (alpha / rank) * (lora_b @ lora_a)


class FunctionalDrift(NamedTuple):
    """Distance in function space between a model before and after a task, averaged over inputs."""

    kl: float  # mean KL(p_before ‖ p_after), nats
    bhattacharyya: float  # mean −log Σ_c sqrt(p_c q_c), nats
    agreement: float  # fraction of inputs with the same argmax prediction


def functional_drift(p_before_logits: Tensor, p_after_logits: Tensor) -> FunctionalDrift:
    """Mean KL divergence, Bhattacharyya distance and prediction agreement between two models' outputs.

    With log p = log_softmax(before logits) and log q = log_softmax(after logits), per input n:

        KL_n = Σ_c p_c (log p_c − log q_c)
        B_n  = −log Σ_c sqrt(p_c q_c) = −logsumexp_c ((log p_c + log q_c) / 2)

    Both are computed from log-probabilities in float64, so large logits do not overflow; classes with
    p_c = 0 contribute 0 to KL. Tiny negative values from rounding are clamped to 0. Ties in argmax go to
    the lowest class index (torch's rule).

    Args:
        p_before_logits: Logits of the model before the task on the evaluation inputs, ``# [N, classes]``.
        p_after_logits: Logits of the model after the task on the same inputs, ``# [N, classes]``.

    Returns:
        FunctionalDrift(kl, bhattacharyya, agreement), each a mean over the N inputs (NaN for N = 0).
    """
    if p_before_logits.shape != p_after_logits.shape or p_before_logits.ndim != 2:
        raise EvaluatorError(
            f"functional_drift: logits of shapes {tuple(p_before_logits.shape)} and "
            f"{tuple(p_after_logits.shape)}; expected the same [N, classes]"
        )
    if p_before_logits.shape[0] == 0:
        nan = float("nan")
        return FunctionalDrift(nan, nan, nan)
    log_p = torch.log_softmax(p_before_logits.detach().to(torch.float64), dim=-1)  # [N, classes]
    log_q = torch.log_softmax(
        p_after_logits.detach().to(device=log_p.device, dtype=torch.float64), dim=-1
    )  # [N, classes]
    p = log_p.exp()  # [N, classes]
    kl = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(dim=-1)  # [N]
    bhattacharyya = -torch.logsumexp((log_p + log_q) / 2, dim=-1)  # [N]
    agree = (log_p.argmax(dim=-1) == log_q.argmax(dim=-1)).to(torch.float64)  # [N]
    return FunctionalDrift(
        kl=float(kl.clamp_min(0).mean()),
        bhattacharyya=float(bhattacharyya.clamp_min(0).mean()),
        agreement=float(agree.mean()),
    )
