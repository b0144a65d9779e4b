"""The run viewer's page in a real headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by selenium): the runs list, a run's graph and history, and the
page still working once the Ray that made the runs is shut down.

The runs are made by a process of their own that starts a local Ray, runs a workflow to its
end, one to a failure and leaves one running (its node waits on a gate that never opens),
then shuts Ray down when told: the viewer, another process that never connects to Ray, reads
the checkpoint store alone. Skipped without Chromium, unless ``GECKO_REQUIRE_BROWSER`` is set
(then it fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
DRIVER = shutil.which("chromedriver") or next(
    (p for p in ("/usr/lib/chromium/chromedriver",) if os.path.exists(p)), None
)
try:
    import selenium  # noqa: F401
except ImportError:  # pragma: no cover - the dev extra brings it
    HAVE_SELENIUM = False
else:
    HAVE_SELENIUM = True

_MISSING = [
    what
    for what, found in (
        ("chromium", CHROMIUM),
        ("chromedriver", DRIVER),
        ("selenium", HAVE_SELENIUM),
    )
    if not found
]
if _MISSING and os.environ.get("GECKO_REQUIRE_BROWSER"):
    raise RuntimeError(f"GECKO_REQUIRE_BROWSER is set, but {', '.join(_MISSING)} is missing")
pytestmark = pytest.mark.skipif(
    bool(_MISSING), reason=f"no {', '.join(_MISSING)} (apt-get install chromium chromium-driver)"
)

WAIT = 30  # seconds an explicit wait may take (a busy 2-core machine)

# Started as its own process: a local Ray, three runs, and Ray shut down when stdin closes.
MAKE_RUNS = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path

    import gecko_actors
    from gecko_actors import Workflow, WorkflowError

    checkpoint, gate = sys.argv[1], Path(sys.argv[2])
    gecko_actors.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20)

    def ok(ctx):
        return f"ok: {ctx.input}"

    def boom(ctx):
        raise RuntimeError("kaboom")

    def hold(ctx):  # the gate never opens: Ray is shut down under it
        while not gate.exists():
            time.sleep(0.05)
        return "late"

    def chain(name, second, fn):
        return Workflow(name).add_node("first", ok).add_node(second, fn).add_edge("first", second)

    def start(wf, run_id):
        return wf.start("in", run_id=run_id, checkpoint=checkpoint)

    start(chain("finishing", "second", ok), "finished-1").result(60)
    try:
        start(chain("failing", "boom", boom), "failed-1").result(60)
    except WorkflowError:
        pass
    live = start(chain("holding", "hold", hold), "running-1")
    deadline = time.monotonic() + 60
    while live.status()["nodes"].get("hold", {}).get("state") != "running":
        assert time.monotonic() < deadline, live.status()
        time.sleep(0.1)
    print("ready", flush=True)
    sys.stdin.read()  # until the test says so
    gecko_actors.shutdown()
    print("ray is down", flush=True)
    """
)


