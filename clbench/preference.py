"""Direct preference optimisation and its evaluation, for the `preference` task kind (causal LMs); the
`generation` kind's target loss and answer scoring; FIP's token-level distance and general-ability measures.

DPO (Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
NeurIPS 2023) trains the policy π on pairs (x, y_w, y_l) against a frozen reference π_ref:

    L = −log σ(β · [(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))])

averaged over the batch, where log π(y|x) sums the log-probabilities of the response's tokens. The reference
is the model at the start of the task being trained; its log-probabilities are computed once per task over
the training pairs (`reference_log_probs`) and travel with the data (`PairSplit.reference`), so no second
model is held in memory.

Evaluation: the implicit reward r(x, y) = β (log π(y|x) − log π_0(y|x)) is measured against the model before
the stream (π_0, row 0 of the accuracy matrix). A held-out pair counts as preferred when r(y_w) > r(y_l), and
half when they are equal: *preference accuracy* is the share of such pairs. Row 0 is 0.5 by definition (every
reward is 0), which is the chance level every later row is compared with. The mean reward margin
E[r(y_w) − r(y_l)] is recorded beside it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from clbench.data import BatchPlan
from clbench.data.pairs import PairBatch, PairSplit

DEFAULT_BETA = 0.1  # Rafailov et al. use β = 0.1 for most experiments


def token_log_probs(logits: Tensor, input_ids: Tensor) -> Tensor:
    """[rows, W]: log p(input_ids[:, t] | input_ids[:, :t]) at t ≥ 1, from logits [rows, W, V]; 0 at t = 0."""
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = log_probs.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return torch.nn.functional.pad(picked, (1, 0))


def pair_log_probs(logits: Tensor, batch: PairBatch) -> Tensor:
    """[B, 2]: summed response log-probs of each pair's (chosen, rejected) sequence, from the logits [2B, W, V]
    of `batch.model_inputs()` (rows after the first 2B are ignored)."""
    inputs = batch.model_inputs()["input_ids"]
    rows = inputs.shape[0]
    per_token = token_log_probs(logits[:rows, :inputs.shape[1]], inputs)
    sums = (per_token * batch.response_mask()).sum(dim=1)  # [2B]
    return torch.stack(sums.chunk(2), dim=1)


def target_nll(logits: Tensor, batch: PairBatch) -> Tensor:
    """Generation tasks: mean negative log-likelihood per target token, over the batch's target (chosen)
    sequences, from logits whose first B rows are those sequences: a forward pass over `batch.chosen_inputs()`
    (what `RunContext.training_inputs` sends) or over `batch.concat(other).chosen_inputs()`, whose further rows
    and padded positions are ignored (`batch.model_inputs()` puts the chosen rows first too)."""
    ids = batch.chosen_ids
    per_token = token_log_probs(logits[:len(batch), :ids.shape[1]], ids)
    mask = batch.response_mask("chosen").to(per_token.dtype)
    return -(per_token * mask).sum() / mask.sum().clamp_min(1)


def choice_accuracy(log_probs: Tensor) -> float:
    """Generation tasks, scored as lm-eval scores multiple choice: the share of examples whose target has a
    higher log-likelihood than the alternative ([n, 2] summed response log-probs; ties count half)."""
    if not len(log_probs):
        return float("nan")
    margins = log_probs[:, 0] - log_probs[:, 1]
    return float(((margins > 0).float() + 0.5 * (margins == 0).float()).mean())


def dpo_loss(policy: Tensor, reference: Tensor, beta: float) -> Tensor:
    """Mean DPO loss over pairs from [B, 2] policy and reference log-probs of (chosen, rejected)."""
    margin = (policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1])
    return -torch.nn.functional.logsigmoid(beta * margin).mean()


@torch.no_grad()
def sequence_log_probs(model: nn.Module, split: PairSplit, batch_size: int, device: torch.device,
                       autocast: object | None = None) -> Tensor:
    """[n, 2] summed response log-probs of every pair of `split` under `model` in eval mode, on the CPU."""
    was_training = model.training
    model.eval()
    out = torch.zeros(len(split), 2)
    for index in BatchPlan(split, batch_size, shuffle=False).indices():
        batch = split.batch(index).to(device)
        with autocast if autocast is not None else contextlib.nullcontext():  # type: ignore[attr-defined]
            logits = model(**batch.model_inputs()).logits
        out[index] = pair_log_probs(logits.float(), batch).cpu()
    model.train(was_training)
    return out


def reward_margins(policy: Tensor, base: Tensor, beta: float) -> Tensor:
    """[n]: r(y_w) − r(y_l) per pair, with r = β (log π − log π_0) against the base model's log-probs."""
    return beta * ((policy[:, 0] - base[:, 0]) - (policy[:, 1] - base[:, 1]))


