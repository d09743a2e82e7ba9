"""The run report viewer (`agentflow view`, `write_html_report`).

Reading: eval folders and training runs written by hand (`viewer_fakes`, the harness's
field names and its own `summarize`) plus one folder written by the real `run_eval`
with scripted models, so a change in what the harness writes breaks these tests.

The page: opened in a real headless Chromium (Debian's `chromium`, driven over the
DevTools protocol by `chromium.py`) and used the way a person would: click a filter,
expand an item, type a search, and check what is on screen. Without chromium the
browser tests fail with how to install it (CI installs it; a skip would hide a broken page).
Screenshots go to test-artifacts/viewer/ (git-ignored) for a look after a CI run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import pytest
from chromium import MISSING, Chromium
from conftest import ScriptedChatModel, query_of
from typer.testing import CliRunner
from viewer_fakes import eval_row, write_eval_folder, write_eval_run, write_rows, write_training_run

from agentflow.cli import app
from agentflow.evals import run_eval
from agentflow.evals.viewer import (
    MAX_TEXT,
    REPORT_FILE,
    clip,
    collect,
    embed_json,
    parse_run_name,
    render_html,
    write_html_report,
)

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "viewer"
HOSTILE_QUERY = "</script><script>window.pwned=1</script>"
HOSTILE_RESULT = "<script>alert(1)</script>"


# --------------------------------------------------------------------------- escaping


def test_embedded_json_cannot_end_its_script_element():
    data = {"query": HOSTILE_QUERY, "gold": "<!-- <script>", "result": "</SCRIPT >", "ok": "a < b"}
    text = embed_json(data)
    assert "<" not in text  # so neither "</script" nor "<!--" can appear, in any case
    assert json.loads(text) == data


def test_hostile_text_adds_no_element_to_the_page():
    page = render_html({"title": HOSTILE_QUERY, "items": [{"query": HOSTILE_QUERY, "result": HOSTILE_RESULT + "<!--"}]})
    assert page.lower().count("<script") == 2  # the template's data and code elements, nothing else
    assert HOSTILE_QUERY not in page and "<!--<" not in page


def test_long_text_is_cut_with_a_note():
    text = clip("x" * (MAX_TEXT + 5000))
    assert text.startswith("x" * MAX_TEXT)
    assert text.endswith("[5000 more characters in the .jsonl]")
    assert clip("short") == "short"


# --------------------------------------------------------------------------- reading runs


def test_eval_rows_become_items_with_their_turns(tmp_path):
    runs = write_eval_folder(tmp_path, n=6)
    data = collect([tmp_path])
    assert [(v["system"], v["max_turns"], v["kind"]) for v in data["variants"]] == [("agentflow", 3, "eval"), ("react", 3, "eval")]
    assert data["variants"][0]["config"]["models"]["planner"] == "smollm2-135m-instruct"
    assert len(data["items"]) == 24
    row = runs["bamboogle/react"][1]
    item = next(i for i in data["items"] if (i["benchmark"], i["pid"], i["v"]) == ("bamboogle", "1", 1))
    for key in ("query", "gold", "prediction", "answer", "score", "latency_s", "turns", "tool_errors", "error"):
        assert item[key] == row[key], key
    assert item["tools"] == row["tool_calls"]
    assert [(t["tool"], t["command"], t["result"], t["error"]) for t in item["memory"]] == [
        (r["tool_name"], r["command"], r["result"], r["error"]) for r in row["memory"]
    ]


def test_the_harness_output_reads_back(tmp_path):
    bench = tmp_path / "mini.jsonl"
    write_rows(bench, [{"pid": "a", "query": "What is 2+2?", "answer": "4"}, {"pid": "b", "query": "What is 3+3?", "answer": "6"}])
    sums = {"2+2": "4", "3+3": "6"}

    def agentflow(role, messages):
        expression = next(k for k in sums if k in query_of(messages))
        return {"planner": " Add.\nTool Name: calculator\nContext: none", "executor": f'{expression}"}}',
                "verifier": " STOP"}.get(role, f"<answer>{sums[expression]}</answer>")

    def react(role, messages):
        expression = next(k for k in sums if k in str(messages[1].content))
        if not any("Observation:" in str(m.content) for m in messages):
            return f' I should add.\nAction: calculator\nAction Input: {{"expression": "{expression}"}}'
        return f" Done.\nFinal Answer: <answer>{sums[expression]}</answer>"

    out = tmp_path / "out"
    for system, respond in (("agentflow", agentflow), ("react", react)):
        run_eval(str(bench), system=system, llm=ScriptedChatModel(respond=respond), output=out, tools="calculator",
                 progress=False, plots=False)
    data = collect([out])
    assert {(v["system"], v["max_turns"]) for v in data["variants"]} == {("agentflow", 3), ("react", 3)}
    by = {(data["variants"][i["v"]]["system"], i["pid"]): i for i in data["items"]}
    assert len(by) == 4
    flow, baseline = by[("agentflow", "a")], by[("react", "a")]
    assert flow["benchmark"] == baseline["benchmark"] == "mini"
    assert flow["score"] == baseline["score"] == 1.0 and flow["gold"] == "4"
    assert "What is 2+2?" in flow["query"] and "<answer>4</answer>" in flow["prediction"]
    assert flow["verdict"] == "STOP" and flow["tools"] == ["calculator"]
    assert (flow["memory"][0]["tool"], flow["memory"][0]["result"]) == ("calculator", "4")
    assert baseline["tools"] == ["calculator"] and baseline["answer"] == "4" and baseline["memory"][0]["result"] == "4"


def test_variant_comes_from_the_summary_else_the_file_name(tmp_path):
    assert parse_run_name("my_set__agentflow__turns10") == ("my_set", "agentflow", 10)
    assert parse_run_name("gsm-hard-react-T5") == ("gsm-hard", "react", 5)
    assert parse_run_name("odd") == ("odd", "?", None)
    write_rows(tmp_path / "renamed.jsonl", [eval_row("toolmix", "react", 0)])
    (tmp_path / "renamed.summary.json").write_text(json.dumps({"benchmark": "toolmix", "system": "react", "max_turns": 2}))
    write_rows(tmp_path / "gsm-hard-agentflow-T5.jsonl", [eval_row("toolmix", "agentflow", 0)])
    data = collect([tmp_path])
    assert sorted((v["system"], v["max_turns"]) for v in data["variants"]) == [("agentflow", 5), ("react", 2)]
    assert sorted(i["benchmark"] for i in data["items"]) == ["gsm-hard", "toolmix"]


def test_a_resumed_run_shows_each_item_once_with_its_last_row(tmp_path):
    failed = {**eval_row("toolmix", "agentflow", 0), "error": "RuntimeError: boom", "score": 0.0}
    fixed = {**eval_row("toolmix", "agentflow", 0), "score": 1.0}
    path = write_rows(tmp_path / "toolmix__agentflow__turns3.jsonl", [failed, eval_row("toolmix", "agentflow", 1), fixed])
    with path.open("a") as f:
        f.write('{"pid": "2", "query": "torn')  # a run still writing
    items = collect([tmp_path])["items"]
    assert [(i["pid"], i["error"], i["score"]) for i in items] == [("0", None, 1.0), ("1", None, items[1]["score"])]


def test_training_run_gives_curves_and_step_trajectories(tmp_path):
    written = write_training_run(tmp_path, steps=4, groups=2, group_size=3)
    data = collect([tmp_path])
    run = data["runs"][0]
    assert [m["step"] for m in run["metrics"]] == [1, 2, 3, 4]
    assert "group_size: 3" in run["config_text"]
    assert [v["kind"] for v in data["variants"]] == ["rollouts"]
    items = data["items"]
    assert len(items) == 4 * 2 * 3
    first, source = items[0], written["rollouts"][0]
    assert first["step"] == 1 and first["score"] == source["reward"] and first["answer"] == source["answer"]
    assert first["turns"] == len(source["turns"]) and first["pid"] == "0"
    assert [(t["tool"], t["verdict"]) for t in first["memory"]] == [(t["tool"], t["verdict"]) for t in source["turns"]]
    assert first["tools"] == [t["tool"] for t in source["turns"]]


def test_training_run_without_rollouts_still_shows_its_curves(tmp_path):
    write_training_run(tmp_path, steps=3, rollouts=False)
    data = collect([tmp_path])
    assert len(data["runs"][0]["metrics"]) == 3 and data["items"] == []


def test_a_folder_with_nothing_to_show_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="nothing to show"):
        collect([tmp_path])
    with pytest.raises(FileNotFoundError):
        collect([tmp_path / "missing"])


def test_report_is_one_offline_file_with_the_plots_inside(tmp_path):
    write_eval_folder(tmp_path, n=3, plots=True)
    path = write_html_report([tmp_path])
    assert path == tmp_path / REPORT_FILE
    page = path.read_text()
    assert page.count("data:image/png;base64,") == 2  # tool_call_ratio.png, tool_error_rate.png
    for reference in ('src="http', "href=", "<link", "@import", "url("):
        assert reference not in page
    assert "default-src 'none'" in page  # the page may fetch nothing
    assert resources.files("agentflow.evals").joinpath("viewer.html").is_file()


def test_cli_view_writes_the_page_and_opens_it(tmp_path, monkeypatch):
    untrained, trained, empty = tmp_path / "untrained", tmp_path / "trained", tmp_path / "empty"
    write_eval_run(untrained, "toolmix", "agentflow", 3)
    write_eval_run(trained, "toolmix", "agentflow", 3, seed=1)
    empty.mkdir()
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", opened.append)
    result = CliRunner().invoke(app, ["view", str(untrained), str(trained), "--open"])
    assert result.exit_code == 0, result.output
    page = untrained / REPORT_FILE
    assert result.stdout.strip() == str(page) and opened == [page.resolve().as_uri()]
    assert '"label":"trained"' in page.read_text()
    result = CliRunner().invoke(app, ["view", str(empty)])
    assert result.exit_code == 2 and "nothing to show" in result.output


# --------------------------------------------------------------------------- the page in a browser


@pytest.fixture(scope="module")
def browser():
    if shutil.which("chromium") is None:
        pytest.fail(MISSING, pytrace=False)  # fail, not skip: CI installs chromium, a skip would hide a broken page
    with Chromium() as chrome:
        yield chrome


def wait_for(browser: Chromium, expression: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (value := browser.eval(expression)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{expression} stayed falsy")
        time.sleep(0.05)
    return value


def shown(browser: Chromium) -> int:
    return int(browser.eval("document.getElementById('count').dataset.shown"))


def open_report(browser: Chromium, *run_dirs: Path) -> None:
    browser.open(write_html_report(list(run_dirs)))  # the load event comes after the page's script has run


def test_wrong_only_filter_shows_only_the_wrong_items(browser, tmp_path):
    rows = write_eval_run(tmp_path, "toolmix", "agentflow", 20)
    wrong = [r for r in rows if r["score"] < 1]
    assert 0 < len(wrong) < len(rows)
    open_report(browser, tmp_path)
    assert shown(browser) == 20 and browser.eval("document.querySelectorAll('article.item').length") == 20
    browser.click("#outcome button[data-outcome=wrong]")
    assert shown(browser) == len(wrong)
    cards = browser.eval("[...document.querySelectorAll('article.item')].map(a => [a.className, a.querySelector('code').textContent])")
    assert cards == [["item wrong", r["pid"]] for r in wrong]
    browser.click("#tool-errors")
    assert shown(browser) == sum(r["tool_errors"] > 0 for r in wrong)
    assert browser.eval("document.getElementById('count').textContent").startswith(f"Showing {shown(browser)} of 20")


def test_expanding_an_item_shows_its_turns(browser, tmp_path):
    rows = write_eval_run(tmp_path, "bamboogle", "agentflow", 12)
    open_report(browser, tmp_path)
    browser.click("#tool-errors")
    row = next(r for r in rows if r["tool_errors"])
    first = "document.querySelector('article.item')"
    assert browser.eval(f"{first}.querySelector('code').textContent") == row["pid"]
    assert browser.eval(f"{first}.querySelectorAll('.turn').length") == 0  # turns are built on demand
    browser.click("article.item button.expand")
    turns = browser.eval(f"[...{first}.querySelectorAll('.turn')].map(t => t.textContent)")
    assert len(turns) == len(row["memory"])
    for text, record in zip(turns, row["memory"]):
        assert record["tool_name"] in text and record["sub_goal"] in text and record["command"] in text
        assert (record["error"] or record["result"]) in text
    final = browser.eval(f"{first}.querySelector('.final').textContent")
    assert "Generator's response" in final and row["prediction"] in final and "STOP" in final
    png = browser.screenshot(ARTIFACTS / "expanded_item.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    browser.click("article.item button.expand")
    assert browser.eval(f"{first}.querySelector('.trace').hidden") is True


def test_two_systems_on_the_same_items_sit_side_by_side(browser, tmp_path):
    runs = write_eval_folder(tmp_path, n=8)
    open_report(browser, tmp_path)
    assert shown(browser) == 16 and browser.eval("document.querySelectorAll('article.pair').length") == 16
    sides = browser.eval("[...document.querySelectorAll('article.pair')[0].querySelectorAll('.side-title')].map(e => e.textContent)")
    assert sides == ["agentflow T=3", "react T=3"]
    differ = sum((a["score"] >= 1) != (b["score"] >= 1)
                 for bench in ("bamboogle", "toolmix")
                 for a, b in zip(runs[f"{bench}/agentflow"], runs[f"{bench}/react"]))
    browser.click("#differ")
    assert shown(browser) == differ
    browser.click("article.pair button.expand")
    assert browser.eval("document.querySelector('article.pair').querySelectorAll('.trace').length") == 2
    browser.screenshot(ARTIFACTS / "side_by_side.png")


def test_two_run_folders_compare_untrained_and_trained(browser, tmp_path):
    untrained, trained = tmp_path / "untrained", tmp_path / "trained"
    write_eval_run(untrained, "toolmix", "agentflow", 5)
    write_eval_run(trained, "toolmix", "agentflow", 5, seed=3)
    open_report(browser, untrained, trained)
    assert shown(browser) == 5
    sides = browser.eval("[...document.querySelector('article.pair').querySelectorAll('.side-title')].map(e => e.textContent)")
    assert sides == ["untrained · agentflow T=3", "trained · agentflow T=3"]


def test_search_narrows_the_items(browser, tmp_path):
    rows = write_eval_run(tmp_path, "bamboogle", "agentflow", 14)
    open_report(browser, tmp_path)
    browser.type("#search", "citibank")
    expected = sum("citibank" in r["query"].lower() for r in rows)
    wait_for(browser, f"document.getElementById('count').dataset.shown === '{expected}'")
    queries = browser.eval("[...document.querySelectorAll('article.item .query')].map(e => e.textContent)")
    assert len(queries) == expected and all("Citibank" in q for q in queries)


def test_untrusted_text_is_shown_literally_and_runs_no_script(browser, tmp_path):
    row = eval_row("toolmix", "agentflow", 0)
    row.update(pid="<b>x</b>", query=HOSTILE_QUERY, gold="<!--", answer='<img src=x onerror="window.pwned=2">')
    row["memory"][-1]["result"] = HOSTILE_RESULT
    row["memory"][-1]["error"] = None
    write_rows(tmp_path / "toolmix__agentflow__turns3.jsonl", [row])
    open_report(browser, tmp_path)
    assert browser.eval("typeof window.pwned") == "undefined"
    browser.click("article.item button.expand")  # the turns are built now: check again
    assert browser.eval("typeof window.pwned") == "undefined"
    assert not [e for e in browser.events if e["method"] == "Page.javascriptDialogOpening"]
    assert browser.eval("document.querySelectorAll('script').length") == 2
    assert browser.eval("document.querySelectorAll('main img, main b').length") == 0
    assert browser.eval("document.querySelector('article.item .query').textContent") == HOSTILE_QUERY
    assert browser.eval("document.querySelector('article.item .prediction').textContent") == row["answer"]
    assert browser.eval("document.querySelector('article.item code').textContent") == "<b>x</b>"
    results = browser.eval("[...document.querySelectorAll('.turn dd pre')].map(e => e.textContent)")
    assert HOSTILE_RESULT in results


def test_training_page_draws_curves_and_browses_steps(browser, tmp_path):
    written = write_training_run(tmp_path, steps=4, groups=2, group_size=3)
    open_report(browser, tmp_path)
    titles = browser.eval("[...document.querySelectorAll('#training svg.chart')].map(s => s.getAttribute('aria-label'))")
    assert titles[:2] == ["Mean reward", "Accuracy"] and len(titles) == 5
    reward = browser.eval("document.querySelector('#training svg.chart polyline').getAttribute('points').split(' ').length")
    assert reward == 4
    assert browser.eval("document.getElementById('step').hidden") is False
    browser.eval("(() => { const s = document.getElementById('step'); s.value = '2'; s.dispatchEvent(new Event('change')); })()")
    assert shown(browser) == sum(r["step"] == 2 for r in written["rollouts"])
    tags = browser.eval("[...document.querySelectorAll('article.item .tag')].map(t => t.textContent).filter(t => t.startsWith('step'))")
    assert tags and set(tags) == {"step 2"}
    browser.screenshot(ARTIFACTS / "training.png", full_page=True)


def test_load_benchmark_prints_its_figures(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "viewer_load.py"), "--n", "200", "--repeat", "1", "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["items"] == 200 and figures["first_render_ms"] > 0 and figures["page_bytes"] > 0
