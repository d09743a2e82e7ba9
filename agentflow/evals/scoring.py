"""Deterministic scorers for the AgentFlow benchmarks, also used as the training reward.

`score(benchmark, prediction, item)` returns 1.0 or 0.0. The published evaluation asks
GPT-4o whether every answer is right; where the answer is checkable we check it instead
(exact match, math equivalence, option letters, an exact Game-of-24 checker), so scores
are reproducible and cost nothing. `judge_score` keeps the LLM-judge protocol available.

Contract: a prediction is untrusted model output, so no prediction string makes a scorer
raise; only an unknown benchmark or an item without its gold answer does (ValueError),
because those are caller bugs that would otherwise silently score 0.
"""

from __future__ import annotations

import ast
import json
import re
import string
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from fractions import Fraction
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from agentflow.extract import extract_answer  # the generator's contract, one definition
from agentflow.prompts import JUDGE_PROMPT
from agentflow.tools.arithmetic import FOUR_OPERATIONS, ExpressionError, evaluate

if TYPE_CHECKING:  # the reward path should not pay for importing LangChain
    from langchain_core.language_models import BaseChatModel

# Model output can be arbitrarily long; the answer lives at the end. Bounding what we
# hand to regexes and sympy keeps the reward fast on pathological generations.
_MAX_PREDICTION_CHARS = 20_000
_MAX_ANSWER_CHARS = 2000
# math_verify interrupts parsing/comparison with SIGALRM (whole seconds, main thread only).
_MATH_VERIFY_TIMEOUT_S = 1

Scorer = Callable[[str, Mapping[str, Any]], float]


# --------------------------------------------------------------------------- item fields


def _parse_literal(text: str) -> Any:
    """The JSON value or Python literal spelled by `text`, else None.

    Item fields that should be lists often arrive as strings: published copies store
    `"['A) ...', 'B) ...']"` or `"['james madison']"` (Python literals), and
    `load_benchmark` JSON-encodes a column whose type varies by row. Both are parsed,
    never executed (`json.loads`, then `ast.literal_eval`).
    """
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


# --------------------------------------------------------------------------- extraction


def extract_boxed(text: str) -> str | None:
    r"""Content of the last `\boxed{...}` (or `\fbox{...}`), honouring nested braces."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start == -1:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None


def _final_answer(prediction: str) -> str:
    """Answer tag first, then a `\\boxed{}` inside it (or in the whole text), else the text."""
    answer = extract_answer(prediction)
    boxed = extract_boxed(answer)
    return boxed if boxed is not None else answer


# --------------------------------------------------------------------------- QA (EM / F1)

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_text(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, squeeze whitespace."""
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _match_key(text: str) -> str:
    """normalize_text, unless that leaves nothing: an answer that is an article or a
    letter ("A", "The") would otherwise equal every empty prediction."""
    return normalize_text(text) or text.strip().lower()


def gold_aliases(answer: Any) -> list[str]:
    """All accepted answers of an item.

    Golds come as a plain string, a real list (bamboogle/hotpotqa as shipped), a string
    holding a list literal ("['james madison']", the published format and what
    `load_benchmark` stores for list answers), or a number. A string that merely looks
    like a list stays a string.
    """
    if isinstance(answer, (list, tuple)):
        return [str(a) for a in answer]
    text = str(answer).strip()
    if text.startswith("[") and text.endswith("]"):
        parsed = _parse_literal(text)
        if isinstance(parsed, (list, tuple)) and parsed:
            return [str(a) for a in parsed]
    return [text]


def exact_match(prediction: str, golds: list[str]) -> float:
    """1.0 if the normalised prediction equals a normalised alias.

    Strict on purpose: a lenient "gold is contained in the prediction" rule rewards
    answers that hedge by listing candidates, which a policy under RL learns quickly.
    """
    pred = _match_key(prediction)
    return float(bool(pred) and any(pred == _match_key(g) for g in golds))


def f1(prediction: str, golds: list[str]) -> float:
    """SQuAD token F1, max over aliases; for reporting next to EM, not used as reward."""
    pred_tokens = normalize_text(prediction).split()
    best = 0.0
    for gold in golds:
        gold_tokens = normalize_text(gold).split()
        common = Counter(pred_tokens) & Counter(gold_tokens)
        overlap = sum(common.values())
        if overlap == 0:
            continue
        precision = overlap / len(pred_tokens)
        recall = overlap / len(gold_tokens)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def _score_qa(prediction: str, item: Mapping[str, Any]) -> float:
    answer = extract_answer(prediction)[:_MAX_ANSWER_CHARS]
    return exact_match(answer, gold_aliases(_gold(item)))


