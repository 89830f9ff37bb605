"""``make demo`` and ``make admin`` as a new user runs them: nothing but Python installed.

The demo places its orders on the embedded default (SQLite and an embedded Redis) through a
real worker; the admin is then served by the example project's own ``runserver`` - a web
process that never imports ``orders.workflows`` by hand, so the diagram it draws proves the
workflows modules are discovered at start-up.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from celery_workflows.testing import wait_for
from tests.helpers import ARTIFACTS

ROOT = Path(__file__).resolve().parents[2]
ORDERS = 200

pytestmark = pytest.mark.worker


def embedded_env(var_dir: Path) -> dict[str, str]:
    """The environment of a machine where nothing is configured."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"CELERY_BROKER_URL", "DATABASE_URL", "DJANGO_SETTINGS_MODULE"}
    }
    env["EXAMPLE_VAR_DIR"] = str(var_dir)
    env["DEMO_ORDERS"] = str(ORDERS)
    return env


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    var_dir = tmp_path_factory.mktemp("demo")
    result = subprocess.run(
        [sys.executable, str(ROOT / "example_project" / "demo.py")],
        env=embedded_env(var_dir),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return var_dir, result.stdout


def test_the_demo_settles_every_order_and_says_how(demo):
    _, out = demo
    assert "broker:   redis+socket://" in out and "database: sqlite" in out
    assert f"{ORDERS}/{ORDERS} settled" not in out  # bad payloads never became runs
    assert "refused at the door: A-" in out
    summary = out[out.index("final status") :]
    for status, kind in [
        ("completed", "in stock"),
        ("completed", "gateway timeout, retried"),
        ("compensated", "declined card"),
        ("compensated", "carrier refuses"),
        ("waiting", "large, needs approval"),
    ]:
        line = next(line for line in summary.splitlines() if line.strip().startswith(status))
        assert kind in line, (status, kind, line)
    assert "processPayment" in out and "dead" in out and "(compensation)" in out
    assert "Re-driving its dead letter is refused" in out
    assert "make admin" in out and "FAILED" not in out
    # the atomic steps kept the shop's own table: one row per order, in its final state
    table = out[out.index("The shop's orders table") :].splitlines()[0]
    completed = int(re.search(r"(\d+) completed", out[out.rindex(" orders: ") :]).group(1))
    counts = {status: int(n) for n, status in re.findall(r"(\d+) (\w+)", table)}
    assert counts["shipped"] + counts["backordered"] == completed, table
    assert counts["cancelled"] == 12 and counts["reserved"] == 1, table


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def signed_in(browser, url: str, user: str = "demo", ready: str = "#result_list"):  # type: ignore[no-untyped-def]
    """A 1400 px page of one of ``make admin``'s users (password = name) at ``url``."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    site, path = url.split("/admin/", 1)
    page.goto(f"{site}/admin/login/?next=/admin/{path}")
    page.fill("#id_username", user)
    page.fill("#id_password", user)
    page.click("input[type=submit]")
    page.wait_for_selector(ready)
    return page


@pytest.fixture
def admin_site(demo):
    var_dir, _ = demo
    port = free_port()
    env = {**embedded_env(var_dir), "ADMIN_PORT": str(port)}
    log = (var_dir / "admin.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "admin_site.py"],
        cwd=ROOT / "example_project",
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/admin/login/", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            assert process.poll() is None, (var_dir / "admin.log").read_text()[-3000:]
            return False

    try:
        wait_for(up, timeout=60, interval=0.5, message="make admin never served the admin")
        yield url
    finally:
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C, as a user stops it
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def test_make_admin_shows_the_full_diagram_and_a_manager_approves_the_large_order(
    admin_site, browser
):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = signed_in(browser, f"{admin_site}/admin/celery_workflows/workflowrun/")
    assert "A-1" in page.inner_text("#result_list")  # business keys are listed
    page.screenshot(path=str(ARTIFACTS / "example-admin-runs.png"), full_page=True)
    # no page may frame the admin's buttons; an error page shows no settings
    framed = page.request.get(f"{admin_site}/admin/celery_workflows/workflowrun/")
    assert framed.headers["x-frame-options"] == "DENY"
    missing = page.request.get(f"{admin_site}/no-such-page/")
    assert missing.status == 404 and "URLconf" not in missing.text()

    page.click("#changelist-filter >> text=waiting")
    page.wait_for_url("**status__exact=waiting**")
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 1
    rows.first.locator("a").first.click()
    page.wait_for_selector(".cw-gate")
    assert "Approve order" in page.inner_text(".cw-gate-prompt")

    # the web process drew the whole graph, though it never imported orders.workflows itself
    queues = set(
        page.locator("svg.cw-diagram g.cw-node").evaluate_all(
            "nodes => nodes.map(n => n.dataset.queue)"
        )
    )
    for step in (
        "validateInventory",
        "reviewOrder",
        "processPayment",
        "packOrder",
        "createShipment",
        "sendConfirmation",
        "notifyBackorder",
        "declineOrder",
        "releaseInventory",
        "refundPayment",
        "cancelShipment",
    ):
        assert f"order.{step}" in queues, (step, sorted(queues))
    assert page.locator("svg.cw-diagram .cw-undo").count() >= 3
    # the diagram (11 steps and 3 compensations) fits the page at 1400 px: every step's box is
    # inside the diagram's frame, and the page itself does not scroll sideways
    frame = page.locator(".cw-diagram-wrap").bounding_box()
    assert frame is not None
    boxes = page.locator("svg.cw-diagram g.cw-node").evaluate_all(
        "nodes => nodes.map(n => n.getBoundingClientRect().toJSON())"
    )
    assert len(boxes) >= 6
    for box in boxes:
        assert frame["x"] <= box["left"] and box["right"] <= frame["x"] + frame["width"], box
        assert box["width"] >= 100  # shrunk, still legible (190 px wide unscaled)
    assert page.evaluate("document.documentElement.scrollWidth") <= page.evaluate(
        "window.innerWidth"
    )
    page.screenshot(path=str(ARTIFACTS / "example-admin-waiting.png"), full_page=True)

    # the large orders' gate names the managers group: the clerk, who holds the same
    # permissions, sees the question and no buttons; a manager approves
    assert "Decided by group managers" in page.inner_text(".cw-gate")
    run_url = page.url
    clerk = signed_in(browser, run_url, user="clerk", ready=".cw-gate")
    assert clerk.locator("button.cw-approve").count() == 0
    assert "You do not have permission to decide this one" in clerk.inner_text(".cw-gate")
    clerk.screenshot(path=str(ARTIFACTS / "example-admin-clerk.png"), full_page=True)
    manager = signed_in(browser, run_url, user="manager", ready=".cw-gate")
    manager.fill(".cw-gate input[name=comment]", "ok for a regular customer")
    manager.click("button.cw-approve")
    manager.wait_for_selector(".messagelist")
    assert "Approved: emitted orderApproved" in manager.inner_text(".messagelist")

    def completed() -> bool:
        page.reload()
        return page.locator(".cw-run").get_attribute("data-status") == "completed"

    wait_for(completed, timeout=60, interval=1, message="the approved order never completed")
    assert "approve by manager" in page.inner_text(".cw-run")
    page.screenshot(path=str(ARTIFACTS / "example-admin-approved.png"), full_page=True)

    # the queue dashboard fits the window: every queue's Pause button is in view
    page.goto(f"{admin_site}/admin/celery_workflows/queuecontrol/")
    page.wait_for_selector(".cw-dashboard")
    width = page.evaluate("window.innerWidth")
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    buttons = page.locator("tr.cw-queue button.cw-pause")
    assert buttons.count() >= 12
    for box in buttons.evaluate_all("bs => bs.map(b => b.getBoundingClientRect().right)"):
        assert box <= width
    page.screenshot(path=str(ARTIFACTS / "example-admin-queues.png"), full_page=True)

    page.goto(f"{admin_site}/admin/celery_workflows/workflowrun/?status__exact=compensated")
    page.locator("#result_list tbody tr").first.locator("a").first.click()
    page.wait_for_selector(".cw-timeline")
    undoes = page.locator(".cw-undoes").all_inner_texts()
    assert undoes and all(re.fullmatch(r"undoes \S+ \(job [0-9a-f]{8}\)", t) for t in undoes)
    page.screenshot(path=str(ARTIFACTS / "example-admin-compensated.png"), full_page=True)

    page.goto(f"{admin_site}/admin/celery_workflows/schedulefire/")
    assert "order.nightlyBackorders" in page.inner_text("#content")
    page.screenshot(path=str(ARTIFACTS / "example-admin-schedules.png"), full_page=True)


def test_an_orders_admin_page_lists_its_runs_and_each_run_links_back_to_its_order(
    admin_site, browser
):
    """The shop's Order model (kept by the workflow's atomic steps) shows its runs on its own
    admin page (WorkflowRunsMixin); a run's page links back to its order (link_runs)."""
    page = signed_in(browser, f"{admin_site}/admin/orders/order/")
    listed = page.inner_text("#result_list")
    assert "A-1" in listed and "shipped" in listed and "TRK-A-1" in listed

    page.goto(f"{admin_site}/admin/orders/order/?q=A-1000")
    page.locator("#result_list tbody tr").first.locator("a").first.click()
    page.wait_for_selector(".cw-subject-runs")
    runs = page.locator("tr.cw-subject-run")
    assert runs.count() == 1
    assert runs.first.get_attribute("data-status") == "completed"
    steps = page.inner_text(".cw-subject-steps")
    for step in ("validateInventory", "processPayment", "createShipment", "sendConfirmation"):
        assert f"order.{step}" in steps, steps
    page.screenshot(path=str(ARTIFACTS / "example-admin-order.png"), full_page=True)

    runs.first.locator("a").first.click()
    page.wait_for_selector(".cw-run")
    assert page.inner_text(".cw-subject") == "order A-1000"
    page.click(".cw-subject a")
    page.wait_for_selector(".cw-subject-runs")
    assert "/admin/orders/order/" in page.url


def test_the_example_graph_prints_as_text_mermaid_and_dot(tmp_path):
    def graph(fmt: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", "workflows", "graph", "--format", fmt],
            cwd=ROOT / "example_project",
            env=embedded_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    text = graph("text")
    assert "orderPlaced (from outside) -> order.validateInventory" in text
    assert "  inventoryReserved -> order.reviewOrder" in text
    assert "  undone by order.refundPayment" in text
    mermaid = graph("mermaid")
    assert mermaid.startswith("flowchart LR")
    # the shipment joins payment and packing: an arrow from each, marked as a join
    assert "order_processPayment -->|paymentProcessed (join)| order_createShipment" in mermaid
    assert "order_packOrder -->|orderPacked (join)| order_createShipment" in mermaid
    assert "order_createShipment -.->|undo| order_cancelShipment" in mermaid
    dot = graph("dot")
    assert '"order.reviewOrder" -> "order.declineOrder" [label="orderRejected"];' in dot