def preference_accuracy(policy: Tensor, base: Tensor) -> float:
    """Share of pairs whose implicit reward prefers the chosen response (ties count half)."""
    margins = reward_margins(policy, base, 1.0)
    if not len(margins):
        return float("nan")
    return float(((margins > 0).float() + 0.5 * (margins == 0).float()).mean())


# ---- FIP on a causal LM: distances between next-token distributions ----


@dataclass(frozen=True)
class TokenAnchors:
    """q cached on chosen sequences: per position, log-probs of the kept tokens and of everything else.

    `log_q` is [n, W, k] over the tokens `tokens` [n, W, k] with `log_rest` [n, W] the log of the remaining
    mass, or, when the whole vocabulary is kept, `log_q` [n, W, V] with `tokens` and `log_rest` None.
    Position t is the distribution of token t + 1 given the tokens up to t.
    """

    log_q: Tensor
    tokens: Tensor | None
    log_rest: Tensor | None

    def rows(self, index: Tensor, width: int, device: torch.device) -> TokenAnchors:
        """Pairs `index`, positions [0, width), on `device`."""
        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[index, :width].to(device)

        return TokenAnchors(pick(self.log_q), pick(self.tokens), pick(self.log_rest))  # type: ignore[arg-type]


def kept_log_probs(log_p: Tensor, tokens: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """log p at `tokens` [.., k] and the log of the rest of the mass, from full log-probs [.., V]; with no
    `tokens`, the full log-probs and None."""
    if tokens is None:
        return log_p, None
    kept = log_p.gather(-1, tokens)
    rest = torch.log((1 - kept.exp().sum(-1)).clamp_min(1e-12))  # the bucket of every token not kept
    return kept, rest


@torch.no_grad()
def token_anchors(model: nn.Module, split: PairSplit, batch_size: int, device: torch.device,
                  topk: int) -> TokenAnchors:
    """q on the chosen sequence of every pair of `split`, in eval mode, on the CPU: the `topk` most likely
    tokens per position and the rest as one bucket (`topk` 0: the whole vocabulary)."""
    was_training = model.training
    model.eval()
    width = split.chosen_ids.shape[1]
    parts: dict[str, Tensor] = {}
    for index in BatchPlan(split, batch_size, shuffle=False).indices():
        batch = split.batch(index).to(device)
        log_p = torch.log_softmax(model(**batch.chosen_inputs()).logits.float(), dim=-1)  # [b, w, V]
        if topk:
            tokens = log_p.topk(min(topk, log_p.shape[-1]), dim=-1).indices
            kept, rest = kept_log_probs(log_p, tokens)
            assert rest is not None
            values = {"log_q": kept, "tokens": tokens, "log_rest": rest}
        else:
            values = {"log_q": log_p}
        for name, value in values.items():
            if name not in parts:
                shape = (len(split), width, *value.shape[2:])
                parts[name] = torch.zeros(shape, dtype=value.dtype)
            parts[name][index, :value.shape[1]] = value.cpu()
    model.train(was_training)
    return TokenAnchors(parts["log_q"], parts.get("tokens"), parts.get("log_rest"))


def token_distance(logits: Tensor, batch: PairBatch, anchors: TokenAnchors) -> Tensor:
    """Σ over the batch's chosen sequences of the mean Bhattacharyya distance D(p_t, q_t) over positions t
    that predict a token of the sequence; `logits` [b, w, V] come from `batch.chosen_inputs()`."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    kept, rest = kept_log_probs(log_p, anchors.tokens)
    terms = 0.5 * (kept + anchors.log_q)
    if rest is not None:
        terms = torch.cat([terms, (0.5 * (rest + anchors.log_rest)).unsqueeze(-1)], dim=-1)  # type: ignore[operator]
    distance = -torch.logsumexp(terms, dim=-1)  # [b, w]
    mask = torch.nn.functional.pad(batch.chosen_mask[:, 1:], (0, 1)).to(distance.dtype)  # t + 1 is a real token
    return ((distance * mask).sum(1) / mask.sum(1).clamp_min(1)).sum()


def preference_fisher(model: nn.Module, split: PairSplit, estimator: str, beta: float, names: list[str],
                      device: torch.device, batch_size: int) -> dict[str, Tensor]:
    """Diagonal Fisher of the preference likelihood p(y_w ≻ y_l) = σ(β m) that DPO maximises (m: the margin of
    log-ratios against the split's attached reference), for EWC on a preference stream.

    With g = ∇m for one pair: `empirical` averages (∇ log σ(βm))² = ((1 − σ) β g)² over pairs; `exact` takes
    the expectation over the model's own preference, σ(1 − σ) β² g²; `batched` averages the squared gradient
    of the mean DPO loss over batches of `batch_size` pairs. Per-pair gradients take one backward each.
    """
    def target(batch: PairBatch) -> tuple[Tensor, float]:
        if batch.reference is None:
            raise RuntimeError("the Fisher of a preference split needs its reference log-probs")
        policy = pair_log_probs(model(**batch.model_inputs()).logits, batch)
        margin = (policy[:, 0] - batch.reference[:, 0]) - (policy[:, 1] - batch.reference[:, 1])
        if estimator == "batched":
            return -torch.nn.functional.logsigmoid(beta * margin).mean(), 1.0
        sigma = float(torch.sigmoid(beta * margin.detach()).item())
        scale = ((1 - sigma) * beta) ** 2 if estimator == "empirical" else sigma * (1 - sigma) * beta ** 2
        return margin.sum(), scale

    return mean_squared_gradients(model, split, names, device, 1 if estimator != "batched" else batch_size, target)


def mean_squared_gradients(model: nn.Module, split: PairSplit, names: list[str], device: torch.device, size: int,
                           target: Callable[[PairBatch], tuple[Tensor, float]]) -> dict[str, Tensor]:
    """Mean over batches of `size` examples of scale · (∇ value)² for the named parameters, where
    `target(batch)` gives (value, scale): the accumulation every Fisher estimator here shares."""
    params = dict(model.named_parameters())
    total = {n: torch.zeros_like(params[n]) for n in names}
    plan = BatchPlan(split, size, shuffle=False)
    for index in plan.indices():
        value, scale = target(split.batch(index).to(device))
        grads = torch.autograd.grad(value, [params[n] for n in names], allow_unused=True)
        for n, g in zip(names, grads):
            if g is not None:
                total[n] += scale * g.detach().pow(2)
    return {n: t / max(len(plan), 1) for n, t in total.items()}


# ---- general language ability: perplexity and KL to the base model on held-out text ----

GENERAL_TOPK = 64  # tokens of the base model's distribution kept per position for the KL (the rest: one bucket)


@torch.no_grad()
def general_ability(model: nn.Module, split: PairSplit, base: TokenAnchors, batch_size: int,
                    device: torch.device) -> tuple[float, float]:
    """(perplexity, KL) of `model` on general text (`encode_general`): exp of the mean negative log-likelihood
    per token, and the mean per position of KL(p_base ‖ p_model) over the base's kept tokens plus one bucket
    for the rest (a lower bound of the full KL: merging outcomes never increases a divergence)."""
    was_training = model.training
    model.eval()
    nll = kl = positions = 0.0
    for index in BatchPlan(split, batch_size, shuffle=False).indices():
        batch = split.batch(index).to(device)
        logits = model(**batch.chosen_inputs()).logits.float()
        mask = torch.nn.functional.pad(batch.chosen_mask[:, 1:], (0, 1)).float()  # positions predicting a token
        log_p = torch.log_softmax(logits, dim=-1)
        nll -= float((log_p[:, :-1].gather(-1, batch.chosen_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
                      * mask[:, :-1]).sum())
        anchors = base.rows(index, batch.chosen_ids.shape[1], device)
        kept, rest = kept_log_probs(log_p, anchors.tokens)
        terms = (anchors.log_q.exp() * (anchors.log_q - kept)).sum(-1)
        if rest is not None and anchors.log_rest is not None:
            terms = terms + anchors.log_rest.exp() * (anchors.log_rest - rest)
        kl += float((terms * mask).sum())
        positions += float(mask.sum())
    model.train(was_training)
    count = max(positions, 1.0)
    return float(torch.exp(torch.tensor(nll / count))), kl / count


def generation_fisher(model: nn.Module, split: PairSplit, estimator: str, names: list[str], device: torch.device,
                      batch_size: int) -> dict[str, Tensor]:
    """Diagonal Fisher of the target's likelihood on a generation task, for EWC: `empirical` averages over
    examples the squared gradient of log p(target | prompt) (summed over its tokens), `batched` the squared
    gradient of the mean token loss over batches of `batch_size`. (`exact` would need sampled answers.)"""
    if estimator not in ("empirical", "batched"):
        raise ValueError(f"ewc: estimator {estimator!r} is not defined on generation tasks; use empirical or batched")
    def target(batch: PairBatch) -> tuple[Tensor, float]:
        logits = model(**batch.chosen_inputs()).logits
        if estimator == "batched":
            return target_nll(logits, batch), 1.0
        per_token = token_log_probs(logits, batch.chosen_ids)
        return (per_token * batch.response_mask("chosen")).sum(), 1.0

    return mean_squared_gradients(model, split, names, device, 1 if estimator == "empirical" else batch_size, target)
