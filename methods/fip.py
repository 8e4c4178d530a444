"""FIP: functionally invariant paths, as the authors trained it (output-distance loss on a replay buffer).

Raghavan & Thomson, "Engineering flexible machine learning systems by traversing functionally invariant
paths", Nature Machine Intelligence 6, 2024.

The paper moves the weights along paths that keep the network's outputs on old tasks fixed while a secondary
objective (the new task) improves. The authors' code implements this as a loss: the Bhattacharyya distance
D(p, q) = −log Σ_c √(p_c q_c) between the current softmax p and the softmax q the network had before the task,
on inputs replayed from earlier tasks, plus λ times the new task's cross-entropy:

    L = Σ_{x ∈ replay batch} D(p(x), q(x)) + λ · mean_{(x, y) ∈ new batch} CE(p(x), y)

(the authors *sum* D over the replay batch and *average* the CE; `ce_weight` is λ, `replay_batch_size` the
replay batch). q is cached once per task: `before_task` stores the model's log-softmax on the whole buffer in
eval mode, so no second model is kept. D(q, q) = 0 with zero gradient, and for a small weight change δ,
Σ D ≈ (1/8)·δᵀFδ with F the output Fisher, so the distance is a local metric in function space.

Buffer: after each task, inputs drawn from its training split (from `ctx.generator`), equal shares of
`ctx.buffer_size` across the tasks seen so far (`clbench.episodic.TaskMemory`; older shares shrink). The first task has no
buffer and is plain fine-tuning (L = CE). Memory-saving mode (`separate_backward`): `loss` backpropagates
λ·CE first (freeing the new batch's activations) and then D on the replay batch, so peak activation memory
is the larger of the two graphs, not their sum; the gradients are the same. Fused mode (`fused_forward`) sends
the replay batch through the runner's forward with the new batch (`extra_inputs`): one pass over both, padded
to the longer, with the same loss (dropout masks aside) and fewer kernel launches per step.

On a preference stream (a causal LM trained with DPO) the outputs are next-token distributions: the buffer
holds old pairs, q is cached on their chosen sequences (old prompts and preferred responses) at every
position that predicts a next token, and D is averaged over a sequence's positions, then summed over the
replay batch, so each replayed example weighs one D as a classification example does; the new task's term is
λ·DPO. A vocabulary of ~50k tokens makes full distributions costly to keep, so by default q keeps each
position's `token_topk` most likely tokens and the rest as one bucket: D on that coarser partition is a lower
bound of the full D, equal to 0 with zero gradient at the anchor (`clbench.preference.token_anchors`).
`token_topk: 0` keeps the whole distribution. Fused mode is for classification streams only.

Hooks: `before_task` (cache q), `extra_inputs` (fused mode), `loss`, `after_task` (buffer). `cache_log_probs`,
`sample_replay`, `bhattacharyya` and `replay_distance` are reused by `fip-geometric` and `fip-lora`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from clbench.data import Batch, BatchPlan, EncodedSplit, TaskInfo
from clbench.data.pairs import PairBatch, PairSplit
from clbench.episodic import TaskMemory
from clbench.methods import Hooks, MethodConfig, RunContext, option
from clbench.preference import TokenAnchors, token_anchors, token_distance
from clbench.search import Choice, LogUniform


@dataclass(frozen=True)
class FIPConfig(MethodConfig):
    """FIP loss weights and replay settings."""

    ce_weight: float = option(1.0, "λ: weight of the new task's mean cross-entropy against the summed "
                              "Bhattacharyya distance", search=LogUniform(0.1, 10.0))
    replay_batch_size: int | None = option(None, "old-task inputs per step for the distance term "
                                           "(default: the training batch size)", search=Choice((8, 16, 32)))
    separate_backward: bool = option(False, "memory-saving mode: backpropagate the CE and the distance "
                                     "separately (peak activations = max, not sum)")
    fused_forward: bool = option(False, "one forward pass over the new and the replay batch together "
                                 "(fewer kernel launches on a GPU; same loss; not with separate_backward)")
    token_topk: int = option(64, "preference streams: most likely tokens of q kept per position (the rest is "
                             "one bucket), 0 keeps the whole vocabulary; memory per kept pair ≈ positions × k × "
                             "12 bytes")

    def __post_init__(self) -> None:
        if self.ce_weight < 0 or (self.replay_batch_size is not None and self.replay_batch_size < 1):
            raise ValueError("need ce_weight >= 0 and replay_batch_size >= 1")
        if self.token_topk < 0:
            raise ValueError(f"token_topk={self.token_topk} must be >= 0 (0: the whole vocabulary)")
        if self.fused_forward and self.separate_backward:
            raise ValueError("fused_forward and separate_backward exclude each other (one joint pass against "
                             "two separate ones): set one of them to false")


def bhattacharyya(log_p: Tensor, log_q: Tensor) -> Tensor:
    """D(p, q) = −log Σ_c √(p_c q_c) per row, from log-probabilities [batch, C]; returns [batch].

    Computed as −logsumexp((log p + log q)/2), which is exact for masked (−inf) classes.
    """
    return -torch.logsumexp(0.5 * (log_p + log_q), dim=-1)


@torch.no_grad()
def cache_log_probs(model: nn.Module, ctx: RunContext, split: EncodedSplit, topk: int = 0) -> Any:
    """log q: the model's log-softmax on every example of `split` in eval mode, [n, num_labels] on ctx.device.

    For preference pairs: the `TokenAnchors` of the chosen sequences (`topk` tokens per position, 0: all).
    """
    if isinstance(split, PairSplit):
        return token_anchors(model, split, ctx.batch_size * 4, ctx.device, topk)
    was_training = model.training
    model.eval()
    out = torch.empty(len(split), ctx.num_labels, device=ctx.device)
    for index in BatchPlan(split, ctx.batch_size * 4, shuffle=False).indices():
        batch = split.batch(index).to(ctx.device)
        out[index.to(ctx.device)] = torch.log_softmax(ctx.forward(model, batch).float(), dim=-1)
    model.train(was_training)
    return out


def sample_replay(split: EncodedSplit, size: int, generator: torch.Generator) -> Tensor:
    """Indices [min(size, n)] of a replay batch, without replacement, from `generator`."""
    return torch.randperm(len(split), generator=generator)[:size]


def summed_distance(logits: Tensor, log_q: Tensor) -> Tensor:
    """Σ_batch D(p, q) between softmax(logits) [batch, C] (after the head policy) and the cached log q."""
    return bhattacharyya(torch.log_softmax(logits.float(), dim=-1), log_q).sum()


def replay_distance(model: nn.Module, ctx: RunContext, batch: Any, log_q: Any) -> Tensor:
    """Σ_batch D(p, q) between the model's current softmax on `batch` and the cached log q [batch, C]; for
    preference pairs, Σ over sequences of the mean token-level D (`clbench.preference.token_distance`)."""
    if isinstance(batch, PairBatch):
        return token_distance(model(**batch.chosen_inputs()).logits, batch, log_q)
    return summed_distance(ctx.forward(model, batch), log_q)


class FIP(Hooks):
    """Functionally invariant paths: summed Bhattacharyya distance on replayed inputs plus λ·CE."""

    name: ClassVar[str] = "fip"
    config_cls: ClassVar[type[MethodConfig]] = FIPConfig
    citation: ClassVar[str] = ("Raghavan & Thomson, Engineering flexible machine learning systems by traversing "
                               "functionally invariant paths, Nature Machine Intelligence 2024")
    uses_buffer: ClassVar[bool] = True
    first_task_is_finetuning: bool = True  # empty buffer on task 1: the runner may share it
    task_kinds: ClassVar[tuple[str, ...]] = ("classification", "preference", "generation")

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        self.cfg: FIPConfig = self.config  # type: ignore[assignment]
        self.backward_in_loss = self.cfg.separate_backward
        self.buffer = TaskMemory(0)
        self.replay: EncodedSplit | None = None  # the buffer as one split while a task trains
        self.log_q: Tensor | None = None  # [len(replay), num_labels] cached at the task's start
        self.fused: tuple[Batch, Tensor] | None = None  # fused mode: the replay batch in this step's forward

    def setup(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        self.ctx = ctx
        self.buffer = TaskMemory(ctx.buffer_size)
        if ctx.kind != "classification" and self.cfg.fused_forward:
            raise ValueError(f"fip: fused_forward applies to classification streams; drop it on {ctx.kind} streams")
        return model

    def before_task(self, task: TaskInfo, model: nn.Module) -> None:
        self.replay = self.buffer.all() if len(self.buffer) else None
        self.log_q = None if self.replay is None else cache_log_probs(model, self.context, self.replay,
                                                                      self.cfg.token_topk)

    def replay_batch(self) -> tuple[Batch, Any] | None:
        """A replay batch on the device and its cached log q, or None when the buffer is empty."""
        if self.replay is None or self.log_q is None:
            return None
        ctx = self.context
        index = sample_replay(self.replay, self.cfg.replay_batch_size or ctx.batch_size, ctx.generator)
        batch = self.replay.batch(index).to(ctx.device)
        if isinstance(self.log_q, TokenAnchors):
            return batch, self.log_q.rows(index, batch.chosen_ids.shape[1], ctx.device)
        return batch, self.log_q[index.to(ctx.device)]

    def extra_inputs(self, batch: Batch) -> Batch | None:
        self.fused = self.replay_batch() if self.cfg.fused_forward else None
        return None if self.fused is None else self.fused[0]

    def loss(self, model: nn.Module, batch: Batch, outputs: Any, task_loss: Tensor) -> Tensor:
        if self.fused is not None:  # the replay rows came through the runner's forward, after the batch's
            (old, log_q), self.fused = self.fused, None
            return (summed_distance(self.context.extra_logits(outputs, batch, old), log_q)
                    + self.cfg.ce_weight * task_loss)
        replay = self.replay_batch()
        if replay is None:  # first task: plain fine-tuning
            if self.backward_in_loss:
                task_loss.backward()
                return task_loss.detach()
            return task_loss
        weighted = self.cfg.ce_weight * task_loss
        if not self.backward_in_loss:
            return replay_distance(model, self.context, *replay) + weighted
        weighted.backward()  # frees the new batch's activations before the replay forward
        distance = replay_distance(model, self.context, *replay)
        distance.backward()
        return (distance + weighted).detach()

    def after_task(self, task: TaskInfo, model: nn.Module, data: EncodedSplit) -> None:
        self.buffer.add(task.index, data, self.context.generator)
        self.replay, self.log_q = None, None

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])