# --------------------------------------------------------------------------- numbers

# No exponent form: Fraction("1e999999999") would build a billion-digit integer.
_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)(/\d+)?")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")


def parse_number(text: str) -> Fraction | None:
    """An exact number from "12", "12.0", "1,000", "$1,000", "3/4", "50%" (as 50); else None.

    Fractions keep 0.1 + 0.2 style rounding out of equality checks. The whole string must
    be the number (after stripping `$`, spaces and a trailing period), so "12 apples and 3"
    is not 12.
    """
    text = text.strip().strip("$").replace("\\$", "").replace(" ", "").rstrip(".")
    text = _THOUSANDS.sub("", text).rstrip("%")
    if len(text) > 100 or not _NUMBER.fullmatch(text):
        return None
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


# --------------------------------------------------------------------------- math


def _math_verify_timeout() -> int | None:
    """SIGALRM only works in the main thread; elsewhere run without (inputs are bounded)."""
    if threading.current_thread() is threading.main_thread():
        return _MATH_VERIFY_TIMEOUT_S
    return None


@lru_cache(maxsize=4096)
def _parse_gold_math(gold: str) -> list:
    from math_verify import parse

    return parse(f"${gold}$", parsing_timeout=_math_verify_timeout())


_LATEX_COMMAND = re.compile(r"\\[a-zA-Z]+")
_WORD = re.compile(r"[a-zA-Z]{3,}")


def math_equal(prediction: str, gold: str) -> bool:
    """Numeric equality when both sides are plain numbers, else math_verify equivalence.

    The numeric path is exact and skips sympy entirely, which is the common case for
    AIME/AMC integer answers and keeps the reward cheap. math_verify handles LaTeX
    (`\\frac{1}{2}` vs 0.5, `\\sqrt{2}/2` ...). Its parser only reads LaTeX inside
    delimiters, so a bare formula is wrapped in `\\boxed{}`; prose (words outside LaTeX
    commands) is handed over as is, where math_verify's own final-answer heuristics find
    the value, because sympy reading words as products of symbols is slow and wrong.
    """
    pred_num, gold_num = parse_number(prediction), parse_number(gold)
    if pred_num is not None and gold_num is not None:
        return pred_num == gold_num
    if gold_num is not None and not any(ch.isdigit() for ch in prediction):
        return False  # a number cannot be written without digits; skip sympy
    from math_verify import parse, verify

    timeout = _math_verify_timeout()
    is_prose = bool(_WORD.search(_LATEX_COMMAND.sub("", prediction)))
    candidate = prediction if is_prose or "$" in prediction or "\\(" in prediction else f"\\boxed{{{prediction}}}"
    try:
        gold_parsed = _parse_gold_math(gold)
        pred_parsed = parse(candidate, parsing_timeout=timeout)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - sympy can fail in many ways on model output; that is a wrong answer
        return False


def _score_math(prediction: str, item: Mapping[str, Any]) -> float:
    answer = _final_answer(prediction)[-_MAX_ANSWER_CHARS:]
    return float(math_equal(answer, str(_gold(item)).strip()))


# --------------------------------------------------------------------------- multiple choice

_LETTER_PREFIX = re.compile(r"^\s*([A-Z])\s*[.:)]\s*")
_ANSWER_LEAD = re.compile(
    r"^\s*(?:the\s+)?(?:correct\s+|final\s+|best\s+)?(?:answer|option|choice)\s*(?:is)?\s*[:\-]?\s*",
    re.IGNORECASE,
)
_LETTER_ONLY = re.compile(r"^\(?([A-Z])\)?[.:)]?$", re.IGNORECASE)
# A letter followed by text needs a delimiter, so "A 34-year-old man" is not option A.
_LETTER_WITH_TEXT = re.compile(r"^(?:\(([A-Z])\)|([A-Z])[.:)])\s*(.+)$", re.DOTALL)
# Only upper-case letters: "the answer is a fever" must not pick option A.
_LETTER_IN_TEXT = re.compile(r"(?i:answer|option|choice)\s*(?:is)?\s*[:\-]?\s*\(?([A-Z])\)?(?=$|[\s.,;:)!*])")


def option_texts(options: Any) -> list[str]:
    """Option texts in letter order, from a list ("A. text", "A) text" or "text") or a
    {"A": text} dict, either of them possibly encoded as a string (JSON or Python literal)."""
    if isinstance(options, str):
        options = _parse_literal(options.strip())
    if isinstance(options, Mapping):
        return [str(options[k]).strip() for k in sorted(options)]
    if isinstance(options, (list, tuple)):
        return [_LETTER_PREFIX.sub("", str(o), count=1).strip() for o in options]
    return []


