"""The web page in a real browser (Debian's chromium, headless) against a real stack.

One campaign is followed from the form to the results: the progress bar and the counters
move as the Server-Sent Events arrive, the results table fills, the CSV downloads; a second
campaign is cancelled from the page; and the page fits a phone's screen. A screenshot of
every step is saved under the test's tmp_path (and the job view to docs/web-job-view.png
when UPDATE_SCREENSHOTS=1).

Chromium is required, not optional: without /usr/bin/chromium or /usr/bin/chromedriver the
tests fail and say how to install them (.ci/run installs them).
"""

from __future__ import annotations

import csv
import os
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By

from services.cli.stack import REPO_ROOT, Stack
from tests.e2e.secured_stack import AUTH_ENV, token

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# High enough that a campaign takes a few seconds, so the page shows it in motion.
SANDBOX_LATENCY_MS = "50"
TERMINAL = {"JOB_STATUS_COMPLETED", "JOB_STATUS_FAILED", "JOB_STATUS_CANCELLED"}
COUNTERS = ("businesses", "qualified", "enriched", "cost")

# What the page shows, read in one round trip (the view changes while we look).
READ_VIEW = """
const q = (s) => document.querySelector(s);
const view = q('#job-view');
const counters = {};
for (const el of document.querySelectorAll('[data-counter]')) {
  counters[el.dataset.counter] = el.textContent;
}
return {
  visible: !!view && !view.hidden,
  jobId: view ? (view.dataset.jobId || '') : '',
  progress: q('#progress') ? q('#progress').value : null,
  stage: q('#stage') ? q('#stage').textContent : '',
  status: q('#status') ? q('#status').dataset.status : '',
  message: q('#job-message') ? q('#job-message').textContent : '',
  counters: counters,
  rows: document.querySelectorAll('#results tbody tr').length,
  resultsShown: !!q('#results-section') && !q('#results-section').hidden,
  cancelShown: !!q('#cancel') && !q('#cancel').hidden,
};
"""


def _require_chromium() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(
            f"the browser tests need Debian's chromium: {', '.join(missing)} missing; install "
            "them with `apt-get install -y chromium chromium-driver` (.ci/run does)",
            pytrace=False,
        )


def _wait_http(url: str, timeout: float, stack: Stack) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer in {timeout}s\n{stack.log_tails()}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Stack]]:
    """A whole stack, its web process included; yields the page's base URL and the stack."""
    yield from _web_stack(tmp_path_factory, {"SANDBOX_LATENCY_MS": SANDBOX_LATENCY_MS})


@pytest.fixture(scope="module")
def secured_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Stack]]:
    """The same in AUTH_MODE=jwt."""
    yield from _web_stack(tmp_path_factory, AUTH_ENV)


def _web_stack(factory: pytest.TempPathFactory, env: dict[str, str]) -> Iterator[tuple[str, Stack]]:
    _require_chromium()  # before minutes are spent on a stack no browser can use
    stack = Stack(factory.mktemp("web-stack"), env={"LOG_LEVEL": "INFO", **env})
    try:
        stack.start()
        _wait_http(f"{stack.web_url}/", 30, stack)
        yield stack.web_url, stack
    finally:
        stack.stop()


@pytest.fixture
def downloads(tmp_path: Path) -> Path:
    path = tmp_path / "downloads"
    path.mkdir()
    return path


@pytest.fixture
def driver(downloads: Path) -> Iterator[WebDriver]:
    _require_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--disable-gpu", "--window-size=1280,1100", "--lang=en-US"):  # fmt: skip
        options.add_argument(arg)
    options.add_experimental_option("prefs", {
        "download.default_directory": str(downloads),
        "download.prompt_for_download": False,
        "download.directory_upgrade": True,
        "safebrowsing.enabled": True,
    })  # fmt: skip
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        drv.execute_cdp_cmd(
            "Browser.setDownloadBehavior",
            {"behavior": "allow", "downloadPath": str(downloads)},
        )
        yield drv
    finally:
        drv.quit()


def _console(drv: WebDriver) -> list[dict[str, Any]]:
    try:
        return list(drv.get_log("browser"))
    except WebDriverException:
        return []


