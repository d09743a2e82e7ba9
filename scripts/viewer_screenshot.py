"""The README's picture of the report viewer (docs/viewer.png).

    python scripts/viewer_screenshot.py                       # a realistic fake eval folder (no model)
    python scripts/viewer_screenshot.py eval_out [other_run]  # a real eval folder (or two)

Writes the run's report.html, opens it in headless Chromium (Debian's `chromium`) at
1280 px wide, expands the first item (side by side when the page opens that way) and
saves the top of the page, summary to first items, as a PNG.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agentflow.evals.viewer import write_html_report  # noqa: E402
from tests.chromium import Chromium  # noqa: E402
from tests.viewer_fakes import write_eval_folder  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="*", type=Path, help="eval folders or training runs (default: a fake eval)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "viewer.png")
    parser.add_argument("--height", type=int, default=1500, help="pixels of the page's top to keep")
    args = parser.parse_args(argv)
    run_dirs = args.run_dirs
    if not run_dirs:
        run_dirs = [Path(tempfile.mkdtemp(prefix="viewer-shot-")) / "eval_out"]
        write_eval_folder(run_dirs[0], n=8, plots=True)
    page = write_html_report(run_dirs, Path(tempfile.mkdtemp(prefix="viewer-page-")) / "report.html")
    with Chromium(width=1280, height=args.height) as browser:
        browser.open(page)
        browser.click("#list article button.expand")
        browser.eval("window.scrollTo(0, 0)")
        browser.screenshot(args.out)
    print(args.out)
    return args.out


if __name__ == "__main__":
    main()
