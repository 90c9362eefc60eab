"""Streaming clean-up: what is emitted is final, and equals the cleaned reply however the text is cut."""
from __future__ import annotations

import pytest

from engine.cleaning import StreamCleaner
from engine.complexity import HeuristicClassifier, max_new_tokens
from engine.settings import Cleaning, MaxTokens


def run(raw: str, stop=(), name="", step=1, rules=Cleaning()) -> tuple[str, list[str], bool]:
    c = StreamCleaner(rules, stop, name)
    out = [c.feed(raw[i:i + step]) for i in range(0, len(raw), step)]
    out.append(c.finish())
    return "".join(out), [o for o in out if o], c.stopped


@pytest.mark.parametrize("raw,expected", [
    ("Hello there.", "Hello there."),
    ('"Hello there."', "Hello there."),
    ("Assistant: Sure, here it is.", "Sure, here it is."),
    ("AI: 안녕하세요!", "안녕하세요!"),
    ("Aria: *smiles* Hi.", "*smiles* Hi."),
    ("Fine (really).", "Fine (really)."),
    ("Done.)]", "Done."),
    ("He said \"yes\" twice.", "He said \"yes\" twice."),
    ("  leading spaces", "leading spaces"),
    ("AIs are great.", "AIs are great."),
])
@pytest.mark.parametrize("step", [1, 3, 100])
def test_clean_text_is_the_same_however_it_streams(raw, expected, step):
    text, _, _ = run(raw, name="Aria", step=step)
    assert text == expected


@pytest.mark.parametrize("step", [1, 2, 5])
def test_stop_strings_cut_and_are_never_shown(step):
    text, pieces, stopped = run("Sure thing.\n### 사용자: next question", stop=("### 사용자", "<|im_end|>"), step=step)
    assert text == "Sure thing." and stopped
    assert all("#" not in p for p in pieces)


def test_text_is_emitted_early_not_held_to_the_end():
    c = StreamCleaner(Cleaning(), ("<|im_end|>",))
    assert c.feed("Hello") == "Hello"
    assert c.feed(" world<|im") == " world"
    assert c.feed("_end|>more") == "" and c.stopped


def test_cleaning_can_be_switched_off():
    off = Cleaning(strip_quotes=False, strip_brackets=False, strip_role_prefix=False)
    assert run('AI: "x")', rules=off)[0] == 'AI: "x")'


def test_complexity_classes_choose_max_tokens():
    cfg, clf = MaxTokens(), HeuristicClassifier()
    assert max_new_tokens(cfg, clf, "hi") == 100
    assert max_new_tokens(cfg, clf, "안녕") == 100
    assert max_new_tokens(cfg, clf, "What time is it in Seoul?") == 250
    assert max_new_tokens(cfg, clf, "Explain how transformers use attention, step by step.") == 500
    assert max_new_tokens(cfg, clf, "양자 컴퓨터가 어떻게 작동하는지 자세히 설명해 줘") == 500
    assert max_new_tokens(MaxTokens(policy="fixed", fixed=42), clf, "Explain everything") == 42
