"""Elastic Weight Consolidation (Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks",
PNAS 2017), with online EWC (Schwarz et al., "Progress & Compress", ICML 2018) as an option.

After each task the diagonal of the Fisher information F of the trainable parameters is estimated on the
task's training data and stored with the parameters θ* reached on it. Later tasks add the quadratic penalty
λ/2 · Σ_i F_i (θ_i − θ*_i)² (Eq. 3) for every earlier task, or, online, one penalty whose Fisher decays as
F ← γ F + F_new and whose anchor is the latest θ*. The Fisher is estimated in one of three ways:

- `empirical` (default): mean over examples of the squared per-example gradient of log p(y | x) for the true
  label y, dropout off;
- `exact`: the expectation under the model's own prediction, mean_x Σ_c p(c | x) (∇ log p(c | x))²;
- `batched`: squared gradients of the mean loss over mini-batches of the run's batch size, averaged over
  batches, as Avalanche's EWCPlugin does (cheap but biased towards zero: squares of averages).

The per-example estimators run `clbench.per_example.diagonal_fisher`: one batched forward and one backward per
term over chunks of `fisher_batch_size` examples, with per-example gradients formed from layer inputs and
output gradients; a model with layers it does not cover falls back to torch.func's vmap, with one warning.

On a preference stream (DPO) the likelihood is the preference model's, p(y_w ≻ y_l) = σ(β m) with m the
margin of log-ratios against the task's reference: the same three estimators apply to it
(`clbench.preference.preference_fisher`, one backward per pair; `fisher_samples` bounds the cost). On a
generation stream it is the target answer's likelihood (`generation_fisher`: empirical or batched).

Hooks: `loss` adds the penalty; `after_task` estimates the Fisher and stores the anchor.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from clbench.data import Batch, BatchPlan, EncodedSplit, TaskInfo
from clbench.data.pairs import PairSplit
from clbench.methods import Hooks, MethodConfig, option
from clbench.ops import quadratic_penalty, snapshot
from clbench.per_example import diagonal_fisher
from clbench.preference import generation_fisher, preference_fisher
from clbench.search import LogUniform

ESTIMATORS = ("empirical", "exact", "batched")


@dataclass(frozen=True)
class EWCConfig(MethodConfig):
    """Hyperparameters of EWC; symbols follow Kirkpatrick et al. 2017 and Schwarz et al. 2018."""

    penalty_weight: float = option(1000.0, "λ in Eq. 3: weight of the penalty λ/2·Σ F_i (θ_i − θ*_i)²",
                                    search=LogUniform(1.0, 1e7))
    estimator: str = option("empirical", "diagonal Fisher estimator: empirical (per-example gradients of the "
                            "true label's log-likelihood), exact (expectation over the model's predicted "
                            "classes) or batched (squared mini-batch gradients, as Avalanche)")
    fisher_samples: int = option(0, "training examples drawn (with the method's generator) to estimate F; "
                                 "0 uses the whole training split")
    fisher_batch_size: int = option(16, "examples per chunk of the per-example Fisher; peak memory grows linearly "
                                    "with it: a training step's activations at this batch size plus chunk × out × "
                                    "in floats per distinct nn.Linear weight shape (MiniLM at 16: ~85 MB), or "
                                    "chunk × all trainable parameters where the torch.func fallback runs (MiniLM "
                                    "at 16: ~1.5 GB); the batched estimator uses the run's batch size instead")
    online: bool = option(False, "online EWC: one penalty with decayed Fisher γF + F_new anchored at the latest "
                          "θ* instead of one penalty per earlier task")
    gamma: float = option(1.0, "γ of online EWC (Schwarz et al. 2018): decay of the accumulated Fisher")

    def __post_init__(self) -> None:
        if self.penalty_weight < 0:
            raise ValueError(f"penalty_weight={self.penalty_weight} must be >= 0")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator={self.estimator!r} is not one of {', '.join(ESTIMATORS)}")
        if self.fisher_samples < 0:
            raise ValueError(f"fisher_samples={self.fisher_samples} must be >= 0 (0: the whole training split)")
        if self.fisher_batch_size <= 0:
            raise ValueError(f"fisher_batch_size={self.fisher_batch_size} must be a positive integer")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma={self.gamma} must lie in [0, 1]")
        if self.gamma != 1.0 and not self.online:
            raise ValueError(f"gamma={self.gamma} only applies to online EWC; set online=true or drop gamma")


class EWC(Hooks):
    """Quadratic penalty weighted by the diagonal Fisher information of earlier tasks."""

    name: ClassVar[str] = "ewc"
    config_cls: ClassVar[type[MethodConfig]] = EWCConfig
    citation: ClassVar[str] = "Kirkpatrick et al. 2017 (PNAS); online variant Schwarz et al. 2018"
    first_task_is_finetuning: bool = True  # no penalty before task 2: the runner may share task 1
    task_kinds: ClassVar[tuple[str, ...]] = ("classification", "preference", "generation")
    config: EWCConfig

    def __init__(self, config: EWCConfig | None = None) -> None:
        super().__init__(config)
        self.anchors: list[dict[str, Tensor]] = []  # θ* per penalty term
        self.fishers: list[dict[str, Tensor]] = []  # F per penalty term, same keys
        self._warned_fallback = False

    def loss(self, model: nn.Module, batch: Batch, outputs: Any, task_loss: Tensor) -> Tensor:
        if not self.fishers or self.config.penalty_weight == 0:
            return task_loss
        return task_loss + 0.5 * self.config.penalty_weight * self.penalty(model)

    def penalty(self, model: nn.Module) -> Tensor:
        """Σ_terms Σ_i F_i (θ_i − θ*_i)², without λ/2."""
        params = list(model.named_parameters())
        terms = [quadratic_penalty(params, a, f) for a, f in zip(self.anchors, self.fishers)]
        return torch.stack(terms).sum()

    def after_task(self, task: TaskInfo, model: nn.Module, data: EncodedSplit) -> None:
        if task.index + 1 >= len(self.context.tasks):  # the stream's last task: no later task is penalised
            return
        if self.config.fisher_samples and self.config.fisher_samples < len(data):
            order = torch.randperm(len(data), generator=self.context.generator)
            data = data.subset(order[:self.config.fisher_samples])
        fisher = self.fisher(model, data)
        anchor = snapshot((n, p) for n, p in model.named_parameters() if n in fisher)
        if self.config.online and self.fishers:
            old = self.fishers[0]
            fisher = {n: f + self.config.gamma * old[n] if n in old else f for n, f in fisher.items()}
            self.anchors, self.fishers = [anchor], [fisher]
        else:
            self.anchors.append(anchor)
            self.fishers.append(fisher)

    def fisher(self, model: nn.Module, data: EncodedSplit) -> dict[str, Tensor]:
        """Diagonal Fisher of the trainable parameters on `data` with the configured estimator."""
        was_training = model.training
        model.eval()  # dropout off: the Fisher of the deterministic network (and vmap needs no RNG)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        try:
            ctx = self.context
            if isinstance(data, PairSplit) and ctx.kind == "generation":  # the target answer's likelihood
                return generation_fisher(model, data, self.config.estimator, names, ctx.device, ctx.batch_size)
            if isinstance(data, PairSplit):  # DPO's preference likelihood
                return preference_fisher(model, data, self.config.estimator, ctx.beta, names, ctx.device,
                                         ctx.batch_size)
            if self.config.estimator == "batched":
                return self._batched_fisher(model, data, names)
            return self._per_example_fisher(model, data, names)
        finally:
            model.train(was_training)

    def _batched_fisher(self, model: nn.Module, data: EncodedSplit, names: list[str]) -> dict[str, Tensor]:
        ctx = self.context
        params = dict(model.named_parameters())
        total = {n: torch.zeros_like(params[n]) for n in names}
        plan = BatchPlan(data, ctx.batch_size, shuffle=False)
        for index in plan.indices():
            batch = data.batch(index).to(ctx.device)
            loss = nn.functional.cross_entropy(ctx.forward(model, batch).float(), batch.labels)
            grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
            for n, g in zip(names, grads):
                if g is not None:
                    total[n] += g.detach().pow(2)
        return {n: t / max(len(plan), 1) for n, t in total.items()}

    def _per_example_fisher(self, model: nn.Module, data: EncodedSplit, names: list[str]) -> dict[str, Tensor]:
        ctx = self.context

        def chunks() -> Iterator[Batch]:
            for index in BatchPlan(data, self.config.fisher_batch_size, shuffle=False).indices():
                yield data.batch(index).to(ctx.device)

        return diagonal_fisher(model, chunks, self.config.estimator, names=names, logits_fn=ctx.logits,
                               chunk=self.config.fisher_batch_size, on_fallback=self._warn_once)

    def _warn_once(self, reason: str) -> None:
        if not self._warned_fallback:
            warnings.warn(f"ewc: {reason}", stacklevel=2)
            self._warned_fallback = True

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"terms": len(self.fishers)}
        for t, (anchor, fisher) in enumerate(zip(self.anchors, self.fishers)):
            state.update({f"anchor.{t}.{n}": v for n, v in anchor.items()})
            state.update({f"fisher.{t}.{n}": v for n, v in fisher.items()})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        terms = int(state["terms"])
        self.anchors = [{k.split(".", 2)[2]: v for k, v in state.items() if k.startswith(f"anchor.{t}.")}
                        for t in range(terms)]
        self.fishers = [{k.split(".", 2)[2]: v for k, v in state.items() if k.startswith(f"fisher.{t}.")}
                        for t in range(terms)]
