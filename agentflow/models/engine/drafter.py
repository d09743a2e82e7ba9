"""Prompt-lookup drafts: the tokens a row will probably write next, read off its own text.

An agent's modules copy: the executor writes the sub-goal's numbers and words into its
arguments, the generator repeats what memory holds, every module repeats labels of its
prompt. So the tokens that followed the latest earlier occurrence of a row's last few
tokens are often the ones it writes next (the "prompt lookup" drafts of Saxena's
prompt-lookup decoding, vLLM's `ngram` speculator). The engine verifies the drafts of
every row in the row's next forward pass (they cost a few rows of a step that reads the
weights once for all of them) and keeps the longest prefix its sampler agrees with.

Measured on recorded G=8 rollouts of the embedded model (4 groups, 6,473 completion
tokens, temperature 0.7): up to 4 drafts from the longest match of 3, 2 or 1 tokens let a
request advance 1.71 tokens per forward pass on average (2 drafts 1.54, 8 drafts 1.82);
the first draft after a 1-token match is kept 23% of the time, after 2 or 3 tokens 53%
and 41%, the fourth 5% against 27% and 21%. So a 1-token match drafts one token: 1.65
tokens per forward for 1.83 drafts instead of 2.93 (docs/design.md §4, "Speculation").
"""

from __future__ import annotations

MAX_NGRAM = 3  # longest suffix looked up: 4 measured no better; without 1-token matches 1.58 vs 1.71
ONE_TOKEN_MATCH_DRAFTS = 1  # drafts after a match of a single token (see above)


class Drafter:
    """One request's text (prompt, then completion) with an index of where each of its
    n-grams (n = 1..MAX_NGRAM) last occurred with a known continuation."""

    __slots__ = ("ids", "_next")

    def __init__(self, prompt_ids: list[int]) -> None:
        self.ids: list[int] = []
        self._next: dict[tuple[int, ...], int] = {}  # n-gram -> index of the token that followed it last
        self.extend(prompt_ids)

    def extend(self, tokens: list[int]) -> None:
        """Append tokens; each becomes the continuation of the n-grams that end before it."""
        ids, index = self.ids, self._next
        for token in tokens:
            i = len(ids)
            for n in range(1, min(MAX_NGRAM, i) + 1):
                index[tuple(ids[i - n : i])] = i
            ids.append(token)

    def propose(self, k: int) -> list[int]:
        """Up to `k` tokens (ONE_TOKEN_MATCH_DRAFTS after a 1-token match): what followed the
        latest earlier occurrence of the longest suffix (MAX_NGRAM tokens down to 1) that
        occurred before; [] when none did."""
        if k <= 0:
            return []
        ids = self.ids
        for n in range(min(MAX_NGRAM, len(ids)), 0, -1):
            start = self._next.get(tuple(ids[-n:]))
            if start is not None:
                return ids[start : start + (k if n > 1 else min(k, ONE_TOKEN_MATCH_DRAFTS))]
        return []
