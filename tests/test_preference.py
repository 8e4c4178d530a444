"""DPO, its reference, preference accuracy and FIP's token-level distance, checked against hand computations."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from clbench.data.pairs import PairSplit, encode_pairs
from clbench.data.render import join_preference
from clbench.preference import (
    dpo_loss,
    pair_log_probs,
    preference_accuracy,
    reward_margins,
    sequence_log_probs,
    token_anchors,
    token_distance,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tokenizer():
    from clbench.models import load_tokenizer

    return load_tokenizer("tiny-lm")


@pytest.fixture()
def model():
    from clbench.models import build_causal_lm

    return build_causal_lm("tiny-lm", seed=0).eval()


def pairs(tokenizer, n: int = 6, max_length: int = 40) -> PairSplit:
    texts = [join_preference(f"question {i}?", f"a kind answer number {i}", f"no{'!' * (i + 1)}") for i in range(n)]
    return encode_pairs(texts, [0] * n, 0, 0, tokenizer, max_length)


def hand_log_prob(model, ids: list[int], start: int) -> float:
    """Σ_{t ≥ start} log p(ids[t] | ids[:t]) with one forward pass per token: no masks, no batching."""
    total = 0.0
    for t in range(start, len(ids)):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids[:t]])).logits[0, -1]
        total += float(torch.log_softmax(logits, -1)[ids[t]])
    return total


def test_encoded_pairs_share_the_prompt_and_end_with_eos(tokenizer):
    split = pairs(tokenizer)
    for i in range(len(split)):
        start = int(split.prompt_lengths[i])
        chosen = split.chosen_ids[i, :split.chosen_lengths[i]].tolist()
        rejected = split.rejected_ids[i, :split.rejected_lengths[i]].tolist()
        assert chosen[:start] == rejected[:start]
        assert chosen[-1] == rejected[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(chosen[start:-1]) == f"a kind answer number {i}"


def test_a_chat_template_that_opens_with_bos_gives_one_bos(tokenizer):
    chat = copy.deepcopy(tokenizer)  # ChatML-like, as SmolLM2's: the template itself starts with the BOS token
    chat.chat_template = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                          "{% if add_generation_prompt %}[assistant] {% endif %}")
    split = encode_pairs([join_preference("hi?", "yes", "no")], [0], 0, 0, chat, max_length=64)
    bos = chat.bos_token_id
    chosen = split.chosen_ids[0, :split.chosen_lengths[0]].tolist()
    assert chosen[0] == bos and bos not in chosen[1:]
    start = int(split.prompt_lengths[0])
    assert chat.decode(chosen[1:start]) == "[user] hi?\n[assistant] "


def test_a_prompt_cut_to_half_the_budget_keeps_bos_and_its_end(tokenizer):
    prompt = "a long instruction " * 8 + "ends here."
    split = encode_pairs([join_preference(prompt, "yes", "no")], [0], 0, 0, tokenizer, max_length=33)
    start = int(split.prompt_lengths[0])
    head = split.chosen_ids[0, :start].tolist()
    assert start == (33 - 1) // 2  # half of the budget left beside EOS
    assert head[0] == tokenizer.bos_token_id
    assert tokenizer.decode(head[1:]) == (prompt + "\n")[-(start - 1):]  # tiny-lm: one token per byte


def test_pair_log_probs_equal_a_token_by_token_computation(tokenizer, model):
    split = pairs(tokenizer)
    batch = split.batch(torch.arange(len(split)))
    with torch.no_grad():
        got = pair_log_probs(model(**batch.model_inputs()).logits, batch)
    for i in range(len(split)):
        start = int(split.prompt_lengths[i])
        for col, (ids, lengths) in enumerate(((split.chosen_ids, split.chosen_lengths),
                                              (split.rejected_ids, split.rejected_lengths))):
            want = hand_log_prob(model, ids[i, :lengths[i]].tolist(), start)
            assert got[i, col].item() == pytest.approx(want, abs=1e-4)


def test_dpo_loss_equals_the_formula():
    policy = torch.tensor([[-10.0, -12.0], [-5.0, -4.0]])
    reference = torch.tensor([[-11.0, -11.0], [-5.5, -3.0]])
    beta = 0.3
    margins = [(-10 + 11) - (-12 + 11), (-5 + 5.5) - (-4 + 3)]
    want = sum(-math.log(1 / (1 + math.exp(-beta * m))) for m in margins) / 2
    assert dpo_loss(policy, reference, beta).item() == pytest.approx(want, rel=1e-6)
    assert dpo_loss(policy, policy, beta).item() == pytest.approx(math.log(2), rel=1e-6)  # at the reference


def test_preference_accuracy_and_margin_on_hand_made_pairs():
    base = torch.tensor([[-10.0, -10.0], [-10.0, -10.0], [-10.0, -10.0], [-10.0, -10.0]])
    policy = torch.tensor([[-9.0, -10.0],  # chosen up: preferred
                           [-10.0, -9.0],  # rejected up: not preferred
                           [-8.0, -8.0],  # both up equally: a tie, half
                           [-10.0, -12.0]])  # rejected down: preferred
    assert preference_accuracy(policy, base) == pytest.approx(2.5 / 4)
    assert preference_accuracy(base, base) == 0.5  # row 0 is chance by definition
    assert reward_margins(policy, base, 0.1).tolist() == pytest.approx([0.1, -0.1, 0.0, 0.2])


def test_reference_log_probs_equal_a_frozen_copy(tokenizer, model):
    """What the runner attaches once per task equals the log-probs of a copy frozen at the task's start, after
    the model has moved on."""
    split = pairs(tokenizer)
    frozen = copy.deepcopy(model)
    reference = sequence_log_probs(model, split, 4, CPU)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = split.batch(torch.arange(len(split)))
    with torch.no_grad():
        want = pair_log_probs(frozen(**batch.model_inputs()).logits, batch)
        moved = pair_log_probs(model(**batch.model_inputs()).logits, batch)
    assert torch.allclose(reference, want, atol=1e-5)
    assert not torch.allclose(reference, moved, atol=1e-3)


@pytest.mark.parametrize("topk", [0, 8])
def test_fip_token_distance_is_zero_with_zero_gradient_at_the_anchor(tokenizer, model, topk):
    split = pairs(tokenizer)
    anchors = token_anchors(model, split, 4, CPU, topk)
    index = torch.arange(len(split))
    batch = split.batch(index)
    rows = anchors.rows(index, batch.chosen_ids.shape[1], CPU)
    distance = token_distance(model(**batch.chosen_inputs()).logits, batch, rows)
    distance.backward()
    assert abs(distance.item()) < 1e-5
    assert max(p.grad.abs().max().item() for p in model.parameters() if p.grad is not None) < 1e-5
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        moved = token_distance(model(**batch.chosen_inputs()).logits, batch, rows).item()
    assert moved > 1e-4


def test_top_k_distance_is_a_lower_bound_of_the_full_one(tokenizer, model):
    split = pairs(tokenizer)
    index = torch.arange(len(split))
    batch = split.batch(index)
    width = batch.chosen_ids.shape[1]
    full = token_anchors(model, split, 4, CPU, 0).rows(index, width, CPU)
    coarse = token_anchors(model, split, 4, CPU, 4).rows(index, width, CPU)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        logits = model(**batch.chosen_inputs()).logits
        d_full, d_coarse = token_distance(logits, batch, full).item(), token_distance(logits, batch, coarse).item()
    assert 0 < d_coarse <= d_full + 1e-6
