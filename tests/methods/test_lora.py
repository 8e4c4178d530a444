"""LoRA: base weights untouched while adapters train, ΔW = (α/r)·B·A, the policies, and a run on the stream."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from clbench.data import TaskInfo
from clbench.methods.lora import LoRA, LoRAConfig, lora_layers
from clbench.models import build_model
from clbench.ops import effective_weights
from clbench.protocol import RunContext

TASKS = (TaskInfo(0, "a", ("x", "y", "z"), 0), TaskInfo(1, "b", ("u", "v"), 3))


def _setup(**options: object) -> tuple[LoRA, nn.Module, RunContext]:
    ctx = RunContext(tasks=TASKS, num_labels=5, device=torch.device("cpu"), seed=0,
                     generator=torch.Generator().manual_seed(0), buffer_size=8, batch_size=4)
    method = LoRA(LoRAConfig(rank=4, alpha=8.0, dropout=0.0, **options))  # type: ignore[arg-type]
    return method, method.setup(build_model("tiny", 5, 0), ctx), ctx


def _train(model: nn.Module, method: LoRA, steps: int = 5) -> None:
    generator = torch.Generator().manual_seed(1)
    optimizer = torch.optim.AdamW(list(method.trainable_parameters(model)), lr=1e-2)
    for _ in range(steps):
        ids = torch.randint(5, 60, (4, 12), generator=generator)
        labels = torch.randint(0, 5, (4,), generator=generator)
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        nn.functional.cross_entropy(logits, labels).backward()
        optimizer.step()
        optimizer.zero_grad()


def _base(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()
            if ".lora_" not in n and ".modules_to_save." not in n and ".original_module." not in n}


def test_base_weights_bit_identical_and_delta_is_scaled_ba() -> None:
    method, model, _ = _setup(first_task="lora")
    plain_names = set(effective_weights(build_model("tiny", 5, 0)))
    assert set(effective_weights(model)) == plain_names  # drift compares the same tensors as the plain model
    method.before_task(TASKS[0], model)
    base = _base(model)
    _train(model, method)
    for name, value in _base(model).items():
        assert torch.equal(value, base[name]), name
    after = effective_weights(model)
    scale = 8.0 / 4
    layers = dict(model.named_modules())
    checked = 0
    for name, layer in layers.items():
        if layer in lora_layers(model):
            b = layer.lora_B["default"].weight  # [d_out, r]
            a = layer.lora_A["default"].weight  # [r, d_in]
            assert b.abs().sum() > 0  # the adapter trained
            key = name.removeprefix("base_model.model.") + ".weight"
            expected = base[name + ".base_layer.weight"] + scale * b.detach() @ a.detach()
            torch.testing.assert_close(after[key], expected, rtol=0, atol=1e-6)
            checked += 1
    assert checked == 4  # query and value in each of the 2 layers


def test_per_task_merges_adapter_into_base_and_starts_fresh() -> None:
    method, model, _ = _setup(first_task="lora", adapter_policy="per_task")
    method.before_task(TASKS[0], model)
    _train(model, method)
    before = effective_weights(model)
    method.after_task(TASKS[0], model, None)  # type: ignore[arg-type]
    after = effective_weights(model)
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=1e-6)  # same function
    for layer in lora_layers(model):
        assert not layer.lora_B["default"].weight.any()  # fresh adapter: ΔW = 0


def test_first_task_full_then_adapters_and_frozen_head() -> None:
    method, model, _ = _setup(first_task="full", head="frozen")
    assert method.first_task_is_finetuning
    method.before_task(TASKS[0], model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("embeddings" in n for n in trainable) and any("modules_to_save" in n for n in trainable)
    assert not any(".lora_" in n for n in trainable)
    method.before_task(TASKS[1], model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    assert not LoRA(LoRAConfig(first_task="lora")).first_task_is_finetuning


TARGETS = {f"bert.encoder.layer.{i}.attention.self.{m}.weight" for i in (0, 1) for m in ("query", "value")}


@pytest.mark.parametrize("options", [{}, {"first_task": "lora", "adapter_policy": "per_task", "head": "frozen"}])
def test_runs_on_stream_and_moves_only_adapted_weights(run_tiny: Callable[..., tuple[Path, list[dict[str, Any]]]],
                                                       options: dict[str, str]) -> None:
    """Per-tensor drift of the effective weights: nonzero on W_q, W_v (and the head while it trains), exactly
    zero everywhere else; under first_task=full every weight moves on task 1."""
    _, records = run_tiny(("lora",), method_options={"lora": options})
    assert [r["value"] for r in records if r["type"] == "unit"][-1] == "done"
    every = {r["param"] for r in records if r["type"] == "drift" and r["param"] != "__overall__"}
    for row in (1, 2, 3):
        moved = {r["param"] for r in records if r["type"] == "drift" and r["metric"] == "frobenius_task"
                 and r["row"] == row and r["param"] != "__overall__" and r["value"] != 0}
        if options:
            assert moved == TARGETS, row
        else:
            assert moved == (every if row == 1 else TARGETS | {"classifier.weight", "classifier.bias"}), row


def test_adapter_lr_sets_the_optimiser_only_while_adapters_train() -> None:
    method, model, ctx = _setup(adapter_lr=5e-4)
    assert method.configure_optimizer(TASKS[0], list(model.parameters())) is None  # full first task: run's lr
    method.before_task(TASKS[1], model)
    params = list(method.trainable_parameters(model))
    optimizer = method.configure_optimizer(TASKS[1], params)
    assert isinstance(optimizer, torch.optim.AdamW)
    group = optimizer.param_groups[0]
    assert group["lr"] == 5e-4 and group["weight_decay"] == ctx.weight_decay
    assert [id(p) for p in group["params"]] == [id(p) for p in params]
    unset, model, _ = _setup()
    assert unset.configure_optimizer(TASKS[1], list(model.parameters())) is None
    with pytest.raises(ValueError, match="adapter_lr=0.0"):
        LoRAConfig(adapter_lr=0.0)


def test_adapter_lr_from_set_reaches_the_runner(run_tiny) -> None:  # type: ignore[no-untyped-def]
    from clbench.config import build_config, method_config, parse_set

    parsed = build_config({"methods": ["lora@fast"]}, parse_set(["lora@fast.adapter_lr=5e-2"]),
                          method_names=["lora"])
    assert method_config(LoRAConfig, "lora@fast", parsed.method_options["lora@fast"]).adapter_lr == 0.05
    _, records = run_tiny(("lora", "lora@fast"), method_options=parsed.method_options)
    final = {r["method"]: r["value"] for r in records if r["type"] == "drift" and r["param"] == "__overall__"
             and r["metric"] == "frobenius_total" and r["row"] == 2}
    assert final["lora@fast"] > 2 * final["lora"]  # same first task, far larger adapter steps on the second
