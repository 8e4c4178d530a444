"""Weight and functional drift on tensors with hand-computable norms."""

from __future__ import annotations

import math

import pytest
import torch

from clbench.evaluators import (
    EvaluatorError,
    frobenius_drift,
    functional_drift,
    grouped_frobenius_drift,
    layer_key,
    lora_delta_weight,
)
from clbench.evaluators.drift import frobenius_drift_norms


def test_frobenius_drift_known_tensors() -> None:
    before = {"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([[1.0, 0.0], [0.0, 0.0]])}
    after = {
        "a": torch.tensor([3.0, 4.0]) + torch.tensor([0.0, 0.5]),
        "b": torch.tensor([[1.0, 1.0], [1.0, 1.0]]),
    }
    per_tensor, overall = frobenius_drift(before, after)
    assert per_tensor["a"] == pytest.approx(0.5 / 5.0)  # ‖(0, .5)‖ / ‖(3, 4)‖
    assert per_tensor["b"] == pytest.approx(math.sqrt(3.0) / 1.0)
    # Overall over the concatenation: sqrt(0.25 + 3) / sqrt(25 + 1), not the mean of the two ratios.
    assert overall == pytest.approx(math.sqrt(3.25) / math.sqrt(26.0))
    assert list(per_tensor) == ["a", "b"]


def test_frobenius_drift_lora_like_only_some_tensors_change() -> None:
    gen = torch.Generator().manual_seed(0)
    base = {f"encoder.layer.{i}.attention.query.weight": torch.randn(4, 4, generator=gen) for i in range(2)}
    base["classifier.weight"] = torch.randn(2, 4, generator=gen)
    lora_a = torch.randn(2, 4, generator=gen)  # [rank, in]
    lora_b = torch.randn(4, 2, generator=gen)  # [out, rank]
    delta = lora_delta_weight(lora_a, lora_b, alpha=16.0, rank=2)
    torch.testing.assert_close(delta, 8.0 * lora_b @ lora_a)
    after = dict(base)
    after["encoder.layer.1.attention.query.weight"] = base["encoder.layer.1.attention.query.weight"] + delta
    per_tensor, overall = frobenius_drift(base, after)
    name = "encoder.layer.1.attention.query.weight"
    assert per_tensor["encoder.layer.0.attention.query.weight"] == 0.0
    assert per_tensor["classifier.weight"] == 0.0
    expected = (delta.norm() / base[name].norm()).item()
    assert per_tensor[name] == pytest.approx(expected, rel=1e-6)
    total = math.sqrt(sum(float(w.square().sum()) for w in base.values()))
    assert overall == pytest.approx(delta.norm().item() / total, rel=1e-6)
    by_layer = grouped_frobenius_drift(base, after)
    assert list(by_layer) == ["encoder.layer.0", "encoder.layer.1", "classifier"]
    assert by_layer["encoder.layer.0"] == 0.0 and by_layer["classifier"] == 0.0
    assert by_layer["encoder.layer.1"] == pytest.approx(expected, rel=1e-6)


def test_zero_norm_tensors_and_integer_buffers() -> None:
    before = {
        "w": torch.ones(4),
        "bias_unchanged": torch.zeros(3),
        "bias_changed": torch.zeros(3),
        "position_ids": torch.arange(5),
    }
    after = {
        "w": torch.ones(4),
        "bias_unchanged": torch.zeros(3),
        "bias_changed": torch.tensor([0.0, 2.0, 0.0]),
        "position_ids": torch.arange(5) + 1,
    }
    per_tensor, overall = frobenius_drift(before, after)
    assert per_tensor["bias_unchanged"] == 0.0
    assert math.isnan(per_tensor["bias_changed"])  # relative change of a zero tensor is undefined
    assert "position_ids" not in per_tensor  # integer buffers are not weights
    assert overall == pytest.approx(2.0 / 2.0)  # the zero tensor's change still counts: ‖Δ‖=2, ‖θ‖=2
    _, all_zero = frobenius_drift({"z": torch.zeros(2)}, {"z": torch.ones(2)})
    assert math.isnan(all_zero)


def test_drift_mismatched_names_and_shapes() -> None:
    with pytest.raises(EvaluatorError, match="names differ"):
        frobenius_drift({"a": torch.ones(2)}, {"b": torch.ones(2)})
    per_tensor, _ = frobenius_drift(
        {"a": torch.ones(2), "x": torch.ones(1)}, {"a": torch.ones(2)}, strict=False
    )
    assert list(per_tensor) == ["a"]
    with pytest.raises(EvaluatorError, match="shape"):
        frobenius_drift({"a": torch.ones(2)}, {"a": torch.ones(3)})
    with pytest.raises(EvaluatorError, match="rank"):
        lora_delta_weight(torch.ones(2, 4), torch.ones(4, 3), alpha=1.0, rank=2)


def test_drift_does_not_modify_inputs_and_handles_half_precision() -> None:
    before = {"w": torch.full((2, 2), 2.0, dtype=torch.float16)}
    after = {"w": torch.full((2, 2), 3.0, dtype=torch.bfloat16)}
    per_tensor, _ = frobenius_drift(before, after)
    assert per_tensor["w"] == pytest.approx(0.5)
    assert before["w"].dtype == torch.float16 and float(before["w"][0, 0]) == 2.0


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("bert.encoder.layer.3.attention.self.query.weight", "bert.encoder.layer.3"),
        ("base_model.model.bert.encoder.layer.11.output.dense.weight", "bert.encoder.layer.11"),
        ("bert.embeddings.LayerNorm.weight", "bert.embeddings"),
        ("bert.pooler.dense.bias", "bert.pooler"),
        ("classifier.weight", "classifier"),
        ("transformer.h.0.attn.c_attn.weight", "transformer.h.0"),
        ("model.layers.7.mlp.up_proj.weight", "model.layers.7"),
        ("scale", "scale"),
    ],
)
def test_layer_key(name: str, group: str) -> None:
    assert layer_key(name) == group


