"""Each workflow in workflows/ loads in the real ComfyUI graph editor (headless Chromium) with no
missing node types, and the frontend's own graphToPrompt agrees with devtools.workflow_format.

Needs Debian's chromium (scripts/install_browser.sh) and the `playwright` package; playwright's own
browser download is never used (no internet here).
"""
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import ROOT, WORKFLOWS

from devtools.standard_models import with_stand_ins_ui
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


def _overlap(a, b) -> bool:
    """Whether two [x, y, width, height] boxes share any area."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def open_editor(browser, comfy_server):
    """A page with the graph editor loaded (its node types registered)."""
    page = browser.new_page(viewport={"width": 1600, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(comfy_server.url)
    page.wait_for_function("window.app?.graph && Object.keys(LiteGraph.registered_node_types).length > 0")
    return page


RESULT = "prompt_optim_result"  # the widget web/results.js adds
XSS = '<img src=x onerror="window.__xss = 1"> a red circle'


@pytest.mark.parametrize("name, node_type, expected", [
    ("gfn_rewriter_batch", "PromptOptim_GFlowNetRewriterV2", "\n"),  # one rewrite per line
    ("gradient_check", "PromptOptim_GradientCheck", "relative error"),
])
def test_text_result_shows_on_the_node_after_a_run(browser, comfy_server, name, node_type, expected):
    """Run the workflow's text node alone from the editor (on the embedded stand-ins for the files the
    workflow names); its result text appears on it, as /history has it."""
    workflow = with_stand_ins_ui(json.loads((ROOT / "workflows" / f"{name}.json").read_text()))
    node = next(str(n["id"]) for n in workflow["nodes"] if n["type"] == node_type)
    page = open_editor(browser, comfy_server)
    earlier = set(comfy_server.get("/history"))
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    try:
        page.evaluate("""async ([wf, keep]) => {
            await app.loadGraphData(wf, true, true, null);
            for (const n of [...app.graph.nodes]) {
                const needed = keep.includes(String(n.id)) || n.outputs?.some(o => o.links?.some(l =>
                    keep.includes(String(app.graph.links[l]?.target_id))));
                if (!needed) app.graph.remove(n);
            }
            await app.queuePrompt(0, 1);
        }""", [workflow, [node]])
        shown, deadline, finished = "", time.monotonic() + 3 * TIMEOUT_MS / 1000, None
        while time.monotonic() < deadline and not shown:
            page.wait_for_timeout(1000)
            shown = page.evaluate(f"app.graph.getNodeById({node}).widgets?.find(w => w.name === '{RESULT}')?.value")
            if finished is None and any(node in e["outputs"] for pid, e in comfy_server.get("/history").items()
                                        if pid not in earlier):
                finished = time.monotonic()
            if finished is not None and time.monotonic() - finished > 60:
                break  # the run is over; the editor had a minute to show it (a loaded machine is slow)
    finally:
        page.close()
    runs = [e for pid, e in comfy_server.get("/history").items() if pid not in earlier]
    assert len(runs) == 1, f"expected one run from the editor, found {len(runs)}"
    entry = runs[0]
    assert "text" in entry.get("outputs", {}).get(node, {}), f"the run left no text result in /history: {entry}"
    assert shown, f"nothing shown on the node; browser errors: {errors}"
    assert shown == "\n".join(entry["outputs"][node]["text"])
    assert expected in shown, shown


def test_result_text_is_shown_as_text_never_as_html(browser, comfy_server):
    """A shared workflow's prompt that looks like HTML is shown literally, and nothing in it runs."""
    workflow = with_stand_ins_ui(json.loads((ROOT / "workflows" / "score_generated_images.json").read_text()))
    page = open_editor(browser, comfy_server)
    alerts = []
    page.on("dialog", lambda d: (alerts.append(d.message), d.dismiss()))
    try:
        result = page.evaluate("""async ([wf, text, widget]) => {
            await app.loadGraphData(wf, true, true, null);
            const node = app.graph.nodes.find(n => n.type === "PromptOptim_ScoreImages");
            node.onExecuted({text: [text]});  // what the editor calls with the executor's UI output
            await new Promise(r => setTimeout(r, 500));
            return {shown: node.widgets.find(w => w.name === widget).value, xss: window.__xss ?? 0,
                    images: document.querySelectorAll('img[src="x"]').length,
                    saved: app.graph.serialize().nodes.find(n => n.id === node.id).widgets_values,
                    prompt: (await app.graphToPrompt()).output[String(node.id)].inputs};
        }""", [workflow, XSS, RESULT])
    finally:
        page.close()
    assert result["shown"] == XSS
    assert result["xss"] == 0 and result["images"] == 0 and not alerts
    # the result is neither saved with the workflow nor sent to the server as an input
    assert XSS not in json.dumps(result["saved"]) and RESULT not in result["prompt"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_in_editor(browser, comfy_server, object_info, path, tmp_path):
    """The workflow with the embedded stand-ins picked for the files it names, as the demo runs it."""
    workflow = with_stand_ins_ui(json.loads(path.read_text()))
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
        # [x, y, width, height] of each node as the editor has drawn it (title bar included; drawing widens a
        # node to its title)
        boxes = page.evaluate("() => app.graph.nodes.map(n => [n.id, n.title, ...Array.from(n.boundingRect)])")
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
    overlaps = [f"{a[1]} ({a[0]}) {[round(v) for v in a[2:]]} and {b[1]} ({b[0]}) {[round(v) for v in b[2:]]}"
                for i, a in enumerate(boxes) for b in boxes[i + 1:] if _overlap(a[2:], b[2:])]
    assert not overlaps, f"nodes drawn over each other: {overlaps}"
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


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_template_without_its_models_lists_the_files_to_download(browser, comfy_server, path):
    """Opened as shipped on a ComfyUI without those files, the template's missing-models dialog lists each
    real file it names (checkpoint, reward files, rewriter), by folder and name, with its download address."""
    workflow = json.loads(path.read_text())
    wanted = [m for n in workflow["nodes"] for m in n.get("properties", {}).get("models", [])]
    wanted += workflow.get("models", [])
    assert wanted, "the template names no model files"
    page = open_editor(browser, comfy_server)
    try:
        page.evaluate("""async (wf) => {
            await app.loadGraphData(wf, true, true, null, {showMissingModelsDialog: true});
        }""", workflow)
        page.wait_for_selector(".comfy-missing-models", timeout=TIMEOUT_MS)
        # each entry: "<folder> / <file>", its address as the label's title (and a Download / Copy URL button)
        listed = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll(
            '.comfy-missing-models li span[title]')].map(e => [e.textContent.trim(), e.title]))""")
    finally:
        page.close()
    expected = {f"{m['directory']} / {m['name']}": m["url"] for m in wanted}
    assert listed == expected
    assert all(url.startswith("https://huggingface.co/") for url in expected.values())
