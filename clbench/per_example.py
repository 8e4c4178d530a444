"""Per-example gradient maths: sums of squared per-example gradients, e.g. EWC's diagonal Fisher.

The diagonal Fisher estimators need, for every parameter θ_i, Σ_k (∂ℓ_k/∂θ_i)² over examples k, where ℓ_k is
a per-example scalar: log p(y_k | x_k) (empirical Fisher), or √p(c | x_k) · log p(c | x_k) with p held constant,
one term per class c (exact Fisher: its square is p(c | x_k) (∇ log p(c | x_k))²). Two ways to compute it:

**Hooks** (`SquaredGradSums`, the default). Per-example gradients are assembled from what one batched forward
and backward already have (activations × output gradients; Goodfellow 2015, "Efficient per-example gradient
computations"; Opacus): the input a of every covered layer, saved by a forward hook, and the gradient g of
Σ_k ℓ_k with respect to that layer's output, caught by a tensor hook. Examples of a batch do not interact in an
encoder's forward pass in eval mode (no dropout; the attention mask keeps padded positions out of every real
position), so row k of g is ∂ℓ_k/∂output_k, and every padded position's row is exactly zero. Each layer forms
Σ_k (per-example gradient)² from (a_k, g_k):

==============  ==========================================  ===============================================
layer           per-example gradient of example k           Σ_k (·)² computed as
==============  ==========================================  ===============================================
nn.Linear       W: G_k = Σ_t g_kt a_ktᵀ    bias: Σ_t g_kt     one position per example (2-D input):
                                                            (g²)ᵀ (a²), one matmul; otherwise G_k for
                                                            `chunk` examples by one bmm into a reused
                                                            buffer, squared in place and summed over k
nn.Embedding    row v: Σ_{t: id_kt = v} g_kt                 index_add over unique (example, id) pairs;
                (padding_idx row: zero)                     padding_idx rows skipped
nn.LayerNorm    weight: Σ_t g_kt ⊙ x̂_kt   bias: Σ_t g_kt     x̂ recomputed from the saved input
==============  ==========================================  ===============================================

The backward runs only as far as the layers' outputs: no parameter gradient is computed or stored. To make
autograd visit every hooked output without asking for parameter gradients, the output of each "root" layer
(one whose input does not require grad, e.g. every embedding) gets a zero scalar leaf added, and the backward
asks only for that leaf's gradient. Objectives with several terms run one backward per term through the same
graph. Outputs broadcast over the batch (BERT's position embeddings, looked up once as [1, T, H]) are expanded
to [B, ...] by the forward hook, so their gradient arrives per example too.

Memory for a chunk of B examples: the activations of a training step at batch size B, one layer's output
gradient at a time, and one buffer of B × out × in floats per distinct nn.Linear weight shape (the per-example
weight gradients of one layer); plus one float32 copy of the covered parameters for the sums.

Coverage is strict: every parameter asked for must belong to an nn.Linear, nn.Embedding or nn.LayerNorm with
the stock forward, must not be shared between modules, and its module must run exactly once per forward.
Anything else raises `UnsupportedModelError` naming the parameters, never a silently wrong number. Assumed,
not checked: layers are batch-first and no covered output is modified in place after its layer returns (true
of transformers' BERT; the float64 test in tests/test_per_example.py would catch a violation).

**torch.func** (`func_squared_grad_sums`, the fallback for any model). vmap(grad(ℓ)) over the examples of a
chunk, through `functional_call` with an additive 4-D attention mask (HF's mask builder branches on data,
which vmap cannot trace); a model that vmap refuses falls back to one autograd call per unpadded example. It
materialises chunk × all trainable parameters of per-example gradients, and on CPU vmap itself loops over
examples (scaled-dot-product attention has no batching rule).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from clbench.data import Batch
from clbench.errors import ClbenchError

SUPPORTED: tuple[type[nn.Module], ...] = (nn.Linear, nn.Embedding, nn.LayerNorm)
ESTIMATORS = ("empirical", "exact")
BACKENDS = ("auto", "hooks", "torch.func")

LogitsFn = Callable[[Tensor, Tensor], Tensor]  # (logits [batch, labels], task_ids [batch]) -> logits, head policy
Objective = Callable[[Any], Sequence[Tensor]]  # model outputs -> terms, each [batch] of per-example scalars


class UnsupportedModelError(ClbenchError):
    """The model has a parameter whose per-example gradients the hooks cannot form; use torch.func instead."""


# ------------------------------------------------------------------------------------------ the estimators


def fisher_terms(estimator: str, logp: Tensor, labels: Tensor) -> list[Tensor]:
    """Per-example terms ℓ whose squared gradients, summed over terms, give one example's Fisher diagonal.

    empirical: [log p(y_k | x_k)]. exact: √p(c | x_k) · log p(c | x_k) with p detached, one term per class c
    that has p > 0 for some example of the batch (classes outside an example's head have p = 0 and add 0).

    Args:
        logp: [batch, labels] log-probabilities under the head policy.
        labels: [batch] true global labels.
    """
    if estimator == "empirical":
        return [logp.gather(1, labels.unsqueeze(1)).squeeze(1)]
    if estimator != "exact":
        raise ValueError(f"estimator={estimator!r} is not one of {', '.join(ESTIMATORS)}")
    probs = logp.detach().exp()
    return [probs[:, c].sqrt() * logp[:, c].masked_fill(probs[:, c] == 0, 0.0)  # log 0 = -inf: 0 · -inf = nan
            for c in range(logp.shape[1]) if bool((probs[:, c] > 0).any())]


def weighted_targets(estimator: str, labels: Tensor, probs: Tensor | None = None,
                     ) -> list[tuple[Tensor, Tensor | None]]:
    """`fisher_terms` as (targets [batch], weights [batch] or None) pairs for per-example gradient maps: the
    Fisher is Σ over pairs of weight_k · (∇ log p(target_k | x_k))². `probs` [batch, labels] (detached) are
    needed by the exact estimator only."""
    if estimator == "empirical":
        return [(labels, None)]
    if estimator != "exact" or probs is None:
        raise ValueError(f"estimator={estimator!r} needs probabilities or is not one of {', '.join(ESTIMATORS)}")
    return [(torch.full_like(labels, c), probs[:, c]) for c in range(probs.shape[1]) if bool((probs[:, c] > 0).any())]


def log_probs(logits: Tensor, task_ids: Tensor, logits_fn: LogitsFn | None) -> Tensor:
    """[batch, labels] log-softmax under the head policy, in float32 at least."""
    if logits_fn is not None:
        logits = logits_fn(logits, task_ids)
    return logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)


def diagonal_fisher(model: nn.Module, batches: Callable[[], Iterable[Batch]], estimator: str = "empirical", *,
                    names: Iterable[str] | None = None, logits_fn: LogitsFn | None = None, chunk: int = 16,
                    backend: str = "auto", on_fallback: Callable[[str], None] | None = None) -> dict[str, Tensor]:
    """EWC's diagonal Fisher (mean over examples) of `names` (default: every trainable parameter), dropout off.

    Args:
        batches: returns a fresh iterable of batches on the model's device (called again on a fallback).
        estimator: `empirical` or `exact` (see `fisher_terms`).
        logits_fn: the head policy, e.g. `RunContext.logits`.
        chunk: examples whose per-example weight gradients are held at once (see the module notes on memory);
            the batches' own size bounds the activations.
        backend: `hooks`, `torch.func`, or `auto`: hooks, and torch.func when the model is not covered.
        on_fallback: called with a one-line reason whenever a slower path replaces a faster one.

    Returns:
        name -> tensor of the parameter's shape and dtype.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {', '.join(BACKENDS)}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator={estimator!r} is not one of {', '.join(ESTIMATORS)}")
    was_training = model.training
    model.eval()
    try:
        sums: dict[str, Tensor] | None = None
        if backend != "torch.func":
            try:
                sums, examples = hook_squared_grad_sums(model, batches(), estimator, names, logits_fn, chunk)
            except UnsupportedModelError as exc:
                if backend == "hooks":
                    raise
                if on_fallback is not None:
                    on_fallback(f"{exc}; using torch.func per-example gradients instead (slower, more memory)")
        if sums is None:
            sums, examples = func_squared_grad_sums(model, batches(), estimator, names, logits_fn, on_fallback)
    finally:
        model.train(was_training)
    params = dict(model.named_parameters())
    return {n: (s / max(examples, 1)).to(params[n].dtype) for n, s in sums.items()}


def hook_squared_grad_sums(model: nn.Module, batches: Iterable[Batch], estimator: str,
                           names: Iterable[str] | None = None, logits_fn: LogitsFn | None = None, chunk: int = 16,
                           ) -> tuple[dict[str, Tensor], int]:
    """(Σ_k Σ_terms (∂ℓ_k/∂θ)² per parameter, examples seen) through `SquaredGradSums`; model in eval mode."""
    acc = SquaredGradSums(model, names, chunk=chunk)
    for batch in batches:
        acc.add(batch.model_inputs(), partial(_fisher_objective, estimator, batch, logits_fn))
    return acc.sums, acc.examples


def _fisher_objective(estimator: str, batch: Batch, logits_fn: LogitsFn | None, outputs: Any) -> list[Tensor]:
    return fisher_terms(estimator, log_probs(outputs.logits, batch.task_ids, logits_fn), batch.labels)


# -------------------------------------------------------------------------------------------------- hooks


@dataclass
class CoveredLayer:
    """A covered module and the full names of the parameters accumulated for it."""

    path: str
    module: nn.Module
    params: dict[str, str]  # attribute ("weight" / "bias") -> full parameter name


def covered_layers(model: nn.Module, names: Iterable[str] | None = None) -> list[CoveredLayer]:
    """The layers owning the parameters `names` (default: every parameter that requires grad).

    Raises:
        UnsupportedModelError: listing every parameter that is not covered: owned by a module other than
            nn.Linear / nn.Embedding / nn.LayerNorm (or a subclass with its own forward), shared between
            modules, or of an nn.Embedding with max_norm or scale_grad_by_freq.
        KeyError: a name that is not a parameter of `model`.
    """
    params = dict(model.named_parameters(remove_duplicate=False))
    wanted = set(names) if names is not None else {n for n, p in params.items() if p.requires_grad}
    missing = wanted - params.keys()
    if missing:
        raise KeyError(f"not parameters of the model: {sorted(missing)}")
    owners: dict[int, list[str]] = {}
    for n, p in params.items():
        owners.setdefault(id(p), []).append(n)
    problems: list[str] = []
    layers: list[CoveredLayer] = []
    for path, module in model.named_modules(remove_duplicate=False):
        own = {attr: f"{path}.{attr}" if path else attr for attr, _ in module.named_parameters(recurse=False)}
        own = {attr: n for attr, n in own.items() if n in wanted}
        if not own:
            continue
        reason = _unsupported(module)
        for n in own.values():
            shared = [o for o in owners[id(params[n])] if o != n]
            if shared:
                problems.append(f"{n} (shared with {', '.join(shared)})")
            elif reason:
                problems.append(f"{n} ({reason})")
        layers.append(CoveredLayer(path, module, own))
    if problems:
        raise UnsupportedModelError("per-example gradients by hooks are not available for: " + "; ".join(problems))
    return layers


def _unsupported(module: nn.Module) -> str | None:
    base = next((t for t in SUPPORTED if isinstance(module, t)), None)
    if base is None:
        return f"owned by {type(module).__name__}, not one of {', '.join(t.__name__ for t in SUPPORTED)}"
    if type(module).forward is not base.forward:
        return f"{type(module).__name__} overrides {base.__name__}.forward"
    if isinstance(module, nn.Embedding) and (module.max_norm is not None or module.scale_grad_by_freq):
        return "nn.Embedding with max_norm or scale_grad_by_freq"
    return None


@contextmanager
def _requires_grad_exactly(model: nn.Module, names: set[str]) -> Iterator[None]:
    """Within the block only the parameters `names` require grad, so requires_grad marks their descendants."""
    params = dict(model.named_parameters())
    before = {n: p.requires_grad for n, p in params.items()}
    try:
        for n, p in params.items():
            p.requires_grad_(n in names)
        yield
    finally:
        for n, p in params.items():
            p.requires_grad_(before[n])


class SquaredGradSums:
    """Accumulates Σ_k Σ_terms (∂ℓ_k/∂θ)² for the covered parameters of `model` over any number of batches.

    `add(inputs, objective)` runs `model(**inputs)` once; `objective(outputs)` returns one or more [batch]
    tensors of per-example scalars, and each term gets one backward pass. Weighting a term's squared gradients
    by w_k ≥ 0 is done by returning √w_k · ℓ_k with w_k detached. The model must keep examples independent
    (eval mode). `chunk` bounds the per-example weight gradients held at once (see the module notes).

    Raises:
        UnsupportedModelError: at construction for a parameter that is not covered, or in `add` for a covered
            layer that runs more than once (or never) in a forward.
    """

    def __init__(self, model: nn.Module, names: Iterable[str] | None = None, chunk: int = 16) -> None:
        if chunk <= 0:
            raise ValueError(f"chunk={chunk} must be a positive integer")
        self.model = model
        self.chunk = chunk
        self.layers = covered_layers(model, names)
        params = dict(model.named_parameters())
        # sums in float32 at least (float64 for a float64 model), whatever the activations' dtype
        self.sums: dict[str, Tensor] = {
            n: torch.zeros(params[n].shape, device=params[n].device,
                           dtype=torch.promote_types(params[n].dtype, torch.float32))
            for layer in self.layers for n in layer.params.values()}
        self.examples = 0
        self._buffers: dict[tuple[Any, ...], Tensor] = {}  # per-example weight gradients G_k, one per shape

    def add(self, inputs: Mapping[str, Tensor], objective: Objective) -> None:
        """Accumulate one batch (`inputs` are the model's keyword arguments, batch-first)."""
        batch = next(iter(inputs.values())).shape[0]
        if not self.sums:  # nothing to accumulate (no trainable parameter)
            self.examples += batch
            return
        root = torch.zeros((), requires_grad=True, device=next(iter(self.sums.values())).device)
        calls = {layer.path: 0 for layer in self.layers}
        roots: list[str] = []

        def on_forward(layer: CoveredLayer, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
            calls[layer.path] += 1
            if calls[layer.path] > 1:
                raise UnsupportedModelError(f"{layer.path} runs more than once per forward; its per-example "
                                            "gradients would need summing over calls before squaring")
            x = args[0]
            if output.shape[0] != batch:
                if output.shape[0] != 1:
                    raise UnsupportedModelError(f"{layer.path}: output {tuple(output.shape)} is not batch-first "
                                                f"for a batch of {batch}")
                output = output.expand(batch, *output.shape[1:])  # broadcast over the batch: one row each
                x = x.expand(batch, *x.shape[1:])
            if not x.requires_grad:
                output = output + root.to(output.dtype)  # a path from the root leaf to every hooked output
                roots.append(layer.path)
            x = x.detach()
            output.register_hook(lambda g: self._accumulate(layer, x, g))  # type: ignore[no-untyped-call]
            return output

        handles = [layer.module.register_forward_hook(partial(on_forward, layer)) for layer in self.layers]
        try:
            with _requires_grad_exactly(self.model, set(self.sums)), torch.enable_grad():
                terms = list(objective(self.model(**inputs)))
                uncalled = [p for p, c in calls.items() if c == 0]
                if uncalled:
                    raise UnsupportedModelError("covered layers that the forward did not call (their parameters "
                                                f"may be used some other way): {', '.join(uncalled)}")
                if not roots:
                    raise UnsupportedModelError("no covered layer takes an input that does not require grad, so "
                                                "the layers' outputs cannot be reached without parameter gradients")
                for i, term in enumerate(terms):
                    if term.shape != (batch,):
                        raise ValueError(f"objective term {i} has shape {tuple(term.shape)}, expected ({batch},)")
                    torch.autograd.backward(term.sum(), inputs=[root], retain_graph=i < len(terms) - 1)
        finally:
            for h in handles:
                h.remove()
        self.examples += batch

    @torch.no_grad()
    def _accumulate(self, layer: CoveredLayer, x: Tensor, g: Tensor) -> None:
        """Σ_k (per-example gradient)² of one layer from its input x and its output gradient g."""
        module, batch = layer.module, g.shape[0]
        dtype = self.sums[next(iter(layer.params.values()))].dtype
        g = g.to(dtype)
        if isinstance(module, nn.Linear):
            self._linear(layer, x.reshape(batch, -1, module.in_features).to(dtype),
                         g.reshape(batch, -1, module.out_features))
        elif isinstance(module, nn.Embedding):
            self._embedding(layer, x.reshape(batch, -1), g.reshape(batch, -1, module.embedding_dim))
        elif isinstance(module, nn.LayerNorm):
            shape = tuple(module.normalized_shape)
            width = math.prod(shape)
            xhat = F.layer_norm(x.to(dtype), shape, eps=module.eps).reshape(batch, -1, width)  # [B, T, width]
            rows = g.reshape(batch, -1, width)
            self._add(layer, "weight", lambda: (rows * xhat).sum(1).square().sum(0))
            self._add(layer, "bias", lambda: rows.sum(1).square().sum(0))

    def _add(self, layer: CoveredLayer, attr: str, value: Callable[[], Tensor]) -> None:
        name = layer.params.get(attr)
        if name is not None:
            total = self.sums[name]
            total += value().view(total.shape)

    def _linear(self, layer: CoveredLayer, a: Tensor, g: Tensor) -> None:  # a [B, T, in], g [B, T, out]
        self._add(layer, "bias", lambda: g.sum(1).square().sum(0))
        name = layer.params.get("weight")
        if name is None:
            return
        total = self.sums[name]  # [out, in]
        if a.shape[1] == 1:  # G_k = g_k a_kᵀ, so Σ_k G_k² = (g²)ᵀ (a²): no per-example matrices at all
            total.addmm_(g[:, 0].square().T, a[:, 0].square())
            return
        k = min(self.chunk, a.shape[0])
        key = (*total.shape, total.dtype, total.device)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.shape[0] < k:
            buffer = self._buffers[key] = total.new_empty(k, *total.shape)  # [chunk, out, in]
        gt = g.transpose(1, 2)  # [B, out, T]
        for start in range(0, a.shape[0], k):
            m = min(k, a.shape[0] - start)
            torch.bmm(gt[start:start + m], a[start:start + m], out=buffer[:m])  # G_k for m examples
            if m == 1:
                total.addcmul_(buffer[0], buffer[0])
            else:
                total += buffer[:m].square_().sum(0)

    def _embedding(self, layer: CoveredLayer, ids: Tensor, g: Tensor) -> None:  # ids [B, T], g [B, T, dim]
        module = layer.module
        assert isinstance(module, nn.Embedding)
        vocab = module.num_embeddings
        keys = ids + vocab * torch.arange(ids.shape[0], device=ids.device).unsqueeze(1)  # (example, id) pairs
        rows = g
        if module.padding_idx is not None:  # the padding row never receives gradient
            keep = ids != module.padding_idx
            keys, rows = keys[keep], rows[keep]
        keys, rows = keys.reshape(-1), rows.reshape(-1, g.shape[-1])
        unique, inverse = torch.unique(keys, return_inverse=True)
        per_example = rows.new_zeros(len(unique), g.shape[-1]).index_add_(0, inverse, rows)  # [pairs, dim]
        self.sums[layer.params["weight"]].index_add_(0, unique % vocab, per_example.square_())


# ------------------------------------------------------------------------------------------------ torch.func


def func_squared_grad_sums(model: nn.Module, batches: Iterable[Batch], estimator: str,
                           names: Iterable[str] | None = None, logits_fn: LogitsFn | None = None,
                           on_fallback: Callable[[str], None] | None = None) -> tuple[dict[str, Tensor], int]:
    """`hook_squared_grad_sums` for any model: per-example gradients by torch.func (see `per_example_grads`)."""
    params = dict(model.named_parameters())
    wanted = list(names) if names is not None else [n for n, p in params.items() if p.requires_grad]
    sums = {n: torch.zeros(params[n].shape, device=params[n].device,
                           dtype=torch.promote_types(params[n].dtype, torch.float32)) for n in wanted}
    examples = 0
    for batch in batches:
        probs = None
        if estimator == "exact":
            with torch.no_grad():
                probs = log_probs(model(**batch.model_inputs()).logits, batch.task_ids, logits_fn).exp()
        for targets, weight in weighted_targets(estimator, batch.labels, probs):
            grads = per_example_grads(model, batch, targets, wanted, logits_fn, on_fallback)
            for n, g in grads.items():  # g [batch, *shape]
                sq = g.to(sums[n].dtype).pow(2)
                if weight is not None:
                    sq = sq * weight.view(-1, *([1] * (sq.dim() - 1)))
                sums[n] += sq.sum(0)
        examples += len(batch)
    return sums, examples


def per_example_grads(model: nn.Module, batch: Batch, targets: Tensor, names: Sequence[str],
                      logits_fn: LogitsFn | None = None, on_fallback: Callable[[str], None] | None = None,
                      ) -> dict[str, Tensor]:
    """∇_θ log p(targets_k | x_k) for every example k: name -> [batch, *parameter shape].

    torch.func's vmap where the model allows it (`vmap_grads`); otherwise one autograd call per example
    (`loop_grads`), after telling `on_fallback`.
    """
    try:
        return vmap_grads(model, batch, targets, names, logits_fn)
    except (RuntimeError, TypeError, ValueError) as exc:
        if on_fallback is not None:
            on_fallback(f"torch.func per-example gradients failed ({type(exc).__name__}: {str(exc)[:160]}); "
                        "falling back to a slower loop over examples")
        return loop_grads(model, batch, targets, names, logits_fn)


def vmap_grads(model: nn.Module, batch: Batch, targets: Tensor, names: Sequence[str],
               logits_fn: LogitsFn | None = None) -> dict[str, Tensor]:
    """`per_example_grads` by vmap(grad(·)) through `functional_call`, with an additive 4-D attention mask."""
    all_params = dict(model.named_parameters())
    trainable = {n: all_params[n].detach() for n in names}
    frozen = {n: p.detach() for n, p in all_params.items() if n not in trainable}
    frozen.update(dict(model.named_buffers()))
    dtype = next(iter(trainable.values())).dtype

    def log_likelihood(theta: dict[str, Tensor], ids: Tensor, mask: Tensor, task_id: Tensor, target: Tensor
                       ) -> Tensor:
        # one example: ids, mask [seq]; HF uses an additive mask [1, 1, 1, seq] as given
        additive = (1.0 - mask.to(dtype))[None, None, None, :] * torch.finfo(dtype).min
        out = functional_call(model, (theta, frozen), args=(), kwargs={"input_ids": ids[None],
                                                                      "attention_mask": additive})
        return log_probs(out.logits, task_id[None], logits_fn)[0].gather(0, target[None])[0]

    with warnings.catch_warnings():
        # CPU flash attention has no batching rule; torch falls back to a loop inside vmap
        warnings.filterwarnings("ignore", message=".*not yet implemented the batching rule.*")
        grads: dict[str, Tensor] = vmap(grad(log_likelihood), in_dims=(None, 0, 0, 0, 0))(
            trainable, batch.input_ids, batch.attention_mask, batch.task_ids, targets)
        return grads


def loop_grads(model: nn.Module, batch: Batch, targets: Tensor, names: Sequence[str],
               logits_fn: LogitsFn | None = None) -> dict[str, Tensor]:
    """`per_example_grads` by one autograd call per example, each cut to its own length (no padding)."""
    params = dict(model.named_parameters())
    out: dict[str, list[Tensor]] = {n: [] for n in names}
    for k in range(len(batch)):
        width = int(batch.attention_mask[k].sum())
        ids, mask = batch.input_ids[k:k + 1, :width], batch.attention_mask[k:k + 1, :width]
        logp = log_probs(model(input_ids=ids, attention_mask=mask).logits, batch.task_ids[k:k + 1], logits_fn)
        grads = torch.autograd.grad(logp[0, targets[k]], [params[n] for n in names], allow_unused=True)
        for n, g in zip(names, grads):
            out[n].append(g if g is not None else torch.zeros_like(params[n]))
    return {n: torch.stack(gs) for n, gs in out.items()}
