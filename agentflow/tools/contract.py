"""What the executor can count on from every AgentFlow tool.

- A blank text argument is refused by the tool's args schema (`NonBlankText`), so the
  executor reports invalid arguments before the tool runs, and no tool repeats the
  check in its body.
- Whatever goes wrong while a tool runs reaches the caller as a `ToolException`, the
  type LangChain reserves for an expected tool failure (its `handle_tool_error` turns
  that, and only that, into a message for the model; any other type means a bug).
  Client libraries (Tavily, Wikipedia, a chat model API) raise their own types, so
  tools call them inside `reported_as_tool_failure`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from langchain_core.tools import ToolException
from pydantic import StringConstraints

NonBlankText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
"""A text argument with at least one non-space character, stripped of surrounding whitespace."""


@contextmanager
def reported_as_tool_failure(tool_name: str) -> Iterator[None]:
    """Re-raise an exception from the block as `ToolException("<tool_name> failed: <exc>")`.

    The message keeps the client's own words (`web_search failed: 429 Too Many
    Requests`), which is what the planner needs to choose another tool or query.
    """
    try:
        yield
    except ToolException:
        raise
    except Exception as exc:
        raise ToolException(f"{tool_name} failed: {exc}") from exc
