"""When each module's reply is done: one definition for the local engine and for served models.

A small model does not end its turn after its answer: the 135M planner writes its three
lines and goes on with "Question: ..." of an invented next item, the executor writes its
JSON object and then "The answer is ...", the verifier explains its conclusion
(docs/design.md §1). Every token after the contract costs a decode step and nothing
else, because the parsers (`nodes/parsing.py`) read only the contract. So each module has
one `StopRule`, defined here next to nothing but the parsers it mirrors:

* `strings`: plain stop sequences, text that is never part of the module's output. The
  local engine stops on them (`SamplingParams.stop`), served models get them as the OpenAI
  `stop` parameter. `local_strings` are for small local models only: habits of theirs
  whose stop would cut a strong served model's longer answer.
* `end(reply)`: where the module's contract ends in the reply so far (the started prefix
  included), or None while it is incomplete. "After one complete JSON object" or "after
  the line that completes Sub-Goal, Tool Name and Context" is no fixed string, so a served
  API cannot stop on it: the local engine checks it after every token (`stop_when`, its
  predicate hook) and stops there; a served reply is cut there when it arrives (`cut`).

Either way the node parses `rule.cut(reply)`, so local and served replies are read alike.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from agentflow.nodes.parsing import PLANNER_LABEL, VERDICT


@dataclass(frozen=True)
class StopRule:
    """A module's stop conditions: `strings` (stop sequences) and `end` (a predicate with a position)."""

    strings: tuple[str, ...] = ()
    end: Callable[[str], int | None] | None = None
    local_strings: tuple[str, ...] = ()

    def stop_strings(self, local: bool) -> list[str] | None:
        """The stop sequences for a local model (`local`) or a served one; None for none."""
        return list(self.strings + (self.local_strings if local else ())) or None

    def done(self, reply: str, local: bool = True) -> bool:
        """Whether nothing more of `reply` will be read: a stop string or the contract's end is in it."""
        return any(s in reply for s in self.stop_strings(local) or ()) or (
            self.end is not None and self.end(reply) is not None)

    def cut(self, reply: str, local: bool = True) -> str:
        """`reply` up to its earliest stop string (a local engine already cut it there; OpenAI
        leaves it out, `transformers serve` leaves it in), then up to the contract's end."""
        for s in self.stop_strings(local) or ():
            reply = reply.split(s, 1)[0]
        end = self.end(reply) if self.end is not None else None
        return reply if end is None else reply[:end]


_LABEL = re.compile(PLANNER_LABEL, re.I | re.M)
# A field's value: the first line with text after the label (the label's own line when it
# has one), and that line's newline.
_VALUE_LINE = re.compile(r"\s*\S[^\n]*\n")


def planner_end(reply: str) -> int | None:
    """After the line that completes the contract: the first point where Sub-Goal, Tool Name
    and Context (any order) have each been written and the last of them has a value on its
    line, ended by a newline. Without a newline the reply is not done (the value may still
    be being written); a model that writes a field's value on the next line waits for it."""
    seen: set[str] = set()
    for label in _LABEL.finditer(reply):
        seen.add(re.sub(r"[^a-z]", "", label.group(1).lower()))
        if len(seen) == 3:
            value = _VALUE_LINE.match(reply, label.end())
            return value.end() - 1 if value else None
    return None


def executor_end(reply: str) -> int | None:
    """After the first complete JSON object (nested objects are part of it; a brace span
    that is not JSON, such as `{query: x}`, is skipped). Quotes outside braces are prose."""
    depth, start, in_string, escaped = 0, 0, False, False
    for i, ch in enumerate(reply):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"' and depth:
            in_string = True
        elif ch == "{":
            start = i if depth == 0 else start
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                try:
                    value = json.loads(reply[start : i + 1])
                except json.JSONDecodeError:
                    continue
                if isinstance(value, dict):
                    return i + 1
    return None


_VERDICT_DONE = re.compile(VERDICT + r"(?![a-z])(?=.)", re.I | re.S)
_CONCLUSION_LINE = re.compile(r"(?im)^[\s*#>-]*conclusion\s*\**\s*[:：][^\S\n]*\S[^\n]*\n")


def verifier_end(reply: str) -> int | None:
    """After the verdict word of `Conclusion: STOP|CONTINUE` (one character later, so that
    "STOPPED" is not taken for STOP), or after a `Conclusion:` line that holds some other
    text: what follows it cannot change the parse, which reads the conclusion."""
    ends = [m.end() for m in (_VERDICT_DONE.search(reply), _CONCLUSION_LINE.search(reply)) if m is not None]
    if not ends:
        return None
    end = min(ends)
    return end - 1 if reply[end - 1] == "\n" else end


# Each module's rule. "\nQuestion:" is how the 135M model starts inventing the next item
# (measured on ToolMix: 'Context: none\n\nQuestion: What is the capital ...'); no module's
# contract holds it at the start of a line.
PLANNER = StopRule(strings=("\nQuestion:",), end=planner_end)
EXECUTOR = StopRule(strings=("\nQuestion:",), end=executor_end)
VERIFIER = StopRule(strings=("\nQuestion:",), end=verifier_end)
# The local generator's reply ends at its first blank line: a small model runs on past its
# answer and starts writing "Step 2: ..." (measured on ToolMix: "155119\n\nStep 2: What is
# ..."). Not for served models: a 7B model reasons in paragraphs before its <answer> tags,
# and ends its own turn.
GENERATOR = StopRule(local_strings=("\n\n",))
