"""Per-example gradient maths: the hook-based Fisher against a plain per-example autograd loop and torch.func.

Tolerance: per parameter, max|Δ| / max|reference| ≤ 1e-5 in float32 (≤ 1e-10 in float64, where rounding is
out of the way). Parameters whose reference is zero up to rounding (an attention key bias: softmax over keys
ignores a shift shared by all keys, so its gradient is exactly zero and every method returns squares of
rounding noise) must stay below 1e-12 × the largest Fisher entry instead.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

from clbench.data import Batch, BatchPlan, EncodedSplit, TaskInfo
from clbench.methods import RunContext
from clbench.models import build_model
from clbench.per_example import (
    SquaredGradSums,
    UnsupportedModelError,
    covered_layers,
    diagonal_fisher,
    loop_grads,
    vmap_grads,
)

TASKS = (TaskInfo(0, "a", ("x", "y", "z", "w"), 0), TaskInfo(1, "b", ("x", "y", "z"), 4))  # 7 labels
LENGTHS = [12, 3, 9, 5, 16, 7, 11, 4]  # chunks of 4 mix long and short examples: padding in every chunk
RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}
ZERO = 1e-12


def make_split(lengths: list[int], vocab: int, seed: int = 0) -> EncodedSplit:
    g = torch.Generator().manual_seed(seed)
    n, width = len(lengths), max(lengths)
    lens = torch.tensor(lengths)
    ids = torch.randint(5, vocab, (n, width), generator=g)
    ids[:, 0] = 2  # a [CLS]-like start token
    ids[torch.arange(width).unsqueeze(0) >= lens.unsqueeze(1)] = 0  # right padding with pad id 0
    task_ids = torch.tensor([k % 2 for k in range(n)])
    labels = torch.tensor([TASKS[t].label_offset + int(torch.randint(0, TASKS[t].num_classes, (1,), generator=g))
                           for t in task_ids.tolist()])
    return EncodedSplit(ids, lens, labels, task_ids)


def context(head: str) -> RunContext:
    return RunContext(tasks=TASKS, num_labels=7, device=torch.device("cpu"), seed=0,
                      generator=torch.Generator().manual_seed(1), buffer_size=0, batch_size=4, head=head)


def chunks(data: EncodedSplit, size: int) -> list[Batch]:
    return [data.batch(i) for i in BatchPlan(data, size, shuffle=False).indices()]


def loop_fisher(model: nn.Module, data: EncodedSplit, estimator: str, ctx: RunContext) -> dict[str, Tensor]:
    """Reference: one example at a time, cut to its own length (no padding), squares summed in float64."""
    model.eval()
    params = dict(model.named_parameters())
    total = {n: torch.zeros(p.shape, dtype=torch.float64) for n, p in params.items()}
    for k in range(len(data)):
        one = data.batch(torch.tensor([k]))
        logits = ctx.forward(model, one)
        logp = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)[0]
        probs = logp.detach().exp()
        terms = [(logp[one.labels[0]], 1.0)] if estimator == "empirical" else \
            [(logp[c], float(probs[c])) for c in range(len(logp)) if probs[c] > 0]
        for i, (term, weight) in enumerate(terms):
            grads = torch.autograd.grad(term, list(params.values()), retain_graph=i < len(terms) - 1)
            for n, gr in zip(params, grads, strict=True):
                total[n] += weight * gr.double().pow(2)
    return {n: (t / len(data)).to(params[n].dtype) for n, t in total.items()}


def mismatches(got: dict[str, Tensor], ref: dict[str, Tensor], rtol: float) -> list[str]:
    """Parameters where `got` differs from `ref` beyond the module's stated tolerance (empty: equal)."""
    assert got.keys() == ref.keys(), got.keys() ^ ref.keys()
    top = max(float(r.abs().max()) for r in ref.values())
    bad = []
    for n, r in ref.items():
        scale = float(r.abs().max())
        if scale < ZERO * top:  # zero in exact arithmetic (key biases): rounding noise must stay tiny
            if float(got[n].abs().max()) > ZERO * top:
                bad.append(f"{n}: {float(got[n].abs().max()):.2e} where the reference is zero")
            continue
        rel = float((got[n].double() - r.double()).abs().max()) / scale
        if rel > rtol:
            bad.append(f"{n}: max|Δ|/max|ref| = {rel:.2e}")
    return bad