class Lines:
    """A process's stdout, line by line, read in a thread (a wait must be able to time out)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.seen: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, text: str, timeout: float = 120) -> str:
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {text!r} after {timeout}s: {self.seen}") from None
            if line is None:
                raise AssertionError(f"exited ({self.process.wait()}) before {text!r}: {self.seen}")
            self.seen.append(line)
            if text in line:
                return line


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None and process.stdin is not None and not process.stdin.closed:
        process.stdin.close()  # the runs' process shuts its Ray down before it exits
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "GECKO_UI_TOKEN")}
    return {**env, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """The process making runs on its own Ray (started first: Ray takes the longest), the
    viewer on a free 127.0.0.1 port (never connected to Ray), and a headless Chromium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    folder = tmp_path_factory.mktemp("ui-browser")
    checkpoint = f"file://{folder}/runs"
    script = folder / "make_runs.py"
    script.write_text(MAKE_RUNS)
    started: list[subprocess.Popen[str]] = []
    driver = None
    try:
        maker = subprocess.Popen(
            [sys.executable, str(script), checkpoint, str(folder / "gate")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=_environment(), cwd=folder,
        )  # fmt: skip
        started.append(maker)
        maker_lines = Lines(maker)  # read from the start: a full pipe would block it
        viewer = subprocess.Popen(
            [sys.executable, "-m", "gecko_actors.cli", "ui", "--checkpoint", checkpoint],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_environment(),
        )  # fmt: skip
        started.append(viewer)
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM  # type: ignore[assignment]
        for flag in (
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", "--window-size=1400,1000",
        ):  # fmt: skip
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
        url = Lines(viewer).wait_for("http://", timeout=30).split()[2]
        maker_lines.wait_for("ready")
        yield SimpleNamespace(
            driver=driver, url=url, maker=maker, maker_lines=maker_lines, viewer=viewer
        )
    finally:
        if driver is not None:
            driver.quit()
        for process in reversed(started):
            _stop(process)


def wait(driver: Any, condition: Any, timeout: float = WAIT) -> Any:
    """``condition``'s first truthy value; an element redrawn meanwhile is looked up again."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    stale = (StaleElementReferenceException,)
    return WebDriverWait(driver, timeout, 0.2, ignored_exceptions=stale).until(condition)


# Read in one script, at once: the page redraws its rows every 2 s, and an element found in
# one call may be gone by the next.
_ROWS = """return [...document.querySelectorAll('#runs tbody tr')].map(
    (r) => [r.dataset.runId, r.dataset.status, r.querySelector('.badge').textContent,
            r.cells[3].textContent])"""
_NODES = """return [...document.querySelectorAll('#graph svg g.node')].map(
    (g) => [g.dataset.node, g.dataset.state])"""


def rows(driver: Any) -> list[list[str]]:
    """The runs list as the page shows it: run id, status, badge and steps of each row."""
    return driver.execute_script(_ROWS)


def statuses(driver: Any) -> dict[str, str]:
    """Run id -> the status of its row and its badge."""
    return {run_id: f"{status}/{badge}" for run_id, status, badge, _ in rows(driver)}


def node_states(driver: Any) -> dict[str, str]:
    return dict(driver.execute_script(_NODES))


EXPECTED = {
    "finished-1": "succeeded/succeeded",
    "failed-1": "failed/failed",
    "running-1": "running/running",
}


def test_the_runs_list_shows_a_finished_a_failed_and_a_running_run(scene: SimpleNamespace) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = scene.driver
    driver.get(scene.url)
    wait(driver, lambda d: statuses(d) == EXPECTED)
    shown = rows(driver)
    assert [row[0] for row in shown] == ["running-1", "failed-1", "finished-1"]  # newest first
    assert shown[2][3] == "2"  # finished-1's two steps
    Select(driver.find_element(By.ID, "status-filter")).select_by_value("failed")
    wait(driver, lambda d: statuses(d) == {"failed-1": "failed/failed"})
    Select(driver.find_element(By.ID, "status-filter")).select_by_value("")
    names = driver.find_element(By.ID, "name-filter")
    names.send_keys("finish")
    wait(driver, lambda d: statuses(d) == {"finished-1": "succeeded/succeeded"})
    names.clear()
    names.send_keys(" ")  # an input event: the list is drawn again, unfiltered
    wait(driver, lambda d: statuses(d) == EXPECTED)


def test_a_run_page_shows_its_graph_with_node_states_and_its_history(
    scene: SimpleNamespace,
) -> None:
    from selenium.webdriver.common.by import By

    driver = scene.driver
    driver.get(f"{scene.url}#/run/failed-1")
    wait(driver, lambda d: node_states(d) == {"first": "done", "boom": "failed"})
    assert "kaboom" in driver.find_element(By.ID, "run-error").text
    steps = driver.find_elements(By.CSS_SELECTOR, "#history details.step")
    assert [s.get_attribute("data-node") for s in steps] == ["first"]
    assert "ok: in" in steps[0].get_attribute("textContent")
    steps[0].find_element(By.CSS_SELECTOR, "summary").click()  # expands to the full record
    record = steps[0].find_element(By.CSS_SELECTOR, "pre.record")
    wait(driver, lambda d: '"node": "first"' in record.text)
    assert "gecko-actors resume failed-1" in driver.find_element(By.ID, "actions").text
    driver.get(f"{scene.url}#/run/running-1")
    wait(driver, lambda d: node_states(d) == {"first": "done", "hold": "running"})
    assert driver.find_element(By.CSS_SELECTOR, "#run-title .badge").text == "running"


def test_the_page_keeps_working_after_ray_is_shut_down(scene: SimpleNamespace) -> None:
    from selenium.webdriver.common.by import By

    assert scene.maker.stdin is not None
    scene.maker.stdin.close()  # the runs' process shuts its Ray down and exits
    scene.maker_lines.wait_for("ray is down")
    assert scene.maker.wait(timeout=60) == 0
    maps = Path(f"/proc/{scene.viewer.pid}/maps")
    if maps.exists():  # Linux: the viewer never even loaded Ray's core library
        assert "_raylet" not in maps.read_text()
    driver = scene.driver
    driver.get(f"{scene.url}#/")
    driver.refresh()
    wait(driver, lambda d: statuses(d) == EXPECTED)  # a run cut off stays running, as stored
    wait(driver, lambda d: d.find_element(By.LINK_TEXT, "finished-1").click() or True)
    wait(driver, lambda d: node_states(d) == {"first": "done", "second": "done"})
    assert len(driver.find_elements(By.CSS_SELECTOR, "#history details.step")) == 2
    driver.get(f"{scene.url}#/run/no-such-run")
    banner = wait(driver, lambda d: d.find_element(By.ID, "error").text or False)
    assert "no run 'no-such-run'" in banner
    assert scene.viewer.poll() is None  # still serving


@pytest.mark.usefixtures("ray_session")
def test_connected_the_page_answers_a_waiting_run_after_a_confirmation(
    scene: SimpleNamespace, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    from gecko_actors.checkpoint import CheckpointStore
    from gecko_actors.ui.actions import Actions
    from gecko_actors.ui.data import RunsReader
    from gecko_actors.ui.server import make_app
    from gecko_actors.workflow import NodeContext, Workflow

    def approve(ctx: NodeContext) -> str:
        return f"approved: {ctx.interrupt({'question': 'ship it?'})}"

    uri = f"file://{tmp_path}/runs"
    wf = Workflow(f"ui-page-{os.urandom(3).hex()}").add_node("draft", lambda c: "d")
    wf.add_node("ok", approve).add_edge("draft", "ok")
    run = wf.start("x", checkpoint=uri)
    store = CheckpointStore(uri)
    app = make_app(RunsReader(store), actions=Actions(store, address="auto"))
    with _serving(app) as url:
        driver = scene.driver
        driver.get(f"{url}#/run/{run.run_id}")
        form = wait(
            driver, lambda d: d.find_elements(By.CSS_SELECTOR, '.respond[data-node="ok"] button')
        )
        assert "ship it?" in driver.find_element(By.ID, "waiting").text
        driver.find_element(By.CSS_SELECTOR, ".respond textarea").send_keys("yes")
        form[0].click()
        alert = wait(driver, lambda d: d.switch_to.alert)
        assert f"gecko-actors respond {run.run_id} ok yes --address auto" in alert.text
        alert.accept()
        wait(
            driver, lambda d: d.find_element(By.ID, "notice").text == f"answered ok of {run.run_id}"
        )
        assert run.result(timeout=60) == "approved: yes"
        wait(driver, lambda d: node_states(d) == {"draft": "done", "ok": "done"})


@contextlib.contextmanager
def _serving(app: Any) -> Iterator[str]:
    """``app`` served on a free 127.0.0.1 port by a thread of this process (connected to the
    session's Ray, as ``gecko-actors ui --address`` is)."""
    from aiohttp import web

    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()
