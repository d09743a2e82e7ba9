"""Report viewer load time: a page of N items opened in headless Chromium.

    python benchmarks/viewer_load.py                 # N = 5000
    python benchmarks/viewer_load.py --n 200 --repeat 1

Writes a fake eval folder (tests/viewer_fakes.py: realistic harness rows, no model) of
N rows, AgentFlow and ReAct over two benchmarks (so the page opens side by side, N/2
pairs), writes its report.html, opens it in headless Chromium (Debian's `chromium`)
and prints, as the median of `--repeat` loads:

- time to first render: the page's `first-render` performance mark (its first cards on
  screen), in ms from the start of navigation, so reading and parsing the file count;
- data parsed: the `data-parsed` mark (the embedded JSON parsed);
- load event: wall time from `Page.navigate` to the load event, seen from Python;
then, once, the time the page takes to apply "wrong only" and to leave side by side for
the full list (each with the layout it forces). Prints figures; not a
timed test. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agentflow.evals.viewer import write_html_report  # noqa: E402
from tests.chromium import Chromium  # noqa: E402
from tests.viewer_fakes import write_eval_folder  # noqa: E402

# Run in the page: time one synchronous filter change, layout included.
TIMED = """(() => {{ const t0 = performance.now(); {action}; document.body.offsetHeight;
  return performance.now() - t0; }})()"""
SET = "(() => {{ const e = document.getElementById('{id}'); e.value = {value}; e.dispatchEvent(new Event('change')); }})()"


def main(argv: list[str] | None = None) -> dict[str, float | int]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="items in the page (a multiple of 4)")
    parser.add_argument("--repeat", type=int, default=3, help="page loads; the median is printed")
    parser.add_argument("--output", default=None, help="folder for the fake eval (default: a temporary one)")
    args = parser.parse_args(argv)
    folder = Path(args.output or tempfile.mkdtemp(prefix="viewer-load-"))
    per_run = max(args.n // 4, 1)
    write_eval_folder(folder, n=per_run)  # 2 benchmarks x 2 systems
    start = time.perf_counter()
    page = write_html_report([folder])
    write_s = time.perf_counter() - start

    loads, parsed, first = [], [], []
    with Chromium() as browser:
        for _ in range(args.repeat):
            start = time.perf_counter()
            browser.open(page)
            loads.append(1000 * (time.perf_counter() - start))
            marks = browser.eval("Object.fromEntries(performance.getEntriesByType('mark').map(m => [m.name, m.startTime]))")
            parsed.append(marks["data-parsed"])
            first.append(marks["first-render"])
        cards = browser.eval("document.querySelectorAll('#list article').length")
        wrong_ms = browser.eval(TIMED.format(action="document.querySelector('#outcome button[data-outcome=wrong]').click()"))
        list_ms = browser.eval(TIMED.format(action=SET.format(id="compare-a", value="''")))
    figures = {
        "items": 4 * per_run,
        "page_bytes": page.stat().st_size,
        "write_s": round(write_s, 3),
        "first_render_ms": round(statistics.median(first), 1),
        "data_parsed_ms": round(statistics.median(parsed), 1),
        "load_event_ms": round(statistics.median(loads), 1),
        "cards_rendered": cards,
        "wrong_only_ms": round(wrong_ms, 1),
        "full_list_ms": round(list_ms, 1),
    }
    print(f"{figures['items']} items, page {figures['page_bytes'] / 1e6:.1f} MB written in {write_s:.2f} s")
    print(f"time to first render {figures['first_render_ms']:.0f} ms (data parsed at {figures['data_parsed_ms']:.0f} ms), "
          f"load event {figures['load_event_ms']:.0f} ms; median of {args.repeat}; {cards} cards rendered at first")
    print(f"'wrong only' {wrong_ms:.0f} ms, leaving side by side for all items {list_ms:.0f} ms")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