def test_grouped_drift_combines_norms_not_ratios() -> None:
    before = {"l.layer.0.a": torch.tensor([3.0, 4.0]), "l.layer.0.b": torch.tensor([1.0])}
    after = {"l.layer.0.a": torch.tensor([3.0, 4.0]), "l.layer.0.b": torch.tensor([2.0])}
    assert grouped_frobenius_drift(before, after) == {"l.layer.0": pytest.approx(1.0 / math.sqrt(26.0))}


def test_functional_drift_identical_distributions() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, -5.0], [100.0, -100.0, 0.0]])
    drift = functional_drift(logits, logits.clone())
    assert drift.kl == pytest.approx(0.0, abs=1e-12)
    assert drift.bhattacharyya == pytest.approx(0.0, abs=1e-12)
    assert drift.agreement == 1.0
    # Shifting logits by a constant leaves the softmax unchanged.
    assert functional_drift(logits, logits + 7.0).kl == pytest.approx(0.0, abs=1e-12)


def test_functional_drift_two_class_hand_computed() -> None:
    # Input 1: p = (0.25, 0.75), q = (0.8, 0.2) -> argmax differs. Input 2: p = q = (0.5, 0.5).
    p = torch.tensor([[0.25, 0.75], [0.5, 0.5]])
    q = torch.tensor([[0.8, 0.2], [0.5, 0.5]])
    kl_1 = 0.25 * math.log(0.25 / 0.8) + 0.75 * math.log(0.75 / 0.2)
    bd_1 = -math.log(math.sqrt(0.25 * 0.8) + math.sqrt(0.75 * 0.2))
    drift = functional_drift(p.log(), q.log())  # log-probabilities are valid logits
    assert drift.kl == pytest.approx(kl_1 / 2, rel=1e-6)
    assert drift.bhattacharyya == pytest.approx(bd_1 / 2, rel=1e-6)
    assert drift.agreement == 0.5
    kl_reverse = 0.8 * math.log(0.8 / 0.25) + 0.2 * math.log(0.2 / 0.75)
    assert functional_drift(q.log(), p.log()).kl == pytest.approx(kl_reverse / 2, rel=1e-6)


def test_functional_drift_is_stable_for_extreme_logits() -> None:
    before = torch.tensor([[1000.0, -1000.0], [0.0, 0.0]])
    after = torch.tensor([[-1000.0, 1000.0], [0.0, 0.0]])
    drift = functional_drift(before, after)
    assert math.isfinite(drift.kl) and drift.kl == pytest.approx(2000.0 / 2)
    # −log(sqrt(1·e^-2000) + sqrt(e^-2000·1)) = 1000 − log 2 for input 1, 0 for input 2.
    assert drift.bhattacharyya == pytest.approx((1000.0 - math.log(2.0)) / 2, rel=1e-9)
    assert drift.agreement == 0.5
    with pytest.raises(EvaluatorError):
        functional_drift(before, after[:1])
    empty = functional_drift(torch.zeros(0, 2), torch.zeros(0, 2))
    assert math.isnan(empty.kl)


def test_norms_of_large_tensors_keep_float64_accuracy() -> None:
    # a float32 norm of 4M elements in one reduction loses ~1e-4 relative on a CPU; per-row sums must not
    g = torch.Generator().manual_seed(0)
    before = {"emb": 0.01 + 0.05 * torch.randn(4_000_000, generator=g), "bias": torch.randn(7, generator=g)}
    after = {n: w + 1e-4 * torch.randn(w.shape, generator=g) for n, w in before.items()}
    per_tensor, overall, norms = frobenius_drift_norms(before, after)
    for name, w in before.items():
        change = float((after[name].double() - w.double()).norm())
        assert norms[name][0] == pytest.approx(float(w.double().norm()), rel=1e-7)
        assert norms[name][1] == pytest.approx(change, rel=1e-7)
        assert per_tensor[name] == pytest.approx(change / float(w.double().norm()), rel=1e-7)
    assert overall > 0.0
