"""EWC: the penalty and its gradient, the three Fisher estimators, online EWC, config checks, a full run."""

from __future__ import annotations

import warnings

import pytest
import torch

from clbench.data import BatchPlan, EncodedSplit, TaskInfo
from clbench.methods import RunContext
from clbench.methods.ewc import EWC, EWCConfig
from clbench.models import build_model
from clbench.per_example import diagonal_fisher

TASKS = (TaskInfo(0, "a", ("x", "y", "z"), 0), TaskInfo(1, "b", ("x", "y"), 3))
LATER = TaskInfo(2, "c", ("x",), 5)  # a task after TASKS, so that after_task(TASKS[1]) has a task to protect


def split(n: int, task: TaskInfo = TASKS[0], seed: int = 0, width: int = 8) -> EncodedSplit:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, width + 1, (n,), generator=g)
    ids = torch.randint(5, 60, (n, width), generator=g)
    ids[torch.arange(width).unsqueeze(0) >= lengths.unsqueeze(1)] = 0  # right padding
    labels = task.label_offset + torch.randint(0, task.num_classes, (n,), generator=g)
    return EncodedSplit(ids, lengths, labels, torch.full((n,), task.index))


def method(batch_size: int = 4, head: str = "shared", tasks: tuple[TaskInfo, ...] = (*TASKS, LATER),
           **options: object) -> tuple[EWC, torch.nn.Module]:
    model = build_model("tiny", 5, 0)
    ewc = EWC(EWCConfig(**options))  # type: ignore[arg-type]
    ctx = RunContext(tasks=tasks, num_labels=5, device=torch.device("cpu"), seed=0,
                     generator=torch.Generator().manual_seed(1), buffer_size=0, batch_size=batch_size, head=head)
    return ewc, ewc.setup(model, ctx)


def close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-7) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-4, atol=atol) for k in a)


def test_penalty_and_gradient_vanish_at_the_anchor_and_match_lambda_f_delta_elsewhere() -> None:
    ewc, model = method(penalty_weight=7.0, fisher_batch_size=6)
    ewc.after_task(TASKS[0], model, split(6))
    task_loss = torch.zeros(())
    loss = ewc.loss(model, None, None, task_loss)  # type: ignore[arg-type]
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert all(float(p.grad.abs().max()) == 0.0 for p in model.parameters() if p.grad is not None)

    model.zero_grad()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    loss = ewc.loss(model, None, None, task_loss)  # type: ignore[arg-type]
    loss.backward()
    fisher, anchor = ewc.fishers[0], ewc.anchors[0]
    params = dict(model.named_parameters())
    expected = sum(0.5 * 7.0 * (fisher[n] * (params[n] - anchor[n]) ** 2).sum() for n in fisher)
    assert torch.allclose(loss, expected, rtol=1e-5)
    for n in fisher:
        assert torch.allclose(params[n].grad, 7.0 * fisher[n] * (params[n] - anchor[n]), rtol=1e-5, atol=1e-10)


def test_batched_equals_empirical_at_batch_size_one() -> None:
    data = split(6)
    empirical, model = method(batch_size=1, estimator="empirical", fisher_batch_size=4)
    batched, _ = method(batch_size=1, estimator="batched")
    assert close(empirical.fisher(model, data), batched.fisher(model, data))


def test_empirical_matches_squared_single_example_gradients() -> None:
    data = split(5)
    ewc, model = method(fisher_batch_size=3)
    fisher = ewc.fisher(model, data)
    model.eval()
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for k in range(5):
        one = data.batch(torch.tensor([k]))
        logp = model(**one.model_inputs()).logits.log_softmax(-1)[0, one.labels[0]]
        for (n, p), g in zip(model.named_parameters(), torch.autograd.grad(logp, list(model.parameters()))):
            expected[n] += g.pow(2) / 5
    assert close(fisher, expected)


@pytest.mark.parametrize("head", ["shared", "per-task"])
def test_exact_is_the_expectation_over_predicted_labels(head: str) -> None:
    data = split(2)
    ewc, model = method(head=head, estimator="exact", fisher_batch_size=2)
    fisher = ewc.fisher(model, data)
    model.eval()
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for k in range(2):
        one = data.batch(torch.tensor([k]))
        logp = ewc.context.forward(model, one).log_softmax(-1)[0]  # [num_labels]
        for c in range(5):
            if logp[c].exp() == 0:
                continue  # another task's class under per-task heads
            grads = torch.autograd.grad(logp[c], list(model.parameters()), retain_graph=True)
            for (n, _), g in zip(model.named_parameters(), grads):
                expected[n] += logp[c].exp().detach() * g.pow(2) / 2
    assert close(fisher, expected)


@pytest.mark.parametrize("estimator", ["empirical", "exact", "batched"])
def test_fisher_after_a_task_is_the_eval_mode_networks_and_training_mode_is_restored(estimator: str) -> None:
    """The runner calls after_task on a model in train mode: F must be the deterministic network's (dropout
    off), and the model must go back to train mode for the next task."""
    data = split(6)
    ewc, model = method(batch_size=3, estimator=estimator, fisher_batch_size=3)
    assert model.training
    ewc.after_task(TASKS[0], model, data)
    assert model.training
    reference, _ = method(batch_size=3, estimator=estimator, fisher_batch_size=3)
    expected = reference.fisher(model.eval(), data)
    assert close(ewc.fishers[0], expected, atol=0.0)


