"""O-LoRA: new adapters add nothing until they train, old adapters and W stay frozen, the orthogonality penalty
Σ_{i<t} ‖A_i A_tᵀ‖²_F by hand and its gradient, drift on W + (α/r)·Σ_i B_i A_i, and resume after task 1."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from runs_util import comparable, tiny_run
from safetensors.torch import load_file
from torch import nn

from clbench.data import TaskInfo
from clbench.errors import ConfigError
from clbench.methods.o_lora import OLoRA, OLoRAConfig, TaskAdapters, adapter_layers, subspace_overlap
from clbench.models import build_model
from clbench.ops import effective_weights
from clbench.protocol import RunContext

TASKS = (TaskInfo(0, "a", ("x", "y"), 0), TaskInfo(1, "b", ("u", "v"), 2), TaskInfo(2, "c", ("p", "q"), 4))
RANK, ALPHA = 2, 8.0


def _setup(model: nn.Module | None = None, **options: object) -> tuple[OLoRA, nn.Module]:
    ctx = RunContext(tasks=TASKS, num_labels=6, device=torch.device("cpu"), seed=0,
                     generator=torch.Generator().manual_seed(0), buffer_size=8, batch_size=4)
    method = OLoRA(OLoRAConfig(rank=RANK, alpha=ALPHA, dropout=0.0, **options))  # type: ignore[arg-type]
    return method, method.setup(model if model is not None else build_model("tiny", 6, 0), ctx)


def _inputs(seed: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 60, (4, 12), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _train(model: nn.Module, method: OLoRA, steps: int = 5) -> None:
    """A few AdamW steps on the method's loss (task loss plus its penalties) over the trainable parameters."""
    generator = torch.Generator().manual_seed(1)
    optimizer = torch.optim.AdamW(list(method.trainable_parameters(model)), lr=1e-2)
    model.train()
    for step in range(steps):
        labels = torch.randint(0, 6, (4,), generator=generator)
        outputs = model(**_inputs(step))
        loss = method.loss(model, None, outputs, nn.functional.cross_entropy(outputs.logits, labels))  # type: ignore[arg-type]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def _loss(method: OLoRA, model: nn.Module, task_loss: float = 0.0) -> float:
    """The method's loss around a constant task loss: its penalties alone."""
    with torch.no_grad():
        return method.loss(model, None, None, torch.tensor(task_loss)).item()  # type: ignore[arg-type]


def _layers(model: nn.Module) -> dict[str, TaskAdapters]:
    return {name: m for name, m in model.named_modules() if isinstance(m, TaskAdapters)}


def test_a_new_tasks_adapter_leaves_the_outputs_unchanged() -> None:
    plain = build_model("tiny", 6, 0).eval()
    method, model = _setup()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**_inputs(9)).logits, plain(**_inputs(9)).logits)  # every B_i = 0 at setup
    method.before_task(TASKS[0], model)
    _train(model, method)
    model.eval()
    with torch.no_grad():
        trained = model(**_inputs(9)).logits
        method.before_task(TASKS[1], model)
        assert torch.equal(model(**_inputs(9)).logits, trained)
    assert not torch.equal(trained, plain(**_inputs(9)).logits)  # task 1's adapter (and head) did learn
    for layer in adapter_layers(model):
        assert layer.lora_B["0"].any() and not layer.lora_B["1"].any() and not layer.lora_B["2"].any()


def test_old_adapters_and_base_weights_stay_frozen_while_the_next_task_trains() -> None:
    method, model = _setup()
    method.before_task(TASKS[0], model)
    _train(model, method)
    method.before_task(TASKS[1], model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    current = {f"{name}.lora_{f}.1" for name in _layers(model) for f in "AB"}
    assert trainable == current | {"classifier.weight", "classifier.bias"}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if n not in trainable}
    moving = {n: p.detach().clone() for n, p in model.named_parameters() if n in current}
    _train(model, method)
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name  # task 1's adapter, W, embeddings: bit-identical
        elif name in moving:
            assert not torch.equal(param, moving[name]), name


def test_orthogonality_penalty_by_hand() -> None:
    e = torch.eye(4)
    a0 = torch.stack([e[0], e[1]])  # spans e1, e2
    a1 = torch.stack([e[0] + 2 * e[1], 3 * e[2]])
    a2 = torch.stack([e[2] + e[3], e[3]])
    # A0 A1ᵀ = [[1, 0], [2, 0]] → 1 + 4; A2 A1ᵀ = [[3, 0], [0, 0]] → 9
    assert float(subspace_overlap([a0], a1)) == 5.0
    assert float(subspace_overlap([a0, a2], a1)) == 14.0
    assert float(subspace_overlap([a0], torch.stack([e[2], e[3]]))) == 0.0  # orthogonal subspaces
    assert float(subspace_overlap([], a1)) == 0.0

    method, model = _setup(orth_weight=0.5)
    with torch.no_grad():
        for layer in adapter_layers(model):
            for key, a in (("0", a0), ("1", a1), ("2", 5 * a2)):  # A2 (a later task's) must not count at t = 1
                layer.lora_A[key].zero_()
                layer.lora_A[key][:, :4] = a
    assert len(adapter_layers(model)) == 4  # W_q and W_v in 2 layers
    method.before_task(TASKS[0], model)
    assert _loss(method, model, 1.0) == 1.0  # no earlier task: the task loss alone
    method.before_task(TASKS[1], model)
    assert _loss(method, model, 1.0) == 1.0 + 0.5 * 4 * 5.0
    method.before_task(TASKS[2], model)
    # A0 A2'ᵀ = 0; A1 A2'ᵀ with A2' = 5·A2: [[0, 0], [15, 0]] → 225
    assert _loss(method, model) == 0.5 * 4 * 225.0


