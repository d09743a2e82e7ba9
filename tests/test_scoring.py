"""Scorers against every shipped item (gold scores 1.0) and against tricky or hostile output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentflow.evals.scoring import (
    BENCHMARK_SCORER,
    SCORERS,
    check_24,
    exact_match,
    extract_24_expression,
    extract_boxed,
    f1,
    gold_aliases,
    judge_score,
    normalize_text,
    option_texts,
    score,
)
from agentflow.extract import extract_answer
from agentflow.prompts import JUDGE_PROMPT

BENCHMARKS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks"
SHIPPED = ["bamboogle", "2wiki", "hotpotqa", "musique", "aime24", "amc23", "gameof24", "medqa"]


def _items(name: str) -> list[dict]:
    path = BENCHMARKS_DIR / f"{name}.json"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    return json.loads(path.read_text(encoding="utf-8"))


def _gold_predictions(name: str, item: dict) -> list[str]:
    """Ways a correct final answer can be written for `item`."""
    if name == "gameof24":
        return list(item["answer"])  # every reference expression
    if name == "medqa":
        texts = [normalize_text(t) for t in option_texts(item["options"])]
        letter = "ABCDEFGHIJ"[texts.index(normalize_text(item["answer"]))]  # some golds end in a space
        return [
            item["answer"], letter, f"({letter})", f"{letter}.", f"Answer: {letter}",
            f"<answer>{letter}. {item['answer']}</answer>",
        ]
    aliases = gold_aliases(item["answer"])
    return aliases + [f"reasoning...\n<answer>{a}</answer>" for a in aliases]


@pytest.mark.parametrize("name", SHIPPED)
def test_gold_scores_one_for_every_shipped_item(name: str) -> None:
    for item in _items(name):
        for prediction in _gold_predictions(name, item):
            assert score(name, prediction, item) == 1.0, (name, item.get("pid"), prediction)


@pytest.mark.parametrize("name", SHIPPED)
def test_other_items_gold_mostly_scores_zero(name: str) -> None:
    """Gold of item i against item i+1 must not score (except where golds coincide)."""
    items = _items(name)
    pairs = list(zip(items, items[1:]))
    hits = sum(score(name, _gold_predictions(name, a)[0], b) for a, b in pairs)
    same = sum(
        (a["question"] == b["question"]) if name == "gameof24" else (str(a["answer"]) == str(b["answer"]))
        for a, b in pairs
    )
    assert hits <= same + len(pairs) * 0.05


def test_every_benchmark_has_a_scorer() -> None:
    assert set(SHIPPED) | {"gaia", "gpqa", "toolmix"} <= set(BENCHMARK_SCORER)
    assert set(BENCHMARK_SCORER.values()) <= set(SCORERS)


# ------------------------------------------------------------------ extraction


def test_last_answer_tag_wins() -> None:
    assert extract_answer("<answer>a</answer> then <answer> b </answer>") == "b"
    assert extract_answer("  plain  ") == "plain"
    assert extract_answer("cut off <answer>Paris") == "Paris"


def test_boxed_with_nested_braces() -> None:
    assert extract_boxed(r"so \boxed{\frac{1}{2}} and \boxed{\frac{\sqrt{3}}{2}}") == r"\frac{\sqrt{3}}{2}"
    assert extract_boxed(r"\boxed{unclosed") is None
    assert extract_boxed("no box") is None


# ------------------------------------------------------------------ QA


def test_qa_aliases_and_list_literals() -> None:
    item = {"answer": "['james madison', 'Madison']"}
    assert score("bamboogle", "<answer>James Madison.</answer>", item) == 1.0
    assert score("bamboogle", "<answer>madison</answer>", item) == 1.0
    assert score("bamboogle", "<answer>The Madison</answer>", item) == 1.0  # articles dropped
    assert score("bamboogle", "<answer>James Madison Jr</answer>", item) == 0.0  # EM is strict
    assert score("2wiki", "Yes", {"answer": "yes"}) == 1.0
    assert score("musique", "Archibald, certainly not", {"answer": '"Archibald, certainly not!"'}) == 1.0
    assert score("bamboogle", "x", {"answer": ["y", "x"]}) == 1.0
    assert gold_aliases("[not a literal") == ["[not a literal"]
    assert gold_aliases(42) == ["42"]


def test_f1_and_em() -> None:
    assert f1("James Madison Jr", ["james madison"]) == pytest.approx(0.8)
    assert f1("nothing", ["james madison"]) == 0.0
    assert exact_match("the James  Madison", ["James Madison"]) == 1.0


# ------------------------------------------------------------------ math


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        (r"\frac{1}{2}", "0.5", 1.0),
        ("0.5", r"\frac{1}{2}", 1.0),
        (r"<answer>\boxed{\frac{1}{2}}</answer>", "1/2", 1.0),
        (r"The answer is $\boxed{33}$.", 33, 1.0),
        ("12.0", "12", 1.0),
        ("1,000", 1000, 1.0),
        ("<answer>$1,000</answer>", 1000, 1.0),
        (r"\sqrt{2}/2", r"\frac{\sqrt{2}}{2}", 1.0),
        ("2^{10}", 1024, 1.0),
        ("x = 5", 5, 1.0),
        ("<answer>The answer is 33</answer>", 33, 1.0),
        ("13", 12, 0.0),
        (r"\frac{1}{3}", "0.33", 0.0),
        ("no idea", 33, 0.0),
        ("<answer></answer>", 33, 0.0),
    ],
)
def test_math_equivalence(prediction: str, gold: object, expected: float) -> None:
    assert score("aime24", prediction, {"answer": gold}) == expected


def test_math_scoring_of_long_and_garbage_predictions() -> None:
    """Long or garbage predictions score like any other (their speed: benchmarks/scoring_speed.py)."""
    predictions = ["33", "<answer>34</answer>", r"\boxed{\frac{66}{2}}", "garbage " * 200, "x" * 5000]
    assert [score("aime24", p, {"answer": 33}) for p in predictions] == [1.0, 0.0, 1.0, 0.0, 0.0]


# ------------------------------------------------------------------ multiple choice

MC_TEXTS = ["Hemolytic uremic syndrome", "Oral ulcers", "Colorectal cancer", "Pancreatic cancer"]
MC_ITEM = {"options": [f"{letter}. {text}" for letter, text in zip("ABCD", MC_TEXTS)], "answer": "Colorectal cancer"}

MC_PREDICTIONS = [
    ("C", 1.0),
    ("c", 1.0),
    ("(C)", 1.0),
    ("C.", 1.0),
    ("Answer: C", 1.0),
    ("The correct answer is (C).", 1.0),
    ("<answer>C. Colorectal cancer</answer>", 1.0),
    ("colorectal cancer", 1.0),
    ("Long reasoning about the colon... so the answer is C.", 1.0),
    ("B", 0.0),
    ("C. Oral ulcers", 0.0),  # letter and text disagree
    ("E", 0.0),
    ("A 34-year-old man has colorectal cancer risk", 0.0),
    ("", 0.0),
]
"""(prediction, score against MC_ITEM): letters and option text; scored in test_prediction_scores."""


def test_multiple_choice_option_that_is_a_letter() -> None:
    item = {"options": ["A. VII", "B. VIIa", "C. X", "D. XII"], "answer": "X"}
    assert score("medqa", "X", item) == 1.0
    assert score("medqa", "C", item) == 1.0
    assert score("medqa", "D", item) == 0.0


def test_multiple_choice_dict_options_and_letter_gold() -> None:
    item = {"options": {"A": "red", "B": "blue"}, "answer": "B"}
    assert score("gpqa", "blue", item) == 1.0
    assert score("gpqa", "(B)", item) == 1.0
    assert score("gpqa", "A", item) == 0.0


@pytest.mark.parametrize(
    "options",
    [
        str(MC_ITEM["options"]),
        "['A) Hemolytic uremic syndrome', 'B) Oral ulcers', 'C) Colorectal cancer', 'D) Pancreatic cancer']",
        json.dumps(MC_ITEM["options"]),
        json.dumps(dict(zip("ABCD", MC_TEXTS))),
    ],
    ids=["python-list", "python-list-parens", "json-list", "json-dict"],
)
def test_multiple_choice_options_encoded_as_a_string(options: str) -> None:
    """Some published MedQA/GPQA copies store options as a list literal in a string;
    load_benchmark JSON-encodes an options column whose type varies by row."""
    assert option_texts(options) == MC_TEXTS
    item = {"options": options, "answer": "Colorectal cancer"}
    assert score("medqa", "C", item) == 1.0
    assert score("medqa", "<answer>(B)</answer>", item) == 0.0


def test_options_string_that_is_no_literal_is_never_run() -> None:
    assert option_texts("__import__('os').system('false')") == []
    assert option_texts("A. red B. blue") == []
    item = {"options": "A. red B. blue", "answer": "blue"}
    assert score("gpqa", "blue", item) == 1.0  # without options the answer text is compared
    assert score("gpqa", "B", item) == 0.0


# ------------------------------------------------------------------ game of 24

G24 = {"question": [1, 1, 1, 8]}

G24_PREDICTIONS = [
    ("(1+1+1)×8", 1.0),
    ("(1 + 1 + 1) * 8 = 24", 1.0),
    (r"<answer>$(1+1+1) \times 8$</answer>", 1.0),
    ("Step 1: ...\nSo (1+1+1)×8 = 24.", 1.0),
    ("24 = 8*(1+1+1)", 1.0),
    ("8÷(1÷3)", 0.0),  # a 3 that is not in the puzzle
    ("(1+1)×8+8", 0.0),  # reuses 8, misses a 1
    ("(1+1)×8", 0.0),  # misses a number
    ("8/(1-1)+1", 0.0),  # division by zero
    ("(1+1+1)*8.0", 0.0),  # float literal is not a puzzle number
    ("-1+1+1*8+16", 0.0),
    ("(1+1+1)**8", 0.0),
    ("(1+1+1)8", 0.0),
    ("3*8", 0.0),
    ("__import__('os')", 0.0),
]
"""(prediction, score against G24): extraction and the strict checker."""


@pytest.mark.parametrize(
    ("benchmark", "item", "prediction", "expected"),
    [("medqa", MC_ITEM, *case) for case in MC_PREDICTIONS] + [("gameof24", G24, *case) for case in G24_PREDICTIONS],
)
def test_prediction_scores(benchmark: str, item: dict, prediction: str, expected: float) -> None:
    assert score(benchmark, prediction, item) == expected


def test_gameof24_exact_fractions() -> None:
    assert check_24("8/(3-8/3)", [3, 3, 8, 8])
    assert not check_24("8/(3-8/3)", [3, 8, 8])
    assert check_24("(5-1/5)*5", [1, 5, 5, 5])


def test_gameof24_reads_written_operators_but_allows_only_the_four() -> None:
    """check_24 shares the calculator's evaluator: × ÷ − are read (its own parser refused
    them), while signs, powers and decimals stay outside the game's basic operations."""
    assert check_24("8÷(3−8÷3)", [3, 3, 8, 8])
    assert check_24(" (1 + 1 + 1) × 8 ", [1, 1, 1, 8])
    assert not check_24("-(2-5)*8", [2, 5, 8])  # 24, with a unary minus
    assert not check_24("2^3*3", [2, 3, 3])
    assert not check_24("48/2.0", [48, 2])


