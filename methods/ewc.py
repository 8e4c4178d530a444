"""Elastic Weight Consolidation (Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks",
PNAS 2017), with online EWC (Schwarz et al., "Progress & Compress", ICML 2018) as an option.

After each task the diagonal of the Fisher information F of the trainable parameters is estimated on the
task's training data and stored with the parameters θ* reached on it. Later tasks add the quadratic penalty
λ/2 · Σ_i F_i (θ_i − θ*_i)² (Eq. 3) for every earlier task, or, online, one penalty whose Fisher decays as
F ← γ F + F_new and whose anchor is the latest θ*. The Fisher is estimated in one of three ways:

- `empirical` (default): mean over examples of the squared per-example gradient of log p(y | x) for the true
  label y, computed with torch.func (functional_call + vmap + grad) in chunks, dropout off;
- `exact`: the expectation under the model's own prediction, mean_x Σ_c p(c | x) (∇ log p(c | x))²;
- `batched`: squared gradients of the mean loss over mini-batches of the run's batch size, averaged over
  batches, as Avalanche's EWCPlugin does (cheap but biased towards zero: squares of averages).

Hooks: `loss` adds the penalty; `after_task` estimates the Fisher and stores the anchor.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from clbench.data import Batch, BatchPlan, EncodedSplit, TaskInfo
from clbench.methods import Hooks, MethodConfig, option
from clbench.ops import quadratic_penalty, snapshot
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
    fisher_batch_size: int = option(16, "examples per chunk of per-example gradients (memory grows as chunk × "
                                    "parameters); the batched estimator uses the run's batch size instead")
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
        params = dict(model.named_parameters())
        total = {n: torch.zeros_like(params[n]) for n in names}
        for index in BatchPlan(data, self.config.fisher_batch_size, shuffle=False).indices():
            batch = data.batch(index).to(ctx.device)
            if self.config.estimator == "empirical":
                weighted = [(batch.labels, None)]
            else:
                with torch.no_grad():
                    probs = ctx.forward(model, batch).float().softmax(-1)  # [batch, num_labels]
                weighted = [(torch.full_like(batch.labels, c), probs[:, c]) for c in range(probs.shape[1])
                            if bool((probs[:, c] > 0).any())]
            for targets, weight in weighted:
                grads = self.per_example_grads(model, batch, targets, names)  # name -> [batch, *shape]
                for n, g in grads.items():
                    sq = g.pow(2)
                    if weight is not None:
                        sq = sq * weight.view(-1, *([1] * (sq.dim() - 1)))
                    total[n] += sq.sum(0)
        return {n: t / max(len(data), 1) for n, t in total.items()}

    def per_example_grads(self, model: nn.Module, batch: Batch, targets: Tensor, names: list[str],
                          ) -> dict[str, Tensor]:
        """∇_θ log p(targets_k | x_k) for every example k: name -> [batch, *param shape].

        Uses torch.func with an additive 4-D attention mask (HF's mask builder branches on data, which vmap
        cannot trace); models that refuse it fall back to a loop over examples, with a warning.
        """
        try:
            return self._vmap_grads(model, batch, targets, names)
        except (RuntimeError, TypeError, ValueError) as exc:
            if not self._warned_fallback:
                warnings.warn(f"ewc: torch.func per-example gradients failed ({type(exc).__name__}: "
                              f"{str(exc)[:160]}); falling back to a slower loop over examples", stacklevel=2)
                self._warned_fallback = True
            return self._loop_grads(model, batch, targets, names)

    def _vmap_grads(self, model: nn.Module, batch: Batch, targets: Tensor, names: list[str]) -> dict[str, Tensor]:
        ctx = self.context
        all_params = dict(model.named_parameters())
        trainable = {n: all_params[n].detach() for n in names}
        frozen = {n: p.detach() for n, p in all_params.items() if n not in trainable}
        frozen.update(dict(model.named_buffers()))
        dtype = next(iter(trainable.values())).dtype

        def log_likelihood(theta: dict[str, Tensor], ids: Tensor, mask: Tensor, task_id: Tensor,
                           target: Tensor) -> Tensor:
            # one example: ids, mask [seq]; additive mask [1, 1, 1, seq] is used by HF as given
            additive = (1.0 - mask.to(dtype))[None, None, None, :] * torch.finfo(dtype).min
            out = functional_call(model, (theta, frozen), args=(),
                                  kwargs={"input_ids": ids[None], "attention_mask": additive})
            logits = ctx.logits(out.logits, task_id[None]).float()  # [1, num_labels]
            return logits.log_softmax(-1)[0].gather(0, target[None])[0]

        with warnings.catch_warnings():
            # CPU flash attention has no batching rule yet; torch falls back to a loop inside vmap
            warnings.filterwarnings("ignore", message=".*not yet implemented the batching rule.*")
            return vmap(grad(log_likelihood), in_dims=(None, 0, 0, 0, 0))(
                trainable, batch.input_ids, batch.attention_mask, batch.task_ids, targets)

    def _loop_grads(self, model: nn.Module, batch: Batch, targets: Tensor, names: list[str]) -> dict[str, Tensor]:
        ctx = self.context
        params = dict(model.named_parameters())
        out: dict[str, list[Tensor]] = {n: [] for n in names}
        for k in range(len(batch)):
            width = int(batch.attention_mask[k].sum())
            one = Batch(batch.input_ids[k:k + 1, :width], batch.attention_mask[k:k + 1, :width],
                        batch.labels[k:k + 1], batch.task_ids[k:k + 1])
            logp = ctx.forward(model, one).float().log_softmax(-1)[0, targets[k]]
            grads = torch.autograd.grad(logp, [params[n] for n in names], allow_unused=True)
            for n, g in zip(names, grads):
                out[n].append(g if g is not None else torch.zeros_like(params[n]))
        return {n: torch.stack(gs) for n, gs in out.items()}

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
