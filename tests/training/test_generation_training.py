"""Generation tasks train on their target answers alone: the training forward passes (the runner's step and a
method's `loss_of`) take a batch's B target rows, not its B alternatives too, and give the loss and the
updates that the forward over both rows gave; preference training and evaluation keep both rows (tiny-lm)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from runs_util import FIXTURES, tiny_run

from clbench.config import build_config
from clbench.data import TaskInfo
from clbench.data.pairs import PairBatch, PairSplit, encode_pairs
from clbench.data.prepare import prepare
from clbench.data.render import join_preference
from clbench.methods import Hooks, RunContext
from clbench.methods.replay import Replay, ReplayConfig
from clbench.models import build_causal_lm
from clbench.preference import sequence_log_probs, target_nll
from clbench.training.runner import train_step

CPU = torch.device("cpu")
TASKS = (TaskInfo(0, "a", ("yes", "no"), 0), TaskInfo(1, "b", ("up", "down"), 2))
GENERATION = str(FIXTURES / "generation_synthetic.yaml")


@pytest.fixture(scope="module")
def tokenizer():
    from clbench.models import load_tokenizer

    return load_tokenizer("tiny-lm")


def questions(tokenizer, n: int, task: int = 0, words: int = 1) -> PairSplit:
    """`n` questions whose alternative answers are longer than their targets, so the batch width comes from
    the alternatives and the target rows carry extra padding; `words` lengthens the prompts."""
    texts = [join_preference(f"q{task}.{i} {'word ' * words}->", f"yes {'a' * (i % 3 + 1)}",
                             f"no, certainly not {'b' * (2 * i + 1)}") for i in range(n)]
    return encode_pairs(texts, [0] * n, TASKS[task].label_offset, task, tokenizer, 64)


def context(kind: str = "generation") -> RunContext:
    return RunContext(tasks=TASKS, num_labels=4, device=CPU, seed=0, generator=torch.Generator().manual_seed(0),
                      buffer_size=8, batch_size=4, kind=kind, beta=0.5)


class BothRows(RunContext):
    """A generation training forward over every row, targets then alternatives (`model_inputs`): the layout
    the loss must not depend on."""

    def training_inputs(self, batch: PairBatch) -> dict[str, torch.Tensor]:
        return batch.model_inputs()


def both_rows_context() -> RunContext:
    return BothRows(tasks=TASKS, num_labels=4, device=CPU, seed=0, generator=torch.Generator().manual_seed(0),
                    buffer_size=8, batch_size=4, kind="generation", beta=0.5)


def hand_nll(model: torch.nn.Module, batch: PairBatch) -> float:
    """Mean NLL per target token, one unpadded forward pass per target sequence: no masks, no batching."""
    total, count = 0.0, 0
    for i in range(len(batch)):
        ids = batch.chosen_ids[i, :int(batch.chosen_mask[i].sum())]
        start = int(batch.prompt_lengths[i])
        with torch.no_grad():
            log_p = torch.log_softmax(model(input_ids=ids.unsqueeze(0)).logits[0].float(), dim=-1)
        total -= float(log_p[start - 1:-1].gather(-1, ids[start:].unsqueeze(-1)).sum())
        count += len(ids) - start
    return total / count


def rows_seen(model: torch.nn.Module) -> list[int]:
    """A list that fills with the number of rows of every forward pass `model` runs from now on."""
    rows: list[int] = []
    model.register_forward_pre_hook(lambda _, args, kwargs: rows.append(kwargs["input_ids"].shape[0]),
                                    with_kwargs=True)
    return rows


@pytest.mark.parametrize("appended", [False, True], ids=["plain", "with-a-replay-batch"])
def test_the_targets_alone_give_the_both_rows_target_nll(tokenizer, appended):
    """The appended batch has longer prompts: the concatenation is wider than the batch, whose rows then carry
    more right padding, which a causal model's logits at real positions must not see."""
    model = build_causal_lm("tiny-lm", seed=0).eval()
    batch = questions(tokenizer, 4).batch(torch.arange(4))
    inputs = batch.concat(questions(tokenizer, 3, task=1, words=6).batch(torch.arange(3))) if appended else batch
    assert inputs.chosen_ids.shape[1] > batch.chosen_ids.shape[1] or not appended
    with torch.no_grad():
        targets = model(**context().training_inputs(inputs)).logits
        both = model(**inputs.model_inputs()).logits
    assert targets.shape[0] == len(inputs)
    torch.testing.assert_close(target_nll(targets, batch), target_nll(both, batch), rtol=1e-6, atol=1e-6)
    assert float(target_nll(targets, batch)) == pytest.approx(hand_nll(model, batch), abs=1e-5)