def test_l2_term_is_the_squared_norm_of_the_new_adapter_only() -> None:
    method, model = _setup(orth_weight=0.0, l2_weight=0.1)
    with torch.no_grad():
        for layer in adapter_layers(model):
            layer.lora_A["1"].fill_(0.5)  # ‖A_1‖² = 2 · 64 · 0.25 = 32 per layer
            layer.lora_B["1"].fill_(1.0)  # ‖B_1‖² = 64 · 2 = 128 per layer
    method.before_task(TASKS[1], model)
    assert _loss(method, model) == pytest.approx(0.1 * 4 * (32 + 128), rel=1e-6)


def test_the_penalty_gradient_reaches_only_the_new_adapters_a() -> None:
    method, model = _setup(orth_weight=1.0)
    method.before_task(TASKS[1], model)
    method.loss(model, None, None, torch.zeros(())).backward()  # type: ignore[arg-type]
    for name, layer in _layers(model).items():
        grad = layer.lora_A["1"].grad
        assert grad is not None and grad.abs().sum() > 0, name
    for name, param in model.named_parameters():
        if not name.endswith(".lora_A.1"):
            assert param.grad is None or not param.grad.any(), name


def test_effective_weights_are_w_plus_the_scaled_sum_of_every_adapter() -> None:
    method, model = _setup()
    plain = effective_weights(build_model("tiny", 6, 0))
    assert set(effective_weights(model)) == set(plain)  # drift compares the same names as the plain model
    for task in TASKS[:2]:
        method.before_task(task, model)
        _train(model, method)
    after = effective_weights(model)
    for name, layer in _layers(model).items():
        key = name + ".weight"
        expected = plain[key] + (ALPHA / RANK) * sum(layer.lora_B[k].detach() @ layer.lora_A[k].detach()
                                                     for k in ("0", "1", "2"))
        assert layer.lora_B["0"].any() and layer.lora_B["1"].any()
        torch.testing.assert_close(after[key], expected, rtol=0, atol=1e-6)


TARGETS = {f"bert.encoder.layer.{i}.attention.self.{m}.weight" for i in (0, 1) for m in ("query", "value")}
HEAD = {"classifier.weight", "classifier.bias"}


def test_runs_on_stream_and_drift_sees_the_summed_adapters(
        run_tiny: Callable[..., tuple[Path, list[dict[str, Any]]]]) -> None:
    out, records = run_tiny(("o-lora",), keep_checkpoints=True)
    assert [r["value"] for r in records if r["type"] == "unit"] == ["done"]
    drift = [r for r in records if r["type"] == "drift" and r["param"] != "__overall__"]
    for row in (1, 2, 3):
        moved = {r["param"] for r in drift if r["metric"] == "frobenius_task" and r["row"] == row and r["value"]}
        assert moved == TARGETS | HEAD, row
    state = load_file(next((out / "checkpoints").rglob("task3/model.safetensors")))
    for param in TARGETS:
        prefix = param.removesuffix(".weight")
        delta = (ALPHA / 8 * 2) * sum(state[f"{prefix}.lora_B.{i}"] @ state[f"{prefix}.lora_A.{i}"]
                                      for i in range(3))  # default rank 8, α 16: scaling 2
        (total,) = [r for r in drift if r["param"] == param and r["metric"] == "frobenius_total" and r["row"] == 3]
        assert total["norm_change"] == pytest.approx(float(delta.norm()), rel=1e-5)  # ‖(α/r)·Σ_i B_i A_i‖_F
        assert total["norm_before"] == pytest.approx(float(state[f"{prefix}.base_layer.weight"].norm()), rel=1e-6)


def test_resume_after_task_one_gives_the_uninterrupted_results(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    reference = tiny_run(tmp_path / "ref", ("o-lora",), eval_every=2)
    loss = OLoRA.loss

    def interrupted(self: OLoRA, *args: Any) -> Any:
        if self.task == 1:
            raise KeyboardInterrupt  # as Ctrl-C during task 2, after task 1's checkpoint
        return loss(self, *args)

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(OLoRA, "loss", interrupted)
        with pytest.raises(KeyboardInterrupt):
            tiny_run(out, ("o-lora",), eval_every=2)
    resumed = tiny_run(out, ("o-lora",), eval_every=2, resume=True)
    assert [r["value"] for r in resumed if r["type"] == "resume"] == [1]
    assert comparable(resumed) == comparable(reference)


def test_targets_follow_the_architecture_and_a_causal_lm_trains_only_adapters() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=6, pad_token_id=0)
    torch.manual_seed(0)
    for cls, head in ((LlamaForSequenceClassification, {"score.weight"}), (LlamaForCausalLM, set())):
        method, model = _setup(cls(config))
        assert sorted(_layers(model)) == [f"model.layers.{i}.self_attn.{m}" for i in (0, 1)
                                          for m in ("q_proj", "v_proj")]
        method.before_task(TASKS[2], model)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == {f"{n}.lora_{f}.2" for n in _layers(model) for f in "AB"} | head
    method, model = _setup(build_model("tiny", 6, 0), target_modules=("key",))
    assert sorted(_layers(model)) == [f"bert.encoder.layer.{i}.attention.self.key" for i in (0, 1)]
    with pytest.raises(ConfigError, match="named qkv"):
        _setup(build_model("tiny", 6, 0), target_modules=("query", "qkv"))
