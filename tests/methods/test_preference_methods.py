"""The causal-LM paths of the methods, against independent computations: EWC's Fisher of the preference and of
the target likelihood, FIP's token-level distance, replay's reference for its stored pairs."""

from __future__ import annotations

import copy

import pytest
import torch

from clbench.data import TaskInfo
from clbench.data.pairs import PairSplit, encode_pairs
from clbench.data.render import join_preference
from clbench.methods import RunContext
from clbench.preference import (
    dpo_loss,
    generation_fisher,
    pair_log_probs,
    preference_fisher,
    sequence_log_probs,
    token_anchors,
    token_distance,
)

CPU = torch.device("cpu")
TASKS = (TaskInfo(0, "a", ("chosen", "rejected"), 0), TaskInfo(1, "b", ("chosen", "rejected"), 2))


@pytest.fixture(scope="module")
def tokenizer():
    from clbench.models import load_tokenizer

    return load_tokenizer("tiny-lm")


def model(seed: int = 0) -> torch.nn.Module:
    from clbench.models import build_causal_lm

    return build_causal_lm("tiny-lm", seed=seed).eval()


def pairs(tokenizer, n: int = 4, task: int = 0) -> PairSplit:
    texts = [join_preference(f"q{i}:", f"yes {'a' * (i + 1)}", f"no {'b' * (2 * i + 1)}") for i in range(n)]
    return encode_pairs(texts, [0] * n, 0, task, tokenizer, 32)


def context(kind: str) -> RunContext:
    return RunContext(tasks=TASKS, num_labels=4, device=CPU, seed=0, generator=torch.Generator().manual_seed(0),
                      buffer_size=8, batch_size=2, kind=kind, beta=0.5)


def one_by_one(net: torch.nn.Module, split: PairSplit, value) -> dict[str, torch.Tensor]:
    """Mean over examples of the squared gradient of `value(net, batch_of_one)`, by plain autograd."""
    total = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    for i in range(len(split)):
        net.zero_grad()
        value(net, split.batch(torch.tensor([i]))).backward()
        for n, p in net.named_parameters():
            total[n] += p.grad.pow(2)
    return {n: t / len(split) for n, t in total.items()}