@pytest.mark.parametrize("method", ["naive", "replay"])
def test_training_on_the_targets_alone_gives_the_both_rows_losses_and_weights(tokenizer, method):
    """Three AdamW steps through the runner's `train_step`; replay adds the memory's target NLL (`loss_of`)."""
    config = build_config({"methods": [method], "model": "tiny-lm", "stream": GENERATION})
    data = questions(tokenizer, 8, task=1)
    results = []
    for ctx in (context(), both_rows_context()):
        model = build_causal_lm("tiny-lm", seed=0)
        hooks = Replay(ReplayConfig()) if method == "replay" else Hooks()
        model = hooks.setup(model, ctx)
        if method == "replay":
            hooks.after_task(TASKS[0], model, questions(tokenizer, 6, words=3))
        params = list(model.parameters())
        optimizer = ctx.adamw(params, lr=1e-2)
        losses = [train_step(model, hooks, ctx, data.batch(torch.arange(i, i + 4) % 8), params, optimizer, config)
                  for i in range(0, 12, 4)]
        results.append((losses, {n: p.detach().clone() for n, p in model.named_parameters()}))
    (losses, weights), (both_losses, both_weights) = results
    assert losses == pytest.approx(both_losses, rel=1e-5)
    assert losses[-1] < losses[0] - 0.1  # the steps did learn: equal weights are not equal starting weights
    for name, value in weights.items():
        torch.testing.assert_close(value, both_weights[name], rtol=0, atol=1e-5)


def test_a_generation_step_forwards_the_targets_and_the_replayed_targets_only(tokenizer):
    ctx = context()
    model = build_causal_lm("tiny-lm", seed=0)
    replay = Replay(ReplayConfig(replay_batch_size=3))
    replay.setup(model, ctx)
    replay.after_task(TASKS[0], model, questions(tokenizer, 6))
    rows = rows_seen(model)
    params = list(model.parameters())
    config = build_config({"methods": ["replay"], "model": "tiny-lm", "stream": GENERATION})
    train_step(model, replay, ctx, questions(tokenizer, 4, task=1).batch(torch.arange(4)), params,
               ctx.adamw(params), config)
    assert rows == [4, 3]  # the new batch's targets, then the memory's (not 8 and 6 with their alternatives)
    sequence_log_probs(model, questions(tokenizer, 5), 8, CPU)
    assert rows[2:] == [10]  # evaluation scores the target against the alternative: both rows


def test_a_preference_step_forwards_both_responses(tokenizer):
    ctx = context("preference")
    model = build_causal_lm("tiny-lm", seed=0)
    rows = rows_seen(model)
    pairs = questions(tokenizer, 4)
    batch = pairs.with_reference(torch.zeros(4, 2)).batch(torch.arange(4))
    params = list(model.parameters())
    config = build_config({"methods": ["naive"], "model": "tiny-lm", "stream": GENERATION})
    train_step(model, Hooks(), ctx, batch, params, ctx.adamw(params), config)
    assert rows == [8]  # DPO compares the chosen and the rejected response


def test_the_training_profile_counts_the_target_tokens_forwarded(tmp_path: Path):
    """One epoch over every training question: the tokens recorded are those of the targets, padding aside."""
    values = {"stream": GENERATION, "model": "tiny-lm", "train_size": 24, "test_size": 8, "batch_size": 4,
              "max_steps": None, "epochs": 1}
    records = tiny_run(tmp_path / "run", ("naive",), **values)
    train = prepare(build_config({"methods": ["naive"], "out": str(tmp_path / "run"), **values})).train
    for info, split in enumerate(train):
        assert isinstance(split, PairSplit)
        got = next(r["value"] for r in records if r["type"] == "profile" and r["row"] == info + 1
                   and r["phase"] == "train" and r["metric"] == "tokens")
        assert got == int(split.chosen_lengths.sum())