def _letter_to_text(letter: str, options: list[str]) -> str | None:
    index = ord(letter.upper()) - ord("A")
    return options[index] if 0 <= index < len(options) else None


def choice_text(prediction: str, options: list[str]) -> str | None:
    """The option a prediction picks: a letter ("B", "(B)", "B.", "Answer: B"), a letter
    plus text ("B. Oral ulcers"), the option text itself, or a last "answer is B" in prose.

    A letter whose trailing text names a different option is contradictory and picks
    nothing, so hedged answers do not score.
    """
    answer = _ANSWER_LEAD.sub("", _final_answer(prediction)[:_MAX_ANSWER_CHARS], count=1).strip()
    answer = answer.strip("*`\"' ")
    # Option text first: an option can itself be a letter (medqa: "C. X", coagulation factor X).
    if answer and any(_match_key(answer) == _match_key(o) for o in options):
        return answer
    if match := _LETTER_ONLY.match(answer):
        return _letter_to_text(match.group(1), options)
    if (match := _LETTER_WITH_TEXT.match(answer)) and (
        text := _letter_to_text(match.group(1) or match.group(2), options)
    ):
        rest = _match_key(match.group(3))
        return None if rest != _match_key(text) and any(rest == _match_key(o) for o in options) else text
    letters = _LETTER_IN_TEXT.findall(answer)
    return _letter_to_text(letters[-1], options) if letters else None


def _score_multiple_choice(prediction: str, item: Mapping[str, Any]) -> float:
    options = option_texts(item.get("options"))
    gold = str(_gold(item)).strip()
    is_option_text = any(_match_key(gold) == _match_key(o) for o in options)
    if len(gold) == 1 and gold.isalpha() and not is_option_text and (as_text := _letter_to_text(gold, options)):
        gold = as_text  # a letter gold (some MC sets) means its option
    picked = choice_text(prediction, options) if options else extract_answer(prediction)
    return float(picked is not None and _match_key(picked) == _match_key(gold))


# --------------------------------------------------------------------------- game of 24

_24_REPLACEMENTS = {"×": "*", "÷": "/", "−": "-", "\\times": "*", "\\div": "/", "\\cdot": "*"}
_24_ALLOWED = re.compile(r"^[\d\s+\-*/().]*$")
_24_SUFFIX = re.compile(r"[\d\s+\-*/()]*$")


def _clean_24(text: str) -> str:
    for old, new in _24_REPLACEMENTS.items():
        text = text.replace(old, new)
    for noise in ("$", "`", "\\(", "\\)", "\\[", "\\]", "**"):
        text = text.replace(noise, "")
    return text.strip().rstrip(".").strip()


def extract_24_expression(prediction: str) -> str:
    """The candidate expression: answer tag or `\\boxed{}`, else the last line with "= 24".

    "expr = 24" keeps its left side; the trailing run of expression characters is taken
    so "So the answer is (1+1+1)*8 = 24" yields "(1+1+1)*8". Any wrong pick just fails
    the strict check below.
    """
    if "<answer>" in prediction.lower() or extract_boxed(prediction) is not None:
        text = _clean_24(_final_answer(prediction))
    else:
        lines = [_clean_24(line) for line in prediction.splitlines()]
        with_24 = [line for line in lines if re.search(r"=\s*24\b", line)]
        text = with_24[-1] if with_24 else _clean_24(prediction)
    sides = [side.strip() for side in text.split("=")]
    candidates = [side for side in sides if side and side != "24"]
    text = candidates[0] if candidates else text
    if not _24_ALLOWED.match(text):
        suffix = _24_SUFFIX.search(text)
        text = suffix.group(0).strip() if suffix else ""
    return text


def check_24(expression: str, numbers: list[int]) -> bool:
    """True iff `expression` uses each of `numbers` exactly once and equals 24 exactly.

    Only the game's basic operations count (`FOUR_OPERATIONS`): + - * / and parentheses
    over whole numbers; unary minus, powers and decimals (8.0) are refused.
    """
    try:
        value, literals = evaluate(expression, FOUR_OPERATIONS)
    except ExpressionError:
        return False
    return value == 24 and sorted(literals) == sorted(numbers)