def test_gameof24_question_as_string_or_from_query() -> None:
    assert score("gameof24", "(1+1+1)*8", {"question": "[1, 1, 1, 8]"}) == 1.0
    assert score("gameof24", "(1+1+1)*8", {"query": "Using the numbers [1, 1, 1, 8], create ..."}) == 1.0
    assert extract_24_expression("So the answer is (1+1+1)*8 = 24") == "(1+1+1)*8"


# ------------------------------------------------------------------ toolmix


def test_toolmix_numbers_and_strings() -> None:
    assert score("toolmix", "<answer>1,873.0</answer>", {"answer": "1873"}) == 1.0
    assert score("toolmix", "1874", {"answer": "1873"}) == 0.0
    assert score("toolmix", "krousol rilur.", {"answer": "Krousol Rilur"}) == 1.0
    # a frozen small generator answers in sentences: the last number / the final name counts
    assert score("toolmix", "The population of Sebin is 343,639.", {"answer": "343639"}) == 1.0
    assert score("toolmix", "10205 + 11441 + 15138 = 36784", {"answer": "36784"}) == 1.0
    assert score("toolmix", "343639 or 12", {"answer": "343639"}) == 0.0  # one candidate only
    assert score("toolmix", "no number here", {"answer": "343639"}) == 0.0
    assert score("toolmix", "It was founded by Krousol Rilur.", {"answer": "Krousol Rilur"}) == 1.0
    assert score("toolmix", "Krousol Rilur or Bob Smith", {"answer": "Krousol Rilur"}) == 0.0


