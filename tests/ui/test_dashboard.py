"""The dashboard at /ui/ in a real browser (Chromium from Debian's package, driven by Playwright):
signing in, a ProcessSet scaled from the page converging live, a failed object's condition and
event, a node token seeing only its own, the page coming back after a server restart, and the
screenshots of each view (``make screenshots`` writes them to docs/images/)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from setpoint.client import Client, Resource
from tests.agent.support import eventually
from tests.node.test_node_agent import SLEEPER, Agent
from tests.servers import ServerProcess

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (apt-get install chromium)")]
playwright_api = pytest.importorskip("playwright.async_api", reason="Playwright is a test extra")

PROCESSSETS = Resource("setpoint.dev", "v1alpha1", "processsets", kind="ProcessSet")
SHOTS = os.environ.get("SETPOINT_SCREENSHOTS")  # where make screenshots writes the views
TIMEOUT = 20_000  # ms, for the page's own waits


def processset(name: str, replicas: int, node: str, command: list[str] | None = None) -> dict[str, Any]:
    cmd = command or SLEEPER
    return {"apiVersion": "setpoint.dev/v1alpha1", "kind": "ProcessSet", "metadata": {"name": name},
            "spec": {"command": cmd[0], "args": cmd[1:], "replicas": replicas, "nodeName": node}}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[ServerProcess, Agent, Agent]]:
    srv = ServerProcess(tmp_path / "server").start()
    n1 = Agent(srv, "n1", tmp_path / "n1").start()
    n2 = Agent(srv, "n2", tmp_path / "n2").start()
    yield srv, n1, n2
    for a in (n1, n2):
        a.kill()
    srv.stop()


@pytest.fixture
async def admin(cluster: tuple[ServerProcess, Agent, Agent]) -> AsyncIterator[Client]:
    async with Client(cluster[0].client_config()) as c:
        yield c


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        await b.close()


async def signed_in(browser: Any, srv: ServerProcess, token: str | None = None) -> Any:
    context = await browser.new_context(ignore_https_errors=True, viewport={"width": 1400, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT)
    await page.goto(f"{srv.url}/ui/")
    await page.fill("#token", token or srv.token)
    await page.click("button[type=submit]")
    await page.wait_for_selector("#nav:not([hidden])")
    return page


async def shot(page: Any, name: str) -> None:
    if SHOTS:
        os.makedirs(SHOTS, exist_ok=True)
        await page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


def node_token(agent: Agent) -> str:
    import yaml

    return str(yaml.safe_load(agent.kubeconfig.read_text())["users"][0]["user"]["token"])


async def test_sign_in_and_the_overview(cluster: tuple[ServerProcess, Agent, Agent], admin: Client,
                                        browser: Any) -> None:
    srv = cluster[0]
    await admin.create(PROCESSSETS, processset("web", 1, "n1"), namespace="default")
    context = await browser.new_context(ignore_https_errors=True)
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT)
    await page.goto(f"{srv.url}/ui")
    await page.fill("#token", "not-a-token")
    await page.click("button[type=submit]")
    await page.wait_for_selector("#login-error:has-text('Unauthorized'), #login-error:has-text('refused')")
    page = await signed_in(browser, srv)
    card = page.locator("#kinds [data-kind=ProcessSet]")
    await card.wait_for()
    await page.wait_for_selector("#kinds [data-kind=ProcessSet]:has-text('1 converged')")
    await page.wait_for_selector("#nodes td:has-text('n1')")
    await page.wait_for_selector("#nodes td:has-text('n2')")
    await shot(page, "overview")
    await page.goto(f"{srv.url}/ui/#/list/{'setpoint.dev%2Fv1alpha1'}/processsets")
    await page.wait_for_selector("#rows tr[data-name=web]")
    await shot(page, "list")
    assert await page.evaluate("sessionStorage.getItem('setpoint.token')") == srv.token
    await page.click("#logout")
    await page.wait_for_selector("#login")
    assert await page.evaluate("sessionStorage.getItem('setpoint.token')") is None


async def test_scaled_from_the_page_it_converges_live(cluster: tuple[ServerProcess, Agent, Agent], admin: Client,
                                                      browser: Any) -> None:
    srv = cluster[0]
    await admin.create(PROCESSSETS, processset("web", 1, "n1"), namespace="default")
    page = await signed_in(browser, srv)
    await page.goto(f"{srv.url}/ui/#/obj/setpoint.dev%2Fv1alpha1/processsets/default/web")
    await page.wait_for_selector("#owned li:has-text('replica 0: Running')")
    await page.wait_for_selector("#live.on")
    await page.fill("#replicas", "3")
    await page.click("#scale")
    # Each replica appears as the agent reports it: the page follows the watch, no reload.
    for i in (1, 2):
        await page.wait_for_selector(f"#owned li:has-text('replica {i}: Running')")
    await page.wait_for_selector("#conditions td:has-text('AllReplicasReady')")
    obj = await admin.get(PROCESSSETS, "web", namespace="default")
    assert obj["spec"]["replicas"] == 3 and obj["status"]["readyReplicas"] == 3
    await shot(page, "object")


async def test_a_failed_object_shows_why(cluster: tuple[ServerProcess, Agent, Agent], admin: Client,
                                         browser: Any) -> None:
    srv = cluster[0]
    await admin.create(PROCESSSETS, processset("broken", 1, "n1", ["/nonexistent/serve"]), namespace="default")
    page = await signed_in(browser, srv)
    await page.goto(f"{srv.url}/ui/#/obj/setpoint.dev%2Fv1alpha1/processsets/default/broken")
    await page.wait_for_selector("#conditions td:has-text('CommandNotFound')")
    await page.wait_for_selector("#events td.bad:has-text('Warning')")
    assert "not found" in await page.inner_text("#events")
    # A replica that keeps crashing: desired and observed differ, and the page highlights where.
    await admin.create(PROCESSSETS, processset("crashing", 1, "n1", [sys.executable, "-c", "raise SystemExit(3)"]),
                       namespace="default")
    await page.goto(f"{srv.url}/ui/#/obj/setpoint.dev%2Fv1alpha1/processsets/default/crashing")
    # The page follows the object as it changes (the replica starts and crashes again): wait for
    # a rendering where replicas differs, and it alone.
    await page.wait_for_function(
        "() => { const d = [...document.querySelectorAll('#desired tr.diff')];"
        " return d.length === 1 && d[0].dataset.path === 'replicas'; }", timeout=20_000)
    await page.goto(f"{srv.url}/ui/#/")
    await page.wait_for_selector("#kinds [data-kind=ProcessSet]:has-text('1 failed')")
    await page.wait_for_selector("#warnings td:has-text('CommandNotFound')")


async def test_a_node_token_sees_and_changes_only_its_own(cluster: tuple[ServerProcess, Agent, Agent],
                                                          admin: Client, browser: Any) -> None:
    srv, n1, _ = cluster
    await admin.create(PROCESSSETS, processset("mine", 1, "n1"), namespace="default")
    await admin.create(PROCESSSETS, processset("theirs", 1, "n2"), namespace="default")
    page = await signed_in(browser, srv, node_token(n1))
    await page.goto(f"{srv.url}/ui/#/list/setpoint.dev%2Fv1alpha1/processsets")
    listed = page.locator("#rows, .error").first
    await listed.wait_for()
    text = await page.inner_text("main")
    assert "theirs" not in text, "a node token saw another node's ProcessSet"
    await page.goto(f"{srv.url}/ui/#/obj/setpoint.dev%2Fv1alpha1/processsets/default/theirs")
    await page.wait_for_selector("main .error, #gone")
    await page.goto(f"{srv.url}/ui/#/apply")
    await page.fill("#manifest", "apiVersion: setpoint.dev/v1alpha1\nkind: ProcessSet\n"
                                 "metadata: {name: theirs, namespace: default}\nspec: {replicas: 5, nodeName: n2, "
                                 f"command: {sys.executable}}}\n")
    await page.click("#apply")
    await page.wait_for_selector("#apply-result .error")
    assert (await admin.get(PROCESSSETS, "theirs", namespace="default"))["spec"]["replicas"] == 1


async def test_apply_shows_the_servers_refusal_at_the_field(cluster: tuple[ServerProcess, Agent, Agent],
                                                            browser: Any, admin: Client) -> None:
    srv = cluster[0]
    page = await signed_in(browser, srv)
    await page.goto(f"{srv.url}/ui/#/apply")
    await page.fill("#manifest", "apiVersion: setpoint.dev/v1alpha1\nkind: ProcessSet\n"
                                 "metadata:\n  name: typo\n  namespace: default\nspec:\n  command: sleep\n"
                                 "  replicas: -2\n  nodeName: n1\n")
    await page.click("#apply")
    cause = page.locator("#apply-result li[data-field='spec.replicas']")
    await cause.wait_for()
    assert "line 8" in await cause.inner_text()
    await shot(page, "apply")
    await page.fill("#manifest", (await page.input_value("#manifest")).replace("-2", "1"))
    await page.click("#apply")
    await page.wait_for_selector("#apply-result .ok")
    assert (await admin.get(PROCESSSETS, "typo", namespace="default"))["spec"]["replicas"] == 1


async def test_the_page_comes_back_after_a_server_restart(cluster: tuple[ServerProcess, Agent, Agent],
                                                          admin: Client, browser: Any) -> None:
    srv = cluster[0]
    await admin.create(PROCESSSETS, processset("web", 1, "n1"), namespace="default")
    page = await signed_in(browser, srv)
    await page.goto(f"{srv.url}/ui/#/obj/setpoint.dev%2Fv1alpha1/processsets/default/web")
    await page.wait_for_selector("#live.on")
    srv.restart()
    async with Client(srv.client_config()) as client:
        await client.patch(PROCESSSETS, "web", {"metadata": {"labels": {"after": "restart"}}}, namespace="default")
    await page.wait_for_selector("#yaml:has-text('after: restart')")
    await page.wait_for_selector("#live.on")
    await page.goto(f"{srv.url}/ui/#/transfer")
    await page.wait_for_selector("#agents tr[data-node=n1] td:has-text('watch')")
    await eventually(lambda: page.locator("#server-revision").inner_text(), timeout=20, what="the server revision")
    await shot(page, "transfer")


async def test_a_list_of_ten_thousand_stays_responsive(server: ServerProcess, namespace: str, browser: Any) -> None:
    import asyncio

    configmaps = Resource("", "v1", "configmaps", kind="ConfigMap")
    async with Client(server.client_config()) as client:
        sem = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            async with sem:
                await client.create(configmaps, {"apiVersion": "v1", "kind": "ConfigMap",
                                                 "metadata": {"name": f"cm-{i:05d}"}, "data": {"i": str(i)}},
                                    namespace=namespace)

        await asyncio.gather(*(one(i) for i in range(10_000)))
        page = await signed_in(browser, server)
        await page.goto(f"{server.url}/ui/#/list/v1/configmaps?ns={namespace}")
        await page.wait_for_selector("#count:has-text('10000 objects')")
        drawn = await page.locator("#rows tbody tr").count()
        assert 0 < drawn < 100, f"{drawn} rows drawn for 10,000 objects: not virtualised"
        await page.evaluate("document.querySelector('#rows').scrollTop = 1e9")
        await page.wait_for_selector("#rows tr[data-name=cm-09999]")
        # Still live at that size: a new object shows up without a reload.
        await client.create(configmaps, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm-10000"}},
                            namespace=namespace)
        await page.wait_for_selector("#count:has-text('10001 objects')")
