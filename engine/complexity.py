"""Complexity-adaptive reply length: classify a message as low, medium or high (as the older server did)."""
from __future__ import annotations

import logging
import re
from typing import Literal, Protocol

from engine.settings import MaxTokens

log = logging.getLogger(__name__)

Level = Literal["low", "medium", "high"]

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
    """A local transformers zero-shot (NLI) model; falls back to the heuristic on error."""

    LABELS = {"simple small talk": "low", "a normal question": "medium", "a complex task needing a long answer": "high"}

    def __init__(self, model_dir: str):
        from transformers import pipeline

        self.pipe = pipeline("zero-shot-classification", model=model_dir)
        self.fallback = HeuristicClassifier()

    def classify(self, text: str) -> Level:
        try:
            result = self.pipe(text[:1000], candidate_labels=list(self.LABELS))
            return self.LABELS[result["labels"][0]]  # type: ignore[return-value]
        except Exception:  # noqa: BLE001 - a classifier failure must not fail the reply
            log.exception("zero-shot classifier failed; using the heuristic")
            return self.fallback.classify(text)


def make_classifier(cfg: MaxTokens) -> Classifier:
    if cfg.policy == "adaptive" and cfg.classifier == "zero-shot":
        if not cfg.classifier_model:
            raise ValueError("max_new_tokens.classifier_model is required for the zero-shot classifier")
        return ZeroShotClassifier(cfg.classifier_model)
    return HeuristicClassifier()


def max_new_tokens(cfg: MaxTokens, classifier: Classifier, text: str) -> int:
    if cfg.policy == "fixed":
        return cfg.fixed
    return getattr(cfg, classifier.classify(text))