def _wait(
    drv: WebDriver, stack: Stack, what: str, check: Callable[[], Any], timeout: float = 60
) -> Any:
    """Poll ``check`` until it returns a truthy value; on timeout fail with what the page
    showed, the browser console and the stack's logs."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            view = drv.execute_script(READ_VIEW)
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what}\npage: {view}\n"
                f"console: {_console(drv)}\n{stack.log_tails()}"
            )
        time.sleep(0.02)


def _view(drv: WebDriver) -> dict[str, Any]:
    return dict(drv.execute_script(READ_VIEW))


def _fill_form(drv: WebDriver, values: dict[str, str]) -> None:
    for name, value in values.items():
        field = drv.find_element(By.NAME, name)
        field.clear()
        field.send_keys(value)


def _submit(drv: WebDriver, stack: Stack, previous: str = "") -> str:
    """Submit the form; return the id of the job the view then shows."""
    drv.find_element(By.CSS_SELECTOR, "#campaign-form button[type=submit]").click()
    view = _wait(drv, stack, "the job view of the new job", lambda: (
        (v := _view(drv))["visible"] and v["jobId"] and v["jobId"] != previous and v
    ))  # fmt: skip
    return str(view["jobId"])


def _screenshot(drv: WebDriver, path: Path) -> None:
    assert drv.save_screenshot(str(path)), f"no screenshot written to {path}"


def test_campaign_from_form_to_csv_and_cancel(
    web: tuple[str, Stack], driver: WebDriver, downloads: Path, tmp_path: Path
) -> None:
    base, stack = web
    drv = driver
    drv.get(f"{base}/")
    _wait(drv, stack, "the page's script", lambda: drv.execute_script(
        "return document.documentElement.dataset.ready === 'true'"))  # fmt: skip
    assert drv.title, "the page has a title"
    for name in ("business_type", "location", "max_results", "min_confidence_score",
                 "budget_limit", "verify_emails"):  # fmt: skip
        assert drv.find_element(By.NAME, name).is_displayed(), name
    verify = drv.find_element(By.NAME, "verify_emails")
    assert verify.get_attribute("type") == "checkbox"

    # A value the API refuses: its BadRequest field violation shows next to the field.
    _fill_form(drv, {"business_type": "coffee shop", "location": "Seattle, WA",
                     "max_results": "1000", "min_confidence_score": "0",
                     "budget_limit": "5"})  # fmt: skip
    drv.find_element(By.CSS_SELECTOR, "#campaign-form button[type=submit]").click()
    error = _wait(drv, stack, "the max_results field error", lambda: (
        (el := drv.find_element(By.CSS_SELECTOR, '[data-error-for="max_results"]'))
        .is_displayed() and el.text and el
    ))  # fmt: skip
    assert error.text.strip()
    assert drv.find_element(By.NAME, "max_results").get_attribute("aria-invalid") == "true"
    assert not _view(drv)["visible"], "no job was started by a refused request"

    _fill_form(drv, {"max_results": "10"})
    if not verify.is_selected():
        verify.click()
    _screenshot(drv, tmp_path / "01-form.png")

    job_id = _submit(drv, stack)
    assert job_id.startswith("job_"), job_id
    assert not drv.find_element(
        By.CSS_SELECTOR, '[data-error-for="max_results"]').is_displayed()  # fmt: skip

    # Watch the view until the job is finished, recording every state shown.
    seen: list[dict[str, Any]] = []
    mid_shot = False

    def finished() -> dict[str, Any] | None:
        nonlocal mid_shot
        view = _view(drv)
        if not seen or view != seen[-1]:
            seen.append(view)
        if not mid_shot and 0 < int(view["progress"]) < 100:
            _screenshot(drv, tmp_path / "02-progress.png")
            mid_shot = True
        return view if view["status"] in TERMINAL else None

    final = _wait(drv, stack, "the job to finish", finished, timeout=120)
    assert final["status"] == "JOB_STATUS_COMPLETED", final
    progress = [int(v["progress"]) for v in seen]
    assert progress[-1] == 100, progress
    before_done = sorted({p for p in progress if p < 100})
    assert len(before_done) > 1, f"the progress bar showed only {before_done} before 100"
    assert progress == sorted(progress), f"progress went backwards: {progress}"
    stages = [v["stage"] for v in seen]
    assert stages[-1] == "Done", stages
    assert set(stages) <= {"Queued", "Discovering", "Scoring", "Enriching", "Storing", "Done"}
    counter_values = {c: [v["counters"][c] for v in seen] for c in COUNTERS}
    for name in ("businesses", "enriched"):
        assert len(set(counter_values[name])) > 1, f"{name} never moved: {counter_values}"
    qualified = int(final["counters"]["qualified"])
    assert 0 < qualified <= 10, final
    assert int(final["counters"]["businesses"]) >= qualified
    assert final["counters"]["enriched"] == f"{qualified}/{qualified}", final
    assert final["counters"]["cost"].startswith("$"), final
    assert final["counters"]["cost"].split(".")[-1].isdigit(), final
    assert len(final["counters"]["cost"].split(".")[-1]) == 2, final
    assert not final["cancelShown"], "no Cancel button once the job is finished"
    assert final["message"], "the latest message is shown"

    # The results table: one row per qualified lead, every column filled from the API.
    rows_view = _wait(drv, stack, "the results table", lambda: (
        (v := _view(drv))["resultsShown"] and v["rows"] > 0 and v))  # fmt: skip
    assert rows_view["rows"] == qualified, rows_view
    headers = [th.text for th in drv.find_elements(By.CSS_SELECTOR, "#results thead th")]
    assert headers == ["Name", "Address", "Phone", "Website", "Rating", "Score", "Email",
                       "Email status", "Source", "Cost"], headers  # fmt: skip
    first = drv.find_elements(By.CSS_SELECTOR, "#results tbody tr")[0]
    cells = [td.text for td in first.find_elements(By.TAG_NAME, "td")]
    assert cells[0], cells  # a name
    # The step that found each email, as text; empty where no email was found.
    shown_rows = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
                  for tr in drv.find_elements(By.CSS_SELECTOR, "#results tbody tr")]  # fmt: skip
    sources = [row[headers.index("Source")] for row in shown_rows]
    assert set(sources) <= {"", "website", "pattern", "hunter", "cache"}, sources
    assert any(sources), "some email was found by a step of the waterfall"
    for row in shown_rows:
        assert bool(row[headers.index("Source")]) <= bool(row[headers.index("Email")]), row
    for link in drv.find_elements(By.CSS_SELECTOR, "#results a"):
        assert (link.get_attribute("href") or "").startswith(("http://", "https://"))
        assert set((link.get_attribute("rel") or "").split()) >= {"noopener", "noreferrer"}
    drv.execute_script("document.getElementById('job-view').scrollIntoView()")
    _screenshot(drv, tmp_path / "03-job-view.png")
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        docs = REPO_ROOT / "docs" / "web-job-view.png"
        docs.parent.mkdir(exist_ok=True)
        shutil.copyfile(tmp_path / "03-job-view.png", docs)

    # The jobs list shows the job, finished.
    _wait(drv, stack, "the job in the jobs list as completed", lambda: any(
        b.get_attribute("data-job-id") == job_id
        and b.get_attribute("data-status") == "JOB_STATUS_COMPLETED"
        for b in drv.find_elements(By.CSS_SELECTOR, "#jobs-list [data-job-id]")
    ))  # fmt: skip

    # Download CSV: fetched with the page's headers, saved through a Blob.
    drv.find_element(By.ID, "download-csv").click()

    def downloaded() -> Path | None:
        done = [p for p in downloads.iterdir() if p.suffix == ".csv"]
        return done[0] if done else None

    csv_path = _wait(drv, stack, "the CSV download", downloaded, timeout=30)
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        table = list(csv.reader(fh))
    assert len(table) == qualified + 1, table
    assert table[0], "a header row"
    assert all(len(row) == len(table[0]) for row in table), table
    names = {row[0] for row in table[1:]} | {row[1] for row in table[1:] if len(row) > 1}
    shown = {tr.find_elements(By.TAG_NAME, "td")[0].text
             for tr in drv.find_elements(By.CSS_SELECTOR, "#results tbody tr")}  # fmt: skip
    assert shown & names, f"the CSV's rows are the table's: {shown} vs {table[:3]}"
    assert table[0][-1] == "email_source", table[0]
    assert sorted(row[-1] for row in table[1:]) == sorted(sources), (table, sources)
    _screenshot(drv, tmp_path / "04-downloaded.png")

    # A second campaign, cancelled from the page while it runs.
    _fill_form(drv, {"business_type": "bakery", "location": "Portland, OR",
                     "max_results": "100", "min_confidence_score": "0"})  # fmt: skip
    second = _submit(drv, stack, previous=job_id)
    cancel = _wait(drv, stack, "the Cancel button", lambda: (
        (el := drv.find_element(By.ID, "cancel")).is_displayed() and el))  # fmt: skip
    assert _view(drv)["status"] not in TERMINAL
    cancel.click()
    cancelled = _wait(drv, stack, "the job to be cancelling or cancelled", lambda: (
        (v := _view(drv))["status"] in {"JOB_STATUS_CANCELLING", "JOB_STATUS_CANCELLED"} and v
    ))  # fmt: skip
    assert cancelled["jobId"] == second
    _screenshot(drv, tmp_path / "05-cancelled.png")
    final2 = _wait(drv, stack, "the cancelled job to finish", lambda: (
        (v := _view(drv))["status"] in TERMINAL and v), timeout=60)  # fmt: skip
    assert final2["status"] == "JOB_STATUS_CANCELLED", final2
    assert not final2["cancelShown"]
    assert not final2["resultsShown"], "no results table for a cancelled job"

    # The page broke no Content-Security-Policy rule and threw nothing (the refused
    # request above is a "network" entry).
    problems = [
        e for e in _console(drv) if e.get("level") == "SEVERE" and e.get("source") != "network"
    ]
    assert not problems, problems


def test_fits_a_phone_screen(web: tuple[str, Stack], driver: WebDriver, tmp_path: Path) -> None:
    base, stack = web
    drv = driver
    drv.set_window_size(390, 844)
    drv.get(f"{base}/")
    _wait(drv, stack, "the page's script", lambda: drv.execute_script(
        "return document.documentElement.dataset.ready === 'true'"))  # fmt: skip
    assert drv.execute_script("return window.innerWidth") <= 390
    _fill_form(drv, {"business_type": "florist", "location": "Austin, TX",
                     "max_results": "5", "min_confidence_score": "0"})  # fmt: skip
    for name in ("business_type", "location", "max_results", "verify_emails"):
        assert drv.find_element(By.NAME, name).is_displayed(), name
    _submit(drv, stack)
    assert drv.find_element(By.ID, "progress").is_displayed()
    _wait(drv, stack, "the results table", lambda: (
        (v := _view(drv))["resultsShown"] and v["rows"] > 0 and v), timeout=120)  # fmt: skip
    assert drv.find_element(By.ID, "progress").is_displayed()
    assert drv.find_element(By.ID, "results").is_displayed()
    drv.execute_script("document.getElementById('job-view').scrollIntoView()")
    _screenshot(drv, tmp_path / "06-phone.png")
    sizes = drv.execute_script(
        "const w = document.getElementById('results-wrap');"
        "return {scroll: document.documentElement.scrollWidth, inner: window.innerWidth,"
        " bodyScroll: document.body.scrollWidth, wrap: w.clientWidth,"
        " table: document.getElementById('results').scrollWidth,"
        " overflow: getComputedStyle(w).overflowX};"
    )
    # Only the results table is wider than the screen, and it scrolls inside its wrapper.
    assert sizes["scroll"] <= sizes["inner"], sizes
    assert sizes["bodyScroll"] <= sizes["inner"], sizes
    assert sizes["overflow"] in {"auto", "scroll"}, sizes
    assert sizes["wrap"] <= sizes["inner"], sizes


def test_token_in_auth_mode_jwt(
    secured_web: tuple[str, Stack], driver: WebDriver, downloads: Path, tmp_path: Path
) -> None:
    """A 401 asks for a token; the pasted token is kept in sessionStorage and sent as an
    Authorization header (the event stream and the CSV download too), never in a URL."""
    base, stack = secured_web
    drv = driver
    drv.get(f"{base}/")
    panel = _wait(drv, stack, "the token field after a 401", lambda: (
        (el := drv.find_element(By.ID, "auth-panel")).is_displayed() and el))  # fmt: skip
    _screenshot(drv, tmp_path / "07-token.png")
    secret = token("alice")
    drv.find_element(By.ID, "token").send_keys(secret)
    drv.find_element(By.CSS_SELECTOR, "#auth-form button[type=submit]").click()
    _wait(drv, stack, "the token panel to close", lambda: not panel.is_displayed())
    stored = drv.execute_script("return sessionStorage.getItem('prospect.token')")
    assert stored == secret

    _fill_form(drv, {"business_type": "bakery", "location": "Boston, MA",
                     "max_results": "3", "min_confidence_score": "0"})  # fmt: skip
    job_id = _submit(drv, stack)
    final = _wait(drv, stack, "the job's results", lambda: (
        (v := _view(drv))["status"] in TERMINAL and v["resultsShown"] and v
    ), timeout=120)  # fmt: skip
    assert final["status"] == "JOB_STATUS_COMPLETED", final
    assert final["rows"] == int(final["counters"]["qualified"]) > 0, final
    _wait(drv, stack, "the job in the jobs list", lambda: drv.find_elements(
        By.CSS_SELECTOR, f'#jobs-list [data-job-id="{job_id}"]'))  # fmt: skip

    drv.find_element(By.ID, "download-csv").click()
    csv_path = _wait(drv, stack, "the CSV download", lambda: next(
        (p for p in downloads.iterdir() if p.suffix == ".csv"), None), timeout=30)  # fmt: skip
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        assert len(list(csv.reader(fh))) == final["rows"] + 1

    urls = drv.execute_script(
        "return [location.href, ...performance.getEntriesByType('resource').map(e => e.name)]"
    )
    assert any("/events" in u for u in urls), urls
    assert not [u for u in urls if secret in u or "token=" in u.lower()], urls


# Records the headers of every fetch() of an event stream (injected before the page loads).
RECORD_EVENT_FETCHES = """
window.__eventFetches = [];
const realFetch = window.fetch.bind(window);
window.fetch = (input, init) => {
  const url = String(input && input.url ? input.url : input);
  if (url.includes('/events')) {
    window.__eventFetches.push({url, headers: Object.assign({}, (init || {}).headers || {})});
  }
  return realFetch(input, init);
};
"""


def test_stream_resumes_after_the_web_process_restarts(
    web: tuple[str, Stack], driver: WebDriver, tmp_path: Path
) -> None:
    """The event stream breaks when the web process dies; the page reconnects with
    Last-Event-ID and follows the job to its end."""
    base, stack = web
    drv = driver
    drv.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_EVENT_FETCHES})
    drv.get(f"{base}/")
    _fill_form(drv, {"business_type": "bookshop", "location": "Denver, CO",
                     "max_results": "40", "min_confidence_score": "0"})  # fmt: skip
    _submit(drv, stack)
    _wait(drv, stack, "the first update", lambda: int(_view(drv)["progress"]) > 0)
    web_proc = stack.web
    assert web_proc is not None
    web_proc.kill()  # a dropped connection (a graceful stop would finish the stream first)
    web_proc.start()
    web_proc.wait_ready(stack.ready_timeout)
    seen: list[int] = []

    def finished() -> dict[str, Any] | None:
        view = _view(drv)
        seen.append(int(view["progress"]))
        return view if view["status"] in TERMINAL else None

    final = _wait(drv, stack, "the job to finish after the restart", finished, timeout=120)
    assert final["status"] == "JOB_STATUS_COMPLETED", final
    assert seen == sorted(seen), f"progress went backwards: {seen}"
    fetches = drv.execute_script("return window.__eventFetches")
    resumed = [f["headers"].get("Last-Event-ID") for f in fetches[1:]]
    assert resumed and all(v and int(v) > 0 for v in resumed), fetches
    assert "Authorization" not in fetches[0]["headers"], "no token in AUTH_MODE=none"
    _screenshot(drv, tmp_path / "08-resumed.png")
