"""The report in a real browser: headless Chromium (Debian's ``chromium`` and ``chromium-driver``, which
``make browser`` installs) opens ``index.html`` from disk with the network cut off, and the page must
load without console errors, draw every chart at a non-zero size, and show the numbers of
``report.json``. A screenshot is left in the test's temporary folder.

Without Chromium, chromedriver or Selenium the tests skip with the reason, except under ``CI=true``,
where that is a failure (``browser_helpers``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import browser_helpers
import pytest
from report_helpers import as_listed, evaluation

from recsys.experiments.report import build_report, write_report

# A page opened from disk may not even reach loopback.
NO_NETWORK = (*browser_helpers.NO_NETWORK, "--proxy-bypass-list=<-loopback>")
# The plots as the page drew them: decoded (complete, natural size) and laid out (bounding box).
PLOTS_JS = """
return Array.from(document.querySelectorAll('img, svg')).map(e => {
  const box = e.getBoundingClientRect();
  return {name: e.dataset.chart || e.tagName, complete: e.complete !== false,
          natural: e.naturalWidth === undefined ? 1 : e.naturalWidth, width: box.width, height: box.height};
});
"""
NUMBERS_JS = """
return Array.from(document.querySelectorAll('[data-number]')).map(e => {
  const attributes = {};
  for (const a of e.attributes) { if (a.name.startsWith('data-')) attributes[a.name.slice(5)] = a.value; }
  return {attributes: attributes, text: e.innerText};
});
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with browser_helpers.chromium(width=1400, height=1000, arguments=NO_NETWORK) as driver:
        yield driver


def _open(browser: Any, page: Path) -> list[dict[str, Any]]:
    """Load ``page`` from disk; return the console's SEVERE entries (errors) logged while loading."""
    browser.get_log("browser")  # drop what an earlier page logged
    browser.get(page.resolve().as_uri())
    assert browser.execute_script("return document.readyState") == "complete"
    return browser_helpers.console_errors(browser)


def test_the_report_loads_draws_every_chart_and_shows_the_numbers_of_its_json(
    browser: Any, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    write_report(build_report({"small": evaluation()}, sources={"small": "small.json"}), out)
    listed = json.loads((out / "report.json").read_text())

    assert _open(browser, out / "index.html") == []
    drawn = browser.execute_script(PLOTS_JS)
    assert [plot["name"] for plot in drawn] == [chart["name"] for chart in listed["charts"]]
    assert all(p["complete"] and p["natural"] > 0 and p["width"] > 0 and p["height"] > 0 for p in drawn), (
        drawn
    )
    shown = [as_listed(found["attributes"], found["text"]) for found in browser.execute_script(NUMBERS_JS)]
    assert len(shown) == len(listed["numbers"]) > 500
    assert shown == listed["numbers"]  # ids, values, the text a reader sees, and what each one is

    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, min(int(height), 6000))
    browser.save_screenshot(str(tmp_path / "report.png"))
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_the_checks_catch_a_broken_page(browser: Any, tmp_path: Path) -> None:
    """The same checks on a page with a missing image, a script error and a wrong number: each fails."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
        '<img data-chart="gone" src="gone.png"><script>notDefined();</script>'
        '<span data-number="n1" data-value="0.5" data-model="a">0.4</span></body></html>'
    )
    errors = _open(browser, page)
    assert any("gone.png" in e["message"] for e in errors) and any(
        "notDefined" in e["message"] for e in errors
    )
    (plot,) = browser.execute_script(PLOTS_JS)
    assert plot["natural"] == 0  # not drawn
    (shown,) = [as_listed(found["attributes"], found["text"]) for found in browser.execute_script(NUMBERS_JS)]
    assert shown == {"id": "n1", "value": 0.5, "text": "0.4", "model": "a"}  # text and value disagree
