"""Reply length by message complexity: the heuristic, the zero-shot classifier's labels, device and refusals."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.complexity import HeuristicClassifier, ZeroShotClassifier, make_classifier, max_new_tokens
from engine.loading import ModelLoadError
from engine.settings import MaxTokens

ZERO_SHOT = {"policy": "adaptive", "classifier": "zero-shot"}


def test_defaults_are_the_older_servers_counts_on_the_cpu():
    cfg = MaxTokens()
    assert (cfg.low, cfg.medium, cfg.high) == (100, 250, 500) and cfg.classifier_device == "cpu"
    assert sorted(cfg.classifier_labels.values()) == ["high", "low", "medium"]
    heuristic = make_classifier(cfg)
    assert isinstance(heuristic, HeuristicClassifier)
    assert max_new_tokens(cfg, heuristic, "hi") == 100
    assert max_new_tokens(cfg, heuristic, "Explain step by step how a compiler works") == 500


@pytest.mark.parametrize("bad,message", [
    ({"classifier_device": "gpu1"}, "cpu, cuda, cuda:N"),
    ({"classifier_device": "auto"}, "cpu, cuda, cuda:N"),
    ({"classifier_labels": {"small talk": "tiny", "hard": "high"}}, "'low', 'medium' or 'high'"),
    ({"classifier_labels": {"only one": "low"}}, "at least 2"),
    ({}, "needs classifier_model"),
])
def test_bad_classifier_settings_are_refused(bad, message):
    with pytest.raises(ValidationError, match=message):
        MaxTokens(**ZERO_SHOT, **bad)
    assert MaxTokens(**ZERO_SHOT, classifier_model="m", classifier_device="cuda:1").classifier_device == "cuda:1"


def test_missing_or_wrong_classifier_model_is_one_line_naming_the_key(tmp_path):
    key = "models.chat.max_new_tokens"
    with pytest.raises(ModelLoadError, match=rf"^{key}.classifier_model: .*nope is not a local transformers"):
        make_classifier(MaxTokens(**ZERO_SHOT, classifier_model="nope"), tmp_path, key)
    (tmp_path / "gen").mkdir()
    (tmp_path / "gen" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelLoadError, match=r"is not a zero-shot \(NLI\) model") as e:
        make_classifier(MaxTokens(**ZERO_SHOT, classifier_model="gen"), tmp_path, key)
    assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def nli_model(tmp_path_factory) -> Path:
    """A tiny randomly initialised BERT NLI classifier with a hand-written vocabulary: no download."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder = tmp_path_factory.mktemp("nli")
    words = "this example is simple small talk a normal question complex task needing long answer hi hello " \
            "explain how compilers work please".split()
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=5 + len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64,
                        id2label={0: "contradiction", 1: "neutral", 2: "entailment"},
                        label2id={"contradiction": 0, "neutral": 1, "entailment": 2})
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def test_zero_shot_uses_the_configured_labels_and_their_counts(nli_model):
    labels = {"simple small talk": "low", "a normal question": "medium", "complex task": "high"}
    cfg = MaxTokens(**ZERO_SHOT, classifier_model=str(nli_model), classifier_labels=labels)
    classifier = make_classifier(cfg)
    assert isinstance(classifier, ZeroShotClassifier)
    assert classifier.pipe.device.type == "cpu"
    for text in ("hi", "please explain how compilers work", "a normal question"):
        top = classifier.pipe(text, candidate_labels=list(labels))["labels"][0]
        assert top in labels
        assert classifier.classify(text) == labels[top]
        assert max_new_tokens(cfg, classifier, text) == {"low": 100, "medium": 250, "high": 500}[labels[top]]

    # Whatever the model prefers, labels that all mean "high" give the high count.
    only_high = MaxTokens(**ZERO_SHOT, classifier_model=str(nli_model), high=321,
                          classifier_labels={"simple small talk": "high", "complex task": "high"})
    assert max_new_tokens(only_high, make_classifier(only_high), "hi") == 321


def test_a_cuda_classifier_device_absent_here_is_refused(nli_model):
    import torch

    missing = f"cuda:{torch.cuda.device_count()}"
    cfg = MaxTokens(**ZERO_SHOT, classifier_model=str(nli_model), classifier_device=missing)
    with pytest.raises(ModelLoadError, match=rf"classifier_device: {missing} is not available"):
        make_classifier(cfg, key="models.chat.max_new_tokens")


@pytest.mark.timeout(300)
def test_bot_start_up_stops_with_one_line_for_a_wrong_classifier_model(tmp_path):
    from conftest import ROOT, start_up_refusal

    text = (ROOT / "bot.yaml").read_text(encoding="utf-8").replace(
        "      classifier: heuristic", f"      classifier: zero-shot\n      classifier_model: {tmp_path / 'none'}", 1)
    last = start_up_refusal(tmp_path, text)
    assert last.startswith("model error: models.chat.max_new_tokens.classifier_model: ") and "none" in last