# ------------------------------------------------------------------ errors and fuzzing


def test_errors_for_caller_bugs() -> None:
    with pytest.raises(ValueError, match="unknown benchmark"):
        score("nope", "x", {"answer": "x"})
    with pytest.raises(ValueError, match="answer"):
        score("bamboogle", "x", {"query": "q"})
    with pytest.raises(ValueError, match="puzzle numbers"):
        score("gameof24", "1+1", {"answer": ["x"]})


def test_scorer_kinds_work_as_benchmark_names() -> None:
    assert score("qa_em", "Paris", {"answer": "paris"}) == 1.0


_FUZZ_ITEMS = {
    "bamboogle": {"answer": ["james madison"]},
    "2wiki": {"answer": "yes"},
    "aime24": {"answer": 33},
    "amc23": {"answer": r"\frac{1}{2}"},
    "medqa": MC_ITEM,
    "gameof24": G24,
    "toolmix": {"answer": "1873"},
}
_HOSTILE = st.sampled_from(
    ["<answer>", "</answer>", r"\boxed{", "}", "{", "$", "(", ")", "×", "÷", "=", "24", "8", "1", "/", "*", "**",
     "0", "Answer: ", "C", ".", "\n", "[", "]", "'", "e9", "1e999999", ",", "\\frac", "sqrt", "^", "x"]
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(st.text(max_size=300), st.lists(_HOSTILE, max_size=40).map("".join)))
def test_score_never_raises_on_any_prediction(text: str) -> None:
    for name, item in _FUZZ_ITEMS.items():
        assert score(name, text, item) in (0.0, 1.0)


# ------------------------------------------------------------------ LLM judge


class _FakeJudge:
    """Stands in for a BaseChatModel: judge_score only calls `invoke`."""

    def __init__(self, reply: str) -> None:
        self.reply, self.prompts = reply, []

    def invoke(self, prompt: str):
        from langchain_core.messages import AIMessage

        self.prompts.append(prompt)
        return AIMessage(content=self.reply)


def test_judge_score_parses_last_verdict() -> None:
    judge = _FakeJudge("The response says Madison, which is not false.\ntrue_false: True")
    assert judge_score(judge, "Who?", "Madison", "James Madison") == 1.0
    assert "Ground truth: James Madison" in judge.prompts[0]
    assert judge_score(_FakeJudge("true_false: False"), "q", "a", "b") == 0.0
    assert judge_score(_FakeJudge("I cannot tell."), "q", "a", "b") == 0.0
    assert "{question}" in JUDGE_PROMPT and "{gold}" in JUDGE_PROMPT