def fishers(model: nn.Module, data: EncodedSplit, estimator: str, head: str, chunk: int, backend: str = "hooks"
            ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(hook or torch.func Fisher over padded chunks, loop reference)."""
    ctx = context(head)
    got = diagonal_fisher(model, lambda: chunks(data, 4), estimator, logits_fn=ctx.logits, chunk=chunk,
                          backend=backend)
    return got, loop_fisher(model, data, estimator, ctx)


@pytest.mark.parametrize("estimator, head", [("empirical", "shared"), ("exact", "shared"),
                                             ("empirical", "per-task"), ("exact", "per-task")])
@pytest.mark.parametrize("chunk", [1, 3, 16])  # per-example weight gradients one at a time, 3 with a rest, all
def test_hooks_equal_the_per_example_loop_with_padding(estimator: str, head: str, chunk: int) -> None:
    model = build_model("tiny", 7, 0)
    data = make_split(LENGTHS, model.config.vocab_size)
    got, ref = fishers(model, data, estimator, head, chunk)
    assert not mismatches(got, ref, RTOL[torch.float32])


@pytest.mark.parametrize("pooling", ["mean", "cls"])  # cls: the pooler's dense layer on one position
def test_hooks_equal_the_loop_in_float64(pooling: str) -> None:
    model = build_model("tiny", 7, 0, pooling=pooling).double()
    data = make_split(LENGTHS, model.config.vocab_size)
    for estimator, head in [("empirical", "shared"), ("exact", "per-task")]:
        got, ref = fishers(model, data, estimator, head, chunk=3)
        assert not mismatches(got, ref, RTOL[torch.float64]), (estimator, head)


@pytest.mark.parametrize("estimator", ["empirical", "exact"])
def test_hooks_equal_torch_func_the_previous_implementation(estimator: str) -> None:
    model = build_model("tiny", 7, 0)
    data = make_split(LENGTHS, model.config.vocab_size)
    hooks, _ = fishers(model, data, estimator, "per-task", chunk=16)
    func, ref = fishers(model, data, estimator, "per-task", chunk=16, backend="torch.func")
    assert not mismatches(func, ref, RTOL[torch.float32])
    assert not mismatches(hooks, func, RTOL[torch.float32])


def test_a_subset_of_parameters_and_a_frozen_body() -> None:
    model = build_model("tiny", 7, 0)
    data = make_split(LENGTHS, model.config.vocab_size)
    names = [n for n, _ in model.named_parameters() if n.startswith("classifier.") or ".layer.1." in n]
    ctx = context("shared")
    got = diagonal_fisher(model, lambda: chunks(data, 4), "empirical", names=names, logits_fn=ctx.logits)
    ref = loop_fisher(model, data, "empirical", ctx)
    assert set(got) == set(names)
    assert not mismatches(got, {n: ref[n] for n in names}, RTOL[torch.float32])
    assert all(p.requires_grad for p in model.parameters())  # restored after the pass


def test_vmap_and_loop_per_example_gradients_agree_on_a_minilm_shaped_model() -> None:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=64, hidden_size=384, num_hidden_layers=1, num_attention_heads=12, intermediate_size=1536,
        num_labels=5, hidden_dropout_prob=0.1)).eval()  # MiniLM's width and heads, one layer
    batch = make_split([6, 4], 64).batch(torch.arange(2))
    names = [n for n, _ in model.named_parameters()]
    vmapped = vmap_grads(model, batch, batch.labels % 5, names)
    looped = loop_grads(model, batch, batch.labels % 5, names)
    assert all(torch.allclose(vmapped[n], looped[n], rtol=1e-4, atol=1e-6) for n in names)


class Conv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 3, 1)
        self.lin = nn.Linear(3, 2)


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(5, 4)
        self.out = nn.Linear(4, 5, bias=False)
        self.out.weight = self.emb.weight


@pytest.mark.parametrize("model, message", [(Conv(), "conv.weight (owned by Conv1d"), (Tied(), "shared with")])
def test_uncovered_parameters_are_refused_by_name(model: nn.Module, message: str) -> None:
    with pytest.raises(UnsupportedModelError, match=message.replace("(", r"\(")):
        covered_layers(model)


class Twice(nn.Module):
    """A classifier whose Linear runs twice per forward: per-example gradients must sum over calls first."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(64, 8)
        self.lin = nn.Linear(8, 8)
        self.head = nn.Linear(8, 7)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> object:
        hidden = self.lin(self.lin(self.emb(input_ids)))  # [batch, seq, 8]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return type("Out", (), {"logits": self.head((hidden * mask).sum(1) / mask.sum(1))})()


def test_a_layer_called_twice_is_refused_and_auto_falls_back_to_torch_func_once() -> None:
    model = Twice()
    data = make_split(LENGTHS, 64)
    with pytest.raises(UnsupportedModelError, match="more than once"):
        SquaredGradSums(model).add(chunks(data, 4)[0].model_inputs(), lambda out: [out.logits[:, 0]])
    reasons: list[str] = []
    ctx = context("shared")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.func's own notes; the fallback is reported through on_fallback
        auto = diagonal_fisher(model, lambda: chunks(data, 4), "empirical", logits_fn=ctx.logits,
                               on_fallback=reasons.append)
    assert len(reasons) >= 1 and "more than once" in reasons[0]
    assert not mismatches(auto, loop_fisher(model, data, "empirical", ctx), RTOL[torch.float32])
    with pytest.raises(UnsupportedModelError):
        diagonal_fisher(model, lambda: chunks(data, 4), "empirical", backend="hooks")


@pytest.mark.network
@pytest.mark.slow  # the per-example loop reference on MiniLM: about a minute on 2 CPU cores
def test_hooks_equal_the_per_example_loop_on_minilm() -> None:
    model = build_model("minilm", 7, 0)
    layers = covered_layers(model)
    assert sum(len(layer.params) for layer in layers) == len(list(model.parameters()))  # every parameter
    data = make_split([40, 6, 23, 12, 31, 9, 17, 28], model.config.vocab_size)
    for estimator, head in [("empirical", "shared"), ("exact", "per-task")]:
        got, ref = fishers(model, data, estimator, head, chunk=16)
        assert not mismatches(got, ref, RTOL[torch.float32]), (estimator, head)