def puzzle_numbers(item: Mapping[str, Any]) -> list[int]:
    """The four numbers: `question` is a list as shipped, or a string like "[1, 1, 1, 8]";
    without it, the list in "Using the numbers [...]" of the query."""
    source = item.get("question")
    if source is None:
        match = re.search(r"\[[\d,\s]+\]", str(item.get("query", "")))
        source = match.group(0) if match else None
    if isinstance(source, str):
        source = _parse_literal(source.strip())
    if not isinstance(source, (list, tuple)) or not all(isinstance(n, int) for n in source) or not source:
        raise ValueError(f"gameof24 item has no puzzle numbers in 'question' or 'query': {dict(item)!r:.200}")
    return list(source)


def _score_gameof24(prediction: str, item: Mapping[str, Any]) -> float:
    numbers = puzzle_numbers(item)
    return float(check_24(extract_24_expression(prediction[-_MAX_ANSWER_CHARS:]), numbers))


# --------------------------------------------------------------------------- toolmix


_ANY_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")


def _score_toolmix(prediction: str, item: Mapping[str, Any]) -> float:
    """The answer's last number equals a numeric gold ("1,873.0" == "1873"); a text gold
    must be the whole normalised answer or its end.

    ToolMix answers come from a frozen small generator that writes sentences ("The
    population of Sebin is 343639."); the end of its sentence is its answer. Only one
    candidate is ever compared, so an answer listing several ("1705 or 1800") does not
    gain from it.
    """
    answer = extract_answer(prediction)[:_MAX_ANSWER_CHARS]
    gold = str(_gold(item))
    gold_num = parse_number(gold)
    if gold_num is not None:
        numbers = _ANY_NUMBER.findall(answer)
        return float(bool(numbers) and parse_number(numbers[-1]) == gold_num)
    pred, key = _match_key(answer), _match_key(gold)
    return float(pred == key or pred.endswith(" " + key))


# --------------------------------------------------------------------------- registry

SCORERS: dict[str, Scorer] = {
    "qa_em": _score_qa,
    "math": _score_math,
    "multiple_choice": _score_multiple_choice,
    "gameof24": _score_gameof24,
    "toolmix": _score_toolmix,
}
"""Scorer kinds; a user JSON/JSONL file picks one by name (`--scorer`), default `DEFAULT_SCORER`."""

DEFAULT_SCORER = "qa_em"

BENCHMARK_SCORER: dict[str, str] = {
    "bamboogle": "qa_em",
    "2wiki": "qa_em",
    "hotpotqa": "qa_em",
    "musique": "qa_em",
    "gaia": "qa_em",
    "aime24": "math",
    "amc23": "math",
    "medqa": "multiple_choice",
    "gpqa": "multiple_choice",
    "gameof24": "gameof24",
    "toolmix": "toolmix",
}


def _gold(item: Mapping[str, Any]) -> Any:
    if "answer" not in item or item["answer"] is None:
        raise ValueError(f"item has no 'answer' field (keys: {sorted(item)})")
    return item["answer"]


def score(benchmark: str, prediction: str, item: Mapping[str, Any]) -> float:
    """1.0 if `prediction` answers `item` correctly under `benchmark`'s scorer, else 0.0.

    `benchmark` is a benchmark name (BENCHMARK_SCORER) or a scorer kind (SCORERS), the
    latter for user files. Never raises on the prediction; raises ValueError for an
    unknown benchmark or an item without its gold answer.
    """
    kind = BENCHMARK_SCORER.get(benchmark, benchmark)
    scorer = SCORERS.get(kind)
    if scorer is None:
        raise ValueError(
            f"unknown benchmark or scorer {benchmark!r}; benchmarks: {sorted(BENCHMARK_SCORER)}, "
            f"scorers: {sorted(SCORERS)}"
        )
    if kind == "gameof24":
        puzzle_numbers(item)  # validate the item before looking at the prediction
    else:
        _gold(item)
    if not isinstance(prediction, str):
        prediction = "" if prediction is None else str(prediction)
    return scorer(prediction[-_MAX_PREDICTION_CHARS:], item)


# --------------------------------------------------------------------------- LLM judge

_VERDICT = re.compile(r"\b(true|false)\b", re.IGNORECASE)


def judge_score(llm: BaseChatModel, question: str, prediction: str, gold: str) -> float:
    """Ask `llm` whether `prediction` is equivalent to `gold`; the last True/False decides.

    Errors from the model propagate (a failed API call is not a wrong answer); an
    unparsable reply scores 0.0.
    """
    reply = llm.invoke(JUDGE_PROMPT.format(question=question, response=prediction, gold=gold))
    content = reply.content if isinstance(reply.content, str) else str(reply.content)
    verdicts = _VERDICT.findall(content)
    return float(bool(verdicts) and verdicts[-1].lower() == "true")
