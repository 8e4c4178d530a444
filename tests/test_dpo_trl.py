"""clbench's DPO against TRL's `DPOTrainer` on the tiny causal LM: the same sequences give the same loss.

TRL has no standalone DPO loss function, so its side is the trainer's own path: `DPOTrainer` tokenises a
prompt/chosen/rejected dataset, its collator builds the batch (chosen rows, then rejected rows, right-padded,
with a completion mask), `compute_loss` scores it with the fused LM head it patches onto the model and the
reference it is given, and `compute_ref_log_probs` gives the per-sequence sums that the loss is built from.
clbench's side is `pair_log_probs` and `dpo_loss` on a `PairBatch` holding TRL's tensors.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from clbench.data.pairs import PairBatch, encode_pairs, prompt_text
from clbench.data.render import join_preference
from clbench.preference import dpo_loss, pair_log_probs

pytest.importorskip("trl", minversion="1.16")  # compute_ref_log_probs and the fused LM head

BETA = 0.1
# (prompt, chosen, rejected): prompts of different lengths, and rejected responses both shorter and longer
# than the chosen ones, so both halves of the batch are padded and every pair's response starts elsewhere.
EXAMPLES = [
    ("hi?", "hello there, how can I help", "go away"),
    ("what is two plus two?", "four", "it is five, obviously, as everyone knows"),
    ("name a colour.", "blue", "no!!"),
    ("why?", "because the sky scatters blue light more", "dunno"),
]


@pytest.fixture(scope="module")
def tokenizer():
    from clbench.models import load_tokenizer

    return load_tokenizer("tiny-lm")


@pytest.fixture(scope="module")
def models():
    """(policy, reference): the tiny LM, and a copy of it moved by seeded noise so the loss is not log 2."""
    from clbench.models import build_causal_lm

    reference = build_causal_lm("tiny-lm", seed=0).eval()
    policy = copy.deepcopy(reference)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in policy.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return policy, reference


@pytest.fixture(scope="module")
def trl_side(tokenizer, models, tmp_path_factory):
    """(trainer, batch): a DPOTrainer on copies of the models (it patches their forward) and its first batch."""
    import datasets
    from trl import DPOConfig, DPOTrainer

    policy, reference = models
    # tiny-lm's tokenizer adds no special tokens; clbench starts every sequence with BOS, so TRL's prompt
    # carries it as text (an added special token, read back as its id). TRL appends EOS to each response.
    dataset = datasets.Dataset.from_dict({
        "prompt": [tokenizer.bos_token + prompt_text(tokenizer, p) for p, _, _ in EXAMPLES],
        "chosen": [c for _, c, _ in EXAMPLES],
        "rejected": [r for _, _, r in EXAMPLES],
    })
    args = DPOConfig(output_dir=str(tmp_path_factory.mktemp("trl")), beta=BETA, loss_type=["sigmoid"],
                     report_to=[], bf16=False, use_cpu=True, per_device_train_batch_size=len(EXAMPLES),
                     precompute_ref_log_probs=False, seed=0)
    trainer = DPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(reference), args=args,
                         train_dataset=dataset, processing_class=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(EXAMPLES))])
    return trainer, batch


def pair_batch(inputs: dict[str, torch.Tensor]) -> PairBatch:
    """TRL's collated batch ([2B, W] rows: chosen then rejected) as a clbench PairBatch."""
    ids, attention, completion = inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"]
    # clbench expects right padding: every row's real tokens first (a non-increasing attention mask)
    assert (attention[:, 1:] <= attention[:, :-1]).all(), "TRL padded on the left: convert the rows first"
    starts = completion.argmax(dim=1)  # [2B] first completion token of each row
    chosen_starts, rejected_starts = starts.chunk(2)
    assert torch.equal(chosen_starts, rejected_starts)  # a pair shares its prompt
    half = ids.shape[0] // 2
    zeros = torch.zeros(half, dtype=torch.long)
    return PairBatch(ids[:half], attention[:half], ids[half:], attention[half:], chosen_starts, zeros, zeros)


def test_trl_and_clbench_build_the_same_sequences(tokenizer, trl_side):
    _, inputs = trl_side
    batch = pair_batch(inputs)
    # the tokens clbench scores are the ones TRL scores
    assert torch.equal(batch.response_mask(), inputs["completion_mask"].bool())
    # and clbench's own encoding of the same pairs is TRL's, token for token
    split = encode_pairs([join_preference(*example) for example in EXAMPLES], [0] * len(EXAMPLES), 0, 0,
                         tokenizer, max_length=128)
    ours = split.batch(torch.arange(len(split)))
    for name in ("chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask", "prompt_lengths"):
        assert torch.equal(getattr(ours, name), getattr(batch, name)), name


def test_dpo_loss_and_log_probs_equal_trl_and_a_hand_computation(trl_side, models):
    trainer, inputs = trl_side
    policy, reference = models
    # TRL: the loss of one batch, and the per-sequence sums of completion log-probs it is built from
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, inputs).item()
        trl_policy = torch.stack(trainer.compute_ref_log_probs(trainer.model, inputs), dim=1)  # [B, 2]
        trl_reference = torch.stack(trainer.compute_ref_log_probs(trainer.ref_model, inputs), dim=1)  # [B, 2]
    # clbench, on the unpatched models
    batch = pair_batch(inputs)
    with torch.no_grad():
        ours_policy = pair_log_probs(policy(**batch.model_inputs()).logits, batch)  # [B, 2]
        ours_reference = pair_log_probs(reference(**batch.model_inputs()).logits, batch)  # [B, 2]
        ours_loss = float(dpo_loss(ours_policy, ours_reference, BETA))

    # sums of up to ~40 token log-probs, as low as -230: float32 rounding leaves differences of order 1e-5
    torch.testing.assert_close(ours_policy, trl_policy, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(ours_reference, trl_reference, rtol=1e-6, atol=1e-4)
    # the per-sequence sums feed the very `compute_loss` call above: its logged batch means agree
    logged = trainer._metrics["eval"]  # the models are in eval mode
    assert logged["logps/chosen"][-1] == pytest.approx(float(ours_policy[:, 0].mean()), abs=1e-4)
    assert logged["logps/rejected"][-1] == pytest.approx(float(ours_policy[:, 1].mean()), abs=1e-4)
    assert logged["rewards/margins"][-1] == pytest.approx(
        float(BETA * ((ours_policy[:, 0] - ours_reference[:, 0]) - (ours_policy[:, 1] - ours_reference[:, 1])).mean()),
        abs=1e-5)

    # −log σ(β [(π_w − ref_w) − (π_l − ref_l)]) averaged over pairs, in float64 from TRL's log-probs
    margins = [BETA * ((pw - rw) - (pl - rl)) for (pw, pl), (rw, rl) in zip(trl_policy.tolist(), trl_reference.tolist())]
    hand = sum(math.log1p(math.exp(-m)) for m in margins) / len(margins)
    assert abs(hand - math.log(2)) > 0.02  # the policy differs from the reference: not the trivial loss
    assert trl_loss == pytest.approx(hand, abs=1e-5)
    assert ours_loss == pytest.approx(trl_loss, abs=1e-5)