def assert_fisher_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal within float32 rounding: 1e-4 relative, or 1e-5 of the tensor's largest entry. The two sides
    round differently along the chain (the runner scales ∇m by (1 − σ)β, the reference differentiates log σ(βm)),
    so an entry whose gradient nearly cancels over a pair's tokens can miss 1e-4 relative on its own: 1.3e-4 at
    an entry 1e-7 of its tensor's largest, on this machine's CPU."""
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


@pytest.mark.parametrize("estimator", ["empirical", "exact"])
def test_preference_fisher_is_the_fisher_of_the_bradley_terry_likelihood(tokenizer, estimator):
    policy, frozen = model(), model()
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    split = pairs(tokenizer)
    split = split.with_reference(sequence_log_probs(frozen, split, 4, CPU))
    beta = 0.5
    names = [n for n, _ in policy.named_parameters()]
    got = preference_fisher(policy, split, estimator, beta, names, CPU, 2)

    def log_likelihood(net, batch):  # log σ(β m) of the pair that was chosen: −DPO loss
        return -dpo_loss(pair_log_probs(net(**batch.model_inputs()).logits, batch), batch.reference, beta)

    def log_likelihood_flipped(net, batch):  # the other outcome: log σ(−β m)
        policy_lp = pair_log_probs(net(**batch.model_inputs()).logits, batch)
        return -dpo_loss(policy_lp.flip(1), batch.reference.flip(1), beta)

    if estimator == "empirical":
        want = one_by_one(policy, split, log_likelihood)
    else:  # expectation over the model's own preference: Σ_o p_o (∇ log p_o)²
        want = {n: torch.zeros_like(p) for n, p in policy.named_parameters()}
        for i in range(len(split)):
            batch = split.batch(torch.tensor([i]))
            with torch.no_grad():
                p_w = float(torch.exp(log_likelihood(policy, batch)))
            for weight, value in ((p_w, log_likelihood), (1 - p_w, log_likelihood_flipped)):
                grads = one_by_one(policy, split.subset(torch.tensor([i])), value)
                for n in want:
                    want[n] += weight * grads[n] / len(split)
    for n in names:
        assert_fisher_close(got[n], want[n])
    assert max(float(t.max()) for t in got.values()) > 0


def test_generation_fisher_is_the_fisher_of_the_target_likelihood(tokenizer):
    net = model()
    split = pairs(tokenizer)
    names = [n for n, _ in net.named_parameters()]
    got = generation_fisher(net, split, "empirical", names, CPU, 2)

    def log_likelihood(m, batch):  # log p(target | prompt): the chosen response's summed token log-probs
        return pair_log_probs(m(**batch.model_inputs()).logits, batch)[0, 0]

    want = one_by_one(net, split, log_likelihood)
    for n in names:
        assert_fisher_close(got[n], want[n])
    with pytest.raises(ValueError, match="estimator 'exact' is not defined on generation tasks"):
        generation_fisher(net, split, "exact", names, CPU, 2)


def test_token_distance_equals_a_position_by_position_computation(tokenizer):
    """Σ over chosen sequences of the mean, over positions that predict one of its tokens, of
    −log Σ_v √(p_v q_v), computed here one position at a time."""
    anchor, moved = model(0), model(1)
    split = pairs(tokenizer)
    index = torch.arange(len(split))
    batch = split.batch(index)
    anchors = token_anchors(anchor, split, 4, CPU, 0).rows(index, batch.chosen_ids.shape[1], CPU)
    with torch.no_grad():
        got = token_distance(moved(**batch.chosen_inputs()).logits, batch, anchors).item()
        want = 0.0
        for i in range(len(split)):
            ids = split.chosen_ids[i, :split.chosen_lengths[i]].unsqueeze(0)
            p = torch.softmax(moved(input_ids=ids).logits[0], -1)
            q = torch.softmax(anchor(input_ids=ids).logits[0], -1)
            per_position = -torch.log((p * q).sqrt().sum(-1))[:-1]  # the last position predicts no token
            want += float(per_position.mean())
    assert got == pytest.approx(want, rel=1e-4)


def test_replay_scores_stored_pairs_against_the_model_at_the_new_task_start(tokenizer):
    from clbench.methods.replay import Replay, ReplayConfig

    replay = Replay(ReplayConfig(policy="balanced"))
    first = model(0)
    replay.setup(first, context("preference"))
    old = pairs(tokenizer)
    replay.after_task(TASKS[0], first, old.with_reference(sequence_log_probs(first, old, 4, CPU)))
    now = model(1)  # the model after task 1 (any other weights)
    replay.before_task(TASKS[1], now)
    assert replay.pairs is not None
    stored = replay.stored()
    torch.testing.assert_close(replay.pairs.reference, sequence_log_probs(now, stored, 4, CPU))
    assert not torch.allclose(replay.pairs.reference, sequence_log_probs(first, stored, 4, CPU), atol=1e-3)
    batch = replay.memory_batch()
    assert batch is not None and batch.reference is not None
    replay_generation = Replay(ReplayConfig())  # generation: no reference, the targets' NLL
    replay_generation.setup(copy.deepcopy(first), context("generation"))
    replay_generation.after_task(TASKS[0], first, old)
    replay_generation.before_task(TASKS[1], now)
    assert replay_generation.pairs is None and replay_generation.memory_batch() is not None


def test_fip_replays_each_pair_with_its_own_anchor(tokenizer):
    """At a task's start the model is its own anchor: every replay batch (random pairs of the buffer) has
    distance 0, which fails if a batch were scored against other pairs' cached distributions."""
    from clbench.methods.fip import FIP, FIPConfig, replay_distance

    fip = FIP(FIPConfig(replay_batch_size=3, token_topk=8))
    net = model(0)
    fip.setup(net, context("preference"))
    fip.after_task(TASKS[0], net, pairs(tokenizer, n=6))
    fip.before_task(TASKS[1], net)
    for _ in range(3):
        batch, anchors = fip.replay_batch()
        assert replay_distance(net, fip.context, batch, anchors).item() < 1e-5
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch, anchors = fip.replay_batch()
    assert replay_distance(net, fip.context, batch, anchors).item() > 1e-4