@pytest.mark.parametrize("estimator", ["empirical", "exact"])
def test_fisher_equals_the_torch_func_path_it_replaced(estimator: str) -> None:
    data = split(7)
    ewc, model = method(head="per-task", estimator=estimator, fisher_batch_size=3)
    names = [n for n, _ in model.named_parameters()]
    func = diagonal_fisher(model, lambda: [data.batch(i) for i in BatchPlan(data, 3, shuffle=False).indices()],
                           estimator, names=names, logits_fn=ewc.context.logits, backend="torch.func")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the tiny BERT is covered: no fallback
        assert close(ewc.fisher(model, data), func)


def test_an_uncovered_model_falls_back_to_torch_func_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    from clbench import per_example

    def refuse(*args: object, **kwargs: object) -> object:
        raise per_example.UnsupportedModelError("per-example gradients by hooks are not available for: x")

    data = split(5)
    ewc, model = method(fisher_batch_size=2)
    expected = method(fisher_batch_size=2)[0].fisher(model, data)
    monkeypatch.setattr(per_example, "hook_squared_grad_sums", refuse)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = ewc.fisher(model, data)
        ewc.fisher(model, data)
    assert [str(w.message) for w in caught if "ewc:" in str(w.message) and "torch.func" in str(w.message)] \
        and len([w for w in caught if "ewc:" in str(w.message)]) == 1
    assert close(got, expected)


def test_separate_terms_and_online_decay() -> None:
    data_a, data_b = split(4, seed=1), split(4, TASKS[1], seed=2)
    separate, model = method(fisher_batch_size=4)
    separate.after_task(TASKS[0], model, data_a)
    with torch.no_grad():
        next(model.parameters()).add_(0.05)
    separate.after_task(TASKS[1], model, data_b)
    assert len(separate.fishers) == 2 and len(separate.anchors) == 2

    online, model2 = method(online=True, gamma=0.25, fisher_batch_size=4)
    online.after_task(TASKS[0], model2, data_a)
    with torch.no_grad():
        next(model2.parameters()).add_(0.05)
    online.after_task(TASKS[1], model2, data_b)
    assert len(online.fishers) == 1
    expected = {n: 0.25 * separate.fishers[0][n] + separate.fishers[1][n] for n in separate.fishers[0]}
    assert close(online.fishers[0], expected)
    assert close(online.anchors[0], separate.anchors[1])

    # the penalties: one term per earlier task, against one decayed term at the latest anchor
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p, p2 in zip(model.parameters(), model2.parameters()):
            p.add_(0.1 * torch.randn(p.shape, generator=g))
            p2.copy_(p)
    theta = dict(model.named_parameters())
    by_task = sum((f[n] * (theta[n] - a[n]) ** 2).sum() for a, f in zip(separate.anchors, separate.fishers)
                  for n in f)
    decayed = sum((expected[n] * (theta[n] - separate.anchors[1][n]) ** 2).sum() for n in expected)
    torch.testing.assert_close(separate.penalty(model), by_task, rtol=1e-5, atol=0)
    torch.testing.assert_close(online.penalty(model2), decayed, rtol=1e-5, atol=0)


def test_fisher_samples_draws_a_deterministic_subset() -> None:
    data = split(12)
    runs = []
    for _ in range(2):
        ewc, model = method(fisher_samples=5, fisher_batch_size=8)
        ewc.after_task(TASKS[0], model, data)
        runs.append(ewc.fishers[0])
    assert close(runs[0], runs[1], atol=0.0)


def test_no_fisher_after_the_streams_last_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing follows the last task, so its Fisher would protect nothing: it is not computed (it cost as much
    as the first task's, paid per unit)."""
    ewc, model = method(fisher_batch_size=4, tasks=TASKS)
    computed: list[int] = []
    real = ewc.fisher
    monkeypatch.setattr(ewc, "fisher", lambda m, d: (computed.append(len(d)), real(m, d))[1])
    ewc.after_task(TASKS[0], model, split(4))
    ewc.after_task(TASKS[1], model, split(6, TASKS[1]))
    assert computed == [4] and len(ewc.fishers) == 1 and len(ewc.anchors) == 1


def test_state_dict_round_trip() -> None:
    ewc, model = method(fisher_batch_size=4)
    ewc.after_task(TASKS[0], model, split(4))
    restored, _ = method()
    restored.load_state_dict(ewc.state_dict())
    assert close(restored.fishers[0], ewc.fishers[0], atol=0.0)
    assert close(restored.anchors[0], ewc.anchors[0], atol=0.0)


@pytest.mark.parametrize("options, message", [
    ({"estimator": "diag"}, "estimator"), ({"penalty_weight": -1.0}, "penalty_weight"),
    ({"gamma": 0.5}, "online"), ({"online": True, "gamma": 1.5}, "gamma"), ({"fisher_batch_size": 0}, "fisher")])
def test_config_validation(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EWCConfig(**options)  # type: ignore[arg-type]


def test_runs_through_the_synthetic_stream(run_tiny) -> None:  # type: ignore[no-untyped-def]
    _, records = run_tiny(("ewc",), train_size=24, test_size=12, method_options={"ewc": {"fisher_samples": 8}})
    rows = {(r["row"], r["eval_index"]) for r in records if r["type"] == "accuracy" and r["metric"] == "acc_cil"}
    assert rows == {(i, j) for i in range(4) for j in range(3)}
