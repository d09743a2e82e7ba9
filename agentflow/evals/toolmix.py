"""ToolMix: a generated task suite whose answers need tools, for small-model training runs.

The shipped benchmarks need web search and a strong model. ToolMix is checkable offline:
arithmetic on 4-5 digit numbers (beyond a 135M model's mental arithmetic, easy with a
calculator or Python) and look-ups of facts about invented entities (random syllable
names, so no model can know them) found only in `ToolMix.corpus` for a `local_search`
tool; two-step items chain a look-up with arithmetic or with a second look-up.

Train and test entities come from separate pools, so a test look-up can never be
answered from memorised training facts; no query string appears in both splits.
Everything is drawn from one `random.Random(seed)`: same seed, same suite.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "th", "dr", "kr", "qu", "sh", "br"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ou", "y"]
_CODAS = ["", "", "n", "r", "th", "l", "x", "sk", "m"]
_REFERENCE_YEAR = 2000


@dataclass
class _Town:
    name: str
    founded: int
    founder: str
    population: int


@dataclass
class _Realm:
    name: str
    capital: _Town


@dataclass
class ToolMix:
    """A generated suite: items of both splits and the passages `local_search` searches."""

    train: list[dict[str, Any]]
    test: list[dict[str, Any]]
    corpus: list[str] = field(default_factory=list)


class _Names:
    """Unique invented names; one instance spans both pools so no name is shared."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._used: set[str] = set()

    def word(self, syllables: int) -> str:
        while True:
            parts = [self._rng.choice(_ONSETS) + self._rng.choice(_VOWELS) for _ in range(syllables)]
            word = ("".join(parts) + self._rng.choice(_CODAS)).capitalize()
            if word not in self._used:
                self._used.add(word)
                return word

    def person(self) -> str:
        return f"{self.word(2)} {self.word(2)}"


def _make_pool(rng: random.Random, names: _Names, n_towns: int, n_realms: int) -> tuple[list[_Town], list[_Realm]]:
    towns = [
        _Town(names.word(rng.choice((2, 3))), rng.randint(1650, 1990), names.person(), rng.randint(1200, 950_000))
        for _ in range(n_towns)
    ]
    capitals = rng.sample(towns, min(n_realms, len(towns)))
    realms = [_Realm(names.word(3), capital) for capital in capitals]
    return towns, realms


def _passages(towns: list[_Town], realms: list[_Realm]) -> list[str]:
    passages = [
        f"{t.name} is a fictional river town founded in {t.founded} by {t.founder}. "
        f"It has a population of {t.population}."
        for t in towns
    ]
    passages += [f"{r.name} is a fictional realm. Its capital is {r.capital.name}." for r in realms]
    return passages


def _item(query: str, answer: int | str, kind: str, tools: list[str]) -> dict[str, Any]:
    return {"query": query, "answer": str(answer), "type": kind, "tool": tools[0], "tools": tools}


def _arithmetic(rng: random.Random) -> dict[str, Any]:
    if rng.random() < 0.5:
        a, b = rng.randint(1000, 99_999), rng.randint(1000, 9999)
        return _item(f"What is {a} * {b}?", a * b, "arithmetic", ["calculator"])
    terms = [rng.randint(10_000, 99_999) for _ in range(3)]
    return _item(f"What is {' + '.join(map(str, terms))}?", sum(terms), "arithmetic", ["calculator"])


def _lookups(towns: list[_Town], realms: list[_Realm]) -> list[dict[str, Any]]:
    tools = ["local_search"]
    items = []
    for t in towns:
        items.append(_item(f"In what year was {t.name} founded?", t.founded, "lookup", tools))
        items.append(_item(f"Who founded {t.name}?", t.founder, "lookup", tools))
        items.append(_item(f"What is the population of {t.name}?", t.population, "lookup", tools))
    items += [_item(f"What is the capital of {r.name}?", r.capital.name, "lookup", tools) for r in realms]
    return items


def _two_steps(towns: list[_Town], realms: list[_Realm]) -> list[dict[str, Any]]:
    items = [
        _item(
            f"How many years passed between the founding of {t.name} and {_REFERENCE_YEAR}?",
            _REFERENCE_YEAR - t.founded,
            "two_step",
            ["local_search", "calculator"],
        )
        for t in towns
    ]
    items += [
        _item(
            f"In what year was the capital of {r.name} founded?",
            r.capital.founded,
            "two_step",
            ["local_search", "local_search"],
        )
        for r in realms
    ]
    return items


def _split(
    rng: random.Random, names: _Names, n: int, prefix: str, seen: set[str]
) -> tuple[list[dict[str, Any]], list[str]]:
    """`n` items in thirds (arithmetic, lookup, two_step) over a fresh entity pool."""
    n_lookup, n_two = n // 3, n // 3
    # Enough entities that every look-up and two-step item can have its own query.
    n_towns = max(4, n_lookup // 3 + n_two // 2 + 2)
    towns, realms = _make_pool(rng, names, n_towns, max(2, n_two // 2))
    lookups = _lookups(towns, realms)
    two_steps = _two_steps(towns, realms)
    rng.shuffle(lookups)
    rng.shuffle(two_steps)
    items = lookups[:n_lookup] + two_steps[:n_two]
    seen.update(item["query"] for item in items)
    while len(items) < n:
        item = _arithmetic(rng)
        if item["query"] not in seen:  # also keeps arithmetic queries out of the other split
            seen.add(item["query"])
            items.append(item)
    rng.shuffle(items)
    for i, item in enumerate(items):
        item["pid"] = f"{prefix}-{i}"
    return items, _passages(towns, realms)


def make_toolmix(seed: int = 0, n_train: int = 1000, n_test: int = 200) -> ToolMix:
    """Generate the suite: disjoint train/test splits and the shared look-up corpus.

    The corpus holds the facts of both pools: the test entities must be searchable at
    test time; training items simply never mention them.
    """
    if n_train < 0 or n_test < 0:
        raise ValueError(f"split sizes must be >= 0, got n_train={n_train}, n_test={n_test}")
    rng = random.Random(seed)
    names = _Names(rng)
    seen: set[str] = set()
    train, train_passages = _split(rng, names, n_train, "train", seen)
    test, test_passages = _split(rng, names, n_test, "test", seen)
    corpus = train_passages + test_passages
    rng.shuffle(corpus)
    return ToolMix(train=train, test=test, corpus=corpus)


def write_jsonl(items: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write items one JSON object per line (loadable with `load_benchmark(path)`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    return path
