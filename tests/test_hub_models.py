"""Any Hugging Face model id (with or without an owner) or folder; --model-args revision/dtype; the resolved
revision in env.json. The Hub is simulated by a local Hugging Face cache (HF_HUB_OFFLINE=1), which is what
`huggingface_hub` and transformers read on a machine without network: the loading code is the real one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from clbench.cli import main
from clbench.errors import ClbenchError, ConfigError, RegistryError
from clbench.models import ModelArgs, build_model, model_provenance, model_spec, parse_model_args

MAIN, TAGGED = "a" * 40, "b" * 40
SMALL = ["--methods", "naive", "--stream", "synthetic", "--train-size", "16", "--test-size", "8", "--max-steps",
         "2", "--quiet"]


def _snapshot(cache: Path, repo: str, commit: str, refs: tuple[str, ...], seed: int) -> None:
    from clbench.models import tiny_tokenizer

    folder = cache / ("models--" + repo.replace("/", "--"))
    model = build_model("tiny", 2, seed, pooling="cls")  # a checkpoint with its own 2-way head
    model.save_pretrained(folder / "snapshots" / commit)
    tiny_tokenizer().save_pretrained(folder / "snapshots" / commit)
    for ref in refs:
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / ref).write_text(commit)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Hugging Face cache holding `tinybert` (no owner; main -> MAIN, tag v1 -> TAGGED) and
    `clbench-test/tiny-bert` (main -> MAIN)."""
    cache = tmp_path / "hub"
    _snapshot(cache, "tinybert", MAIN, ("main",), 1)
    _snapshot(cache, "tinybert", TAGGED, ("v1",), 2)
    _snapshot(cache, "clbench-test/tiny-bert", MAIN, ("main",), 1)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.mark.parametrize("name", ["bert-base-uncased", "roberta-base", "gpt2", "FacebookAI/roberta-base",
                                  "distilbert-base-uncased", "deberta-base"])
def test_hub_ids_with_or_without_owner_are_models(name: str) -> None:
    assert model_spec(name).source == "hub"


@pytest.mark.parametrize(("name", "needle"), [("minlm", "did you mean 'minilm'"), ("tinny", "did you mean 'tiny'"),
                                              ("./no/such/dir", "local model directory .* does not exist"),
                                              ("a b", "Hub id such as bert-base-uncased")])
def test_typos_and_bad_paths_are_refused(name: str, needle: str) -> None:
    with pytest.raises(RegistryError, match=needle) as info:
        model_spec(name)
    assert "\n" not in str(info.value)


def test_model_args_parse_and_errors() -> None:
    assert parse_model_args("revision=v1, dtype=bfloat16") == ModelArgs("v1", "bfloat16")
    assert parse_model_args(None) == ModelArgs()
    for text, needle in (("revison=v1", "did you mean 'revision'"), ("dtype=fp8", "must be one of float32"),
                         ("revision", "is not KEY=VALUE")):
        with pytest.raises(ConfigError, match=needle):
            parse_model_args(text)
    with pytest.raises(ConfigError, match="revision applies to Hugging Face Hub models, not to 'tiny'"):
        parse_model_args("revision=main", "tiny")


def test_revision_resolves_to_the_cached_commit(hub: Path) -> None:
    assert model_provenance("tinybert", ModelArgs())["resolved_revision"] == MAIN
    assert model_provenance("tinybert", ModelArgs("v1"))["resolved_revision"] == TAGGED
    assert model_provenance("clbench-test/tiny-bert", ModelArgs())["resolved_revision"] == MAIN
    with pytest.raises(ClbenchError, match="cannot load model 'tinybert' at revision 'v2'"):
        model_provenance("tinybert", ModelArgs("v2"))


def test_checkpoint_head_is_replaced_and_dtype_applied(hub: Path) -> None:
    model = build_model("tinybert", 5, 0, args=ModelArgs(TAGGED, "bfloat16"))
    assert model.classifier.out_features == 5
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    tagged = build_model("tinybert", 5, 0, args=ModelArgs(TAGGED)).state_dict()["bert.embeddings.word_embeddings.weight"]
    main = build_model("tinybert", 5, 0, args=ModelArgs(MAIN)).state_dict()["bert.embeddings.word_embeddings.weight"]
    assert not torch.equal(tagged, main)  # each revision's own weights


def test_run_records_the_resolved_revision(hub: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", *SMALL, "--model", "tinybert", "--model-args", "revision=v1",
                                       "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    env = json.loads((out / "env.json").read_text())
    assert env["model"] == {"name": "tinybert", "source": "hub", "repo": "tinybert", "revision": "v1",
                            "resolved_revision": TAGGED, "dtype": "float32"}
    assert "model_args: revision=v1" in (out / "config.yaml").read_text()


def test_unknown_revision_fails_before_anything_is_written(hub: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", *SMALL, "--model", "tinybert", "--model-args", "revision=nope",
                                       "--out", str(out)])
    assert result.exit_code == 2
    assert "cannot load model 'tinybert' at revision 'nope'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


def test_a_method_passed_as_model_points_to_methods(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["run", "--model", "ewc", "--stream", "synthetic", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "'ewc' is a method, not a model; pass it to --methods (e.g. --methods ewc)" in result.stderr
