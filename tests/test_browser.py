"""Each workflow in workflows/ loads in the real ComfyUI graph editor (headless Chromium) with no
missing node types, and the frontend's own graphToPrompt agrees with devtools.workflow_format.

Needs Debian's chromium (scripts/install_browser.sh) and the `playwright` package; playwright's own
browser download is never used (no internet here).
"""
import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, WORKFLOWS

from devtools.workflow_format import ui_to_api

CHROMIUM = "/usr/bin/chromium"
# Headless as root in a container, with nothing reaching out to Google's services.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
TIMEOUT_MS = 120_000  # first load of the frontend is slow on small CI machines
MISSING = f"{CHROMIUM} is missing; run scripts/install_browser.sh as root"
# Skip (before the server starts) where there is no browser, except in CI, which must run this check.
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() and os.environ.get("CI") != "true", reason=MISSING)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(MISSING)  # only reached in CI (see pytestmark)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # launch() gives every browser a fresh temporary profile (user-data-dir).
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_in_editor(browser, comfy_server, object_info, path, tmp_path):
    workflow = json.loads(path.read_text())
    page = browser.new_page(viewport={"width": 1600, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    page_errors, console_errors = [], []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    missing = []
    page.on("response", lambda r: r.status == 404 and missing.append(r.url))
    # The server's CSP blocks the frontend's lookups on api.comfy.org (node pack info); harmless.
    # 404s are judged by URL below (the console line does not name it).
    page.on("console", lambda m: m.type == "error" and "Content Security Policy" not in m.text
            and "status of 404" not in m.text and console_errors.append(m.text))
    try:
        page.goto(comfy_server.url)
        # The app exists once the frontend has fetched /object_info and registered the node types.
        page.wait_for_function("window.app?.graph && Object.keys(LiteGraph.registered_node_types).length > 0")
        # Start-up logs errors of its own (404s for optional user files such as user.css, a frontend
        # settings bug on a fresh profile); only errors from loading the workflow count.
        del console_errors[:]
        # Missing node types are replaced by placeholder nodes; the dialogs would report them.
        result = page.evaluate("""async (wf) => {
            await app.loadGraphData(wf, true, true, null,
                                    {showMissingNodesDialog: true, showMissingModelsDialog: true});
            const nodes = app.graph.nodes ?? app.graph._nodes;
            return {
                count: nodes.length,
                unregistered: nodes.filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type),
                // e.g. a checkpoint name the server does not list (no dialog reports those).
                bad_choices: nodes.flatMap(n => (n.widgets ?? []).filter(w => w.type === "combo"
                    && Array.isArray(w.options?.values) && !w.options.values.includes(w.value))
                    .map(w => `${n.type}.${w.name} = ${w.value}`)),
                output: (await app.graphToPrompt()).output,
                saved: app.graph.serialize(),  // what "Save" in the editor would write
            };
        }""", workflow)
        page.wait_for_timeout(500)  # let Vue render any dialog opened by loading
        dialogs = page.locator(".p-dialog").all_inner_texts()
        # Fit the whole graph into the screenshot (the editor's own fit runs before its last resize),
        # with room at the top for the menu bars drawn over the canvas.
        page.evaluate("""() => {
            const r = app.graph.nodes.map(n => n.boundingRect);
            const x = Math.min(...r.map(b => b[0])), y = Math.min(...r.map(b => b[1]));
            const w = Math.max(...r.map(b => b[0] + b[2])) - x, h = Math.max(...r.map(b => b[1] + b[3])) - y;
            app.canvas.ds.fitToBounds([x, y - 0.2 * h, w, 1.2 * h], {zoom: 0.9});
            app.canvas.setDirty(true, true);
        }""")
        page.wait_for_timeout(200)  # one redraw
        page.screenshot(path=tmp_path / f"{path.stem}.png")
    finally:
        page.close()
    out = ROOT / "output" / "browser"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / f"{path.stem}.png", out / f"{path.stem}.png")

    assert result["count"] == len(workflow["nodes"])
    assert not result["unregistered"], f"node types missing in the editor: {result['unregistered']}"
    assert not result["bad_choices"], f"values not among the choices: {result['bad_choices']}"
    assert not dialogs, f"dialogs after loading: {dialogs}"
    # Start-up asks for optional user files (user.css, saved workflows, templates) that a fresh
    # profile lacks; those 404s may arrive while the workflow loads. Any other 404 is an error.
    missing = [url for url in missing if "/api/userdata" not in url and not url.endswith("/user.css")]
    assert not page_errors + console_errors + missing, "browser errors:\n" + "\n".join(
        page_errors + console_errors + missing)
    # The frontend adds e.g. `_meta` (titles); compare only what /prompt executes.
    frontend = {nid: {"class_type": n["class_type"], "inputs": n["inputs"]} for nid, n in result["output"].items()}
    assert frontend == ui_to_api(workflow, object_info)
    # The same once re-saved by the editor (it adds e.g. the seed's "control after generate" value).
    assert frontend == ui_to_api(result["saved"], object_info)
