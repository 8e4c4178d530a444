"""clbench.interop.avalanche: packed tensor batches, the unpacking wrapper, and an Avalanche Naive run."""

from __future__ import annotations

import sys

import pytest
import torch

from clbench.data import EncodedSplit
from clbench.errors import ClbenchError
from clbench.interop.avalanche import PackedSequenceClassifier, avalanche_benchmark, pack, unpack


def split(n: int, task: int, offset: int, width: int, seed: int) -> EncodedSplit:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, width + 1, (n,), generator=g)
    ids = torch.randint(5, 64, (n, width), generator=g)
    ids[torch.arange(width).unsqueeze(0) >= lengths.unsqueeze(1)] = 0
    labels = torch.arange(n) % 2 + offset
    return EncodedSplit(ids, lengths, labels, torch.full((n,), task))


def tiny_bert(num_labels: int) -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=num_labels)
    return BertForSequenceClassification(config)


def test_pack_unpack_round_trip() -> None:
    s = split(6, 0, 0, 10, 0)
    x = pack(s, width=12)  # [6, 2, 12]
    assert x.shape == (6, 2, 12)
    ids, mask = unpack(x)
    width = int(s.lengths.max())
    assert torch.equal(ids, s.ids[:, :width]) and torch.equal(mask.sum(1), s.lengths)


def test_wrapper_matches_direct_call() -> None:
    model = tiny_bert(4).eval()
    s = split(5, 0, 0, 9, 1)
    batch = s.batch(torch.arange(5))
    with torch.inference_mode():
        direct = model(**batch.model_inputs()).logits
        wrapped = PackedSequenceClassifier(model)(pack(s, width=16))
    assert torch.allclose(direct, wrapped, atol=1e-5)


def test_missing_avalanche_is_a_clbench_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "avalanche" or m.startswith("avalanche.")] + [
            "avalanche", "avalanche.benchmarks.scenarios.dataset_scenario", "avalanche.benchmarks.utils"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ClbenchError, match=r"pip install 'clbench\[avalanche\]'"):
        avalanche_benchmark([(split(4, 0, 0, 8, 0), split(4, 0, 0, 8, 1))])


@pytest.mark.filterwarnings("ignore:No loggers specified:UserWarning")  # metrics are read from the return value
def test_naive_strategy_trains_one_task() -> None:
    pytest.importorskip("avalanche")
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.supervised import Naive

    pairs = [(split(48, 0, 0, 12, 0), split(16, 0, 0, 12, 1)), (split(32, 1, 2, 10, 2), split(16, 1, 2, 14, 3))]
    benchmark = avalanche_benchmark(pairs)
    assert len(benchmark.train_stream) == 2 and len(benchmark.test_stream) == 2
    x, y, t = benchmark.train_stream[1].dataset[0]
    assert x.shape == (2, 14) and int(y) in (2, 3) and t == 1
    model = PackedSequenceClassifier(tiny_bert(4))
    before = [p.detach().clone() for p in model.parameters()]
    strategy = Naive(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
                     criterion=torch.nn.CrossEntropyLoss(), train_mb_size=8, train_epochs=1, eval_mb_size=16,
                     device="cpu", evaluator=EvaluationPlugin(accuracy_metrics(experience=True), loggers=[]))
    strategy.train(benchmark.train_stream[0])
    results = strategy.eval(benchmark.test_stream[:1])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    accuracy = [v for k, v in results.items() if k.startswith("Top1_Acc_Exp")]
    assert accuracy and 0.0 <= accuracy[0] <= 1.0
