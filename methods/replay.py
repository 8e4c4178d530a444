"""Experience replay (ER): rehearse a small episodic memory of old examples alongside every new batch.

Chaudhry et al., "On Tiny Episodic Memories in Continual Learning", arXiv:1902.10486 (2019); Rolnick et al.,
"Experience Replay for Continual Learning", NeurIPS 2019. The memory holds at most the run's shared
`buffer_size` examples (the same budget GEM, A-GEM and FIP get). Policy `reservoir` keeps a uniform sample of
every example seen so far (Algorithm R, as in Chaudhry et al. and Rolnick et al.); policy `balanced` gives each
task seen so far an equal share of the budget. The memory is updated when a task ends, so while training task
t it holds examples of tasks 1..t−1 only and task 1 trains exactly like naive fine-tuning.

Each step draws a replay batch (without replacement, from `ctx.generator`) and adds its cross-entropy under
the run's head policy: loss = L_task + w · L_mem. Chaudhry et al. take one step on the concatenation of the
current and the memory batch, i.e. ½(L_task + L_mem) for equal sizes; the sum keeps the current task's gradient
at naive's scale (with w = 1 the two differ by a factor 2 in the step size only). With `fused_forward` the
memory batch goes through the runner's forward together with the new batch (`extra_inputs`): one pass, as
Chaudhry et al. describe, padded to the longer batch; the loss is the same (dropout masks aside).

On a preference stream the memory holds old pairs and the replay term is their DPO loss, against the same
reference as the new pairs: the model at the start of the current task (`before_task` computes the stored
pairs' reference log-probs once per task).

Hooks: `before_task` (preference: the memory's reference), `extra_inputs` (fused mode), `loss` (replay term),
`after_task` (memory update), `state_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from clbench.data import Batch, EncodedSplit, TaskInfo
from clbench.data.pairs import PairBatch, PairSplit
from clbench.episodic import Reservoir, TaskMemory
from clbench.methods import Hooks, MethodConfig, RunContext, option
from clbench.preference import sequence_log_probs
from clbench.search import LogUniform

POLICIES = ("reservoir", "balanced")


@dataclass(frozen=True)
class ReplayConfig(MethodConfig):
    """Hyperparameters of experience replay (the memory size is the run's shared `buffer_size`)."""

    policy: str = option("reservoir", "memory policy: reservoir (uniform over all examples seen) or balanced "
                         "(equal share per task)")
    replay_batch_size: int | None = option(None, "examples replayed per step (default: the run's batch size)")
    replay_weight: float = option(1.0, "w: weight of the replay cross-entropy added to the task loss",
                                   search=LogUniform(0.1, 10.0))
    fused_forward: bool = option(False, "one forward pass over the new and the memory batch together "
                                 "(fewer kernel launches on a GPU; same loss)")

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.replay_batch_size is not None and self.replay_batch_size < 1:
            raise ValueError(f"replay_batch_size must be >= 1, got {self.replay_batch_size}")
        if self.replay_weight < 0:
            raise ValueError(f"replay_weight must be >= 0, got {self.replay_weight}")


class Replay(Hooks):
    """Experience replay: adds the cross-entropy of a batch drawn from a small episodic memory."""

    name: ClassVar[str] = "replay"
    config_cls: ClassVar[type[MethodConfig]] = ReplayConfig
    citation: ClassVar[str] = ("Chaudhry et al., On Tiny Episodic Memories in Continual Learning, 2019; "
                               "Rolnick et al., Experience Replay for Continual Learning, NeurIPS 2019")
    uses_buffer: ClassVar[bool] = True
    task_kinds: ClassVar[tuple[str, ...]] = ("classification", "preference", "generation")
    config: ReplayConfig

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        self.memory: Reservoir | TaskMemory | None = None
        self.fused: Batch | None = None  # fused mode: the memory batch in this step's forward
        self.pairs: PairSplit | None = None  # preference streams: the memory with this task's DPO reference

    def setup(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        budget = ctx.buffer_size
        self.memory = Reservoir(budget) if self.config.policy == "reservoir" else TaskMemory(budget)
        if ctx.kind != "classification" and self.config.fused_forward:
            raise ValueError(f"replay: fused_forward applies to classification streams; drop it on {ctx.kind} "
                             "streams")
        return super().setup(model, ctx)

    def stored(self) -> EncodedSplit | None:
        """Every example in memory, or None while it is empty."""
        if self.memory is None or len(self.memory) == 0:
            return None
        return self.memory.memory if isinstance(self.memory, Reservoir) else self.memory.all()

    def before_task(self, task: TaskInfo, model: nn.Module) -> None:
        """Preference streams: DPO's reference for the stored pairs is, as for the new ones, the model now."""
        stored = self.stored()
        if isinstance(stored, PairSplit) and self.context.kind == "preference":
            ctx = self.context
            self.pairs = stored.with_reference(sequence_log_probs(model, stored, ctx.batch_size * 4, ctx.device))

    def memory_batch(self) -> Batch | None:
        """A batch drawn from the memory, on the device; None while the memory is empty or w = 0."""
        if self.memory is None or len(self.memory) == 0 or self.config.replay_weight == 0:
            return None
        ctx = self.context
        size = self.config.replay_batch_size or ctx.batch_size
        if self.pairs is not None:  # preference pairs with this task's reference attached
            return self.pairs.batch(torch.randperm(len(self.pairs), generator=ctx.generator)[:size]).to(ctx.device)
        replay = self.memory.sample(size, ctx.generator)
        return replay.batch(torch.arange(len(replay))).to(ctx.device)

    def extra_inputs(self, batch: Batch) -> Batch | None:
        self.fused = self.memory_batch() if self.config.fused_forward else None
        return self.fused

    def loss(self, model: nn.Module, batch: Batch, outputs: Any, task_loss: Tensor) -> Tensor:
        """task_loss + w · CE on a replay batch drawn from the memory."""
        ctx = self.context
        if self.fused is not None:  # the memory rows came through the runner's forward, after the batch's
            old, self.fused = self.fused, None
            raw = outputs.logits[len(batch):]  # [replay, num_labels]
        else:
            fresh = None if self.config.fused_forward else self.memory_batch()
            if fresh is None:
                return task_loss
            if isinstance(fresh, PairBatch):  # pairs: DPO (or the target's NLL) on the old ones
                return task_loss + self.config.replay_weight * ctx.loss_of(model, fresh)
            old, raw = fresh, model(**fresh.model_inputs()).logits
        logits = ctx.loss_logits(raw, old.task_ids)  # the run's active classes, as for the task loss
        return task_loss + self.config.replay_weight * nn.functional.cross_entropy(logits.float(), old.labels)

    def after_task(self, task: TaskInfo, model: nn.Module, data: EncodedSplit) -> None:
        """Offer the task's training examples to the memory."""
        assert self.memory is not None
        if isinstance(self.memory, Reservoir):
            self.memory.add(data, self.context.generator)
        else:
            self.memory.add(task.index, data, self.context.generator)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.memory is None else self.memory.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.memory is not None and state:
            self.memory.load_state_dict(state)
