"""Complexity-adaptive reply length: classify a message as low, medium or high (as the older server did)."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Protocol

from engine.backends.torch_threads import in_own_thread
from engine.loading import ModelLoadError
from engine.settings import Level, MaxTokens, resolve_model_path

log = logging.getLogger(__name__)

_HIGH = re.compile(
    r"explain|why|how (?:do|does|can|to)|compare|difference|analy[sz]e|step[- ]by[- ]step|write (?:a|an|the)|"
    r"essay|code|implement|program|summari[sz]e|describe|"
    r"설명|왜|어떻게|비교|차이|분석|단계|작성|코드|구현|요약|자세히|알려\s*줘",
    re.IGNORECASE,
)
_LOW = re.compile(r"^\s*(?:hi|hello|hey|thanks?|thank you|ok(?:ay)?|yes|no|bye|안녕|고마워|감사|네|응|아니|ㅎㅎ|ㅋㅋ)\W*$",
                  re.IGNORECASE)


class Classifier(Protocol):
    def classify(self, text: str) -> Level: ...


class HeuristicClassifier:
    """Fast rules: greetings are low; long or 'explain/compare/write' requests are high."""

    def classify(self, text: str) -> Level:
        t = text.strip()
        if _LOW.match(t) or (len(t) < 12 and "?" not in t):
            return "low"
        if len(t) > 200 or "```" in t or _HIGH.search(t) or t.count("?") >= 2:
            return "high"
        return "medium"


class ZeroShotClassifier:
    """A local transformers zero-shot (NLI) model on its own device; falls back to the heuristic on error.

    The configured candidate labels are the hypotheses; the best one's level
    (low/medium/high) picks the token count.
    """

    def __init__(self, model_dir: Path, labels: dict[str, Level], device: str = "cpu"):
        from transformers import pipeline

        self.labels = dict(labels)
        self.pipe = in_own_thread(pipeline, "zero-shot-classification", model=str(model_dir), device=device)
        self.fallback = HeuristicClassifier()

    def classify(self, text: str) -> Level:
        try:
            result = in_own_thread(self.pipe, text[:1000], candidate_labels=list(self.labels))
            return self.labels[result["labels"][0]]
        except Exception:  # noqa: BLE001 - a classifier failure must not fail the reply
            log.exception("zero-shot classifier failed; using the heuristic")
            return self.fallback.classify(text)


def _nli_model_dir(cfg: MaxTokens, key: str, base_dir: Path | None) -> Path:
    """The classifier model folder, checked to be a local NLI model before anything heavy loads."""
    path = resolve_model_path(cfg.classifier_model or "", base_dir)
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{key}.classifier_model: {path} is not a local transformers model folder "
                             "(no config.json)")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{key}.classifier_model: {path}/config.json is unreadable: {e}") from None
    labels = {str(k).lower() for k in (config.get("label2id") or {})}
    if not any(k.startswith("entail") for k in labels):
        raise ModelLoadError(f"{key}.classifier_model: {path} is not a zero-shot (NLI) model: its labels "
                             f"{sorted(labels) or 'are missing'} have no 'entailment'")
    return path


def _check_cuda(device: str, key: str) -> None:
    if not device.startswith("cuda"):
        return
    import torch

    index = int(device[5:]) if device.startswith("cuda:") else 0
    if index >= torch.cuda.device_count():
        raise ModelLoadError(f"{key}.classifier_device: {device} is not available "
                             f"(this machine has {torch.cuda.device_count()} CUDA devices)")


def make_classifier(cfg: MaxTokens, base_dir: Path | None = None, key: str = "max_new_tokens") -> Classifier:
    """The configured classifier; a zero-shot model that is missing, not NLI or on an absent GPU raises
    ModelLoadError naming ``key`` (e.g. models.chat.max_new_tokens)."""
    if cfg.policy == "adaptive" and cfg.classifier == "zero-shot":
        path = _nli_model_dir(cfg, key, base_dir)
        _check_cuda(cfg.classifier_device, key)
        try:
            return ZeroShotClassifier(path, cfg.classifier_labels, cfg.classifier_device)
        except (OSError, ValueError, RuntimeError) as e:
            raise ModelLoadError(f"{key}.classifier_model: cannot load {path}: "
                                 f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    return HeuristicClassifier()


def max_new_tokens(cfg: MaxTokens, classifier: Classifier, text: str) -> int:
    if cfg.policy == "fixed":
        return cfg.fixed
    return getattr(cfg, classifier.classify(text))
