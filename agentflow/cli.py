"""`agentflow` command line: run the graph on a question (and, as they land, train / eval)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="AgentFlow on LangGraph.")
console = Console(stderr=True)


@app.callback()
def main() -> None:
    """AgentFlow on LangGraph: run the agent, evaluate it, train its planner."""


def _build(model: str, tools: Optional[str], corpus: Optional[Path], max_turns: int, dtype: str, seed: int,
           max_new_tokens: int, temperature: float):
    from agentflow import build_agentflow
    from agentflow.models import LocalChatModel
    from agentflow.tools import default_tools, get_tools

    llm = LocalChatModel.from_pretrained(
        model, dtype=dtype, seed=seed, max_new_tokens=max_new_tokens, temperature=temperature
    )
    corpus_arg = str(corpus) if corpus else None
    names = [n for n in tools.split(",") if n.strip()] if tools else None
    tool_list = get_tools(names, llm=llm, corpus=corpus_arg) if names else default_tools(llm=llm, corpus=corpus_arg)
    return build_agentflow(llm, tool_list, max_turns=max_turns)


def _show(node: str, update: dict[str, Any]) -> None:
    """One readable line (or block) per node update."""
    if node == "planner":
        tool = update.get("tool_name") or "?"
        console.print(f"[bold cyan]Turn {update['turn']} · planner[/] → tool [bold]{tool}[/]: {update.get('sub_goal', '')}")
        if update.get("plan_error"):
            console.print(f"  [yellow]plan error:[/] {update['plan_error']}")
    elif node == "executor":
        for record in update.get("memory", []):
            if record["command"]:
                console.print(f"  [magenta]call[/] {record['tool_name']} {record['command']}")
            if record["error"]:
                console.print(f"  [red]error[/] {record['error']}")
            else:
                console.print(f"  [green]result[/] {record['result'][:500]}")
    elif node == "verifier":
        console.print(f"  [blue]verifier[/] {update.get('verdict')}")
    elif node == "generator":
        console.print(f"[bold green]Answer:[/] {update.get('answer', '')}")


@app.command()
def run(
    question: Annotated[str, typer.Argument(help="The question to solve.")],
    model: Annotated[str, typer.Option(help="HF id, local path, or the embedded default.")] = "smollm2-135m-instruct",
    max_turns: Annotated[int, typer.Option(min=1, help="Planner turns before the generator answers.")] = 10,
    tools: Annotated[Optional[str], typer.Option(help="Comma-separated tool names, e.g. python,calculator.")] = None,
    corpus: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False, help="JSONL corpus for local_search.")] = None,
    dtype: Annotated[str, typer.Option(help="float32 or bfloat16.")] = "float32",
    seed: Annotated[int, typer.Option()] = 0,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 128,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the final state as one JSON object.")] = False,
) -> None:
    """Solve QUESTION with the AgentFlow graph, streaming each step."""
    try:
        graph = _build(model, tools, corpus, max_turns, dtype, seed, max_new_tokens, temperature)
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    final: dict[str, Any] = {}
    for mode, chunk in graph.stream({"query": question}, stream_mode=["updates", "values"]):
        if mode == "values":
            final = chunk
        elif not as_json:
            for node, update in chunk.items():
                _show(node, update)
    if as_json:
        json.dump(final, sys.stdout, default=str)
        sys.stdout.write("\n")


if __name__ == "__main__":
    app()
