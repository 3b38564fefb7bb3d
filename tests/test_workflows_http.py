"""Every workflow in workflows/ runs end to end in the real ComfyUI server, over HTTP (/prompt, /history)."""
import json
import math

import pytest
from PIL import Image

from conftest import WORKFLOWS
from devtools.server import EventListener
from devtools.workflow_format import ui_to_api


def test_only_this_pack_is_loaded(object_info):
    modules = {info["python_module"] for info in object_info.values()}
    custom = {m for m in modules if m.startswith("custom_nodes")}
    assert custom == {"custom_nodes.prompt-optim"}
    assert "PromptOptim_GradientCheck" in object_info


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs_and_writes_images(comfy_server, object_info, workflow, sd1_checkpoint):
    ui = json.loads(workflow.read_text())
    graph = ui_to_api(ui, object_info)
    for node in graph.values():
        if node["class_type"] == "CheckpointLoaderSimple":
            assert node["inputs"]["ckpt_name"] == sd1_checkpoint.name  # the embedded default model
    with EventListener(comfy_server) as events:
        entry = comfy_server.run(graph, events=events)
    files = comfy_server.output_files(entry)
    latent = next(n["inputs"] for n in graph.values() if n["class_type"] == "EmptyLatentImage")
    savers = sum(node["class_type"] == "SaveImage" for node in graph.values())
    assert len(files) == latent["batch_size"] * savers
    for f in files:
        with Image.open(f) as image:
            assert image.size == (latent["width"], latent["height"])
            assert len(set(image.convert("L").getdata())) > 1, f"{f} is a flat image"
    for node_id, node in graph.items():
        if object_info[node["class_type"]]["output_node"]:  # an invalid output node is skipped, not fatal
            assert node_id in entry["outputs"], (node_id, node["class_type"], "did not run")
        if node["class_type"] == "PromptOptim_GradientCheck":
            report = entry["outputs"][node_id]["text"][0]
            assert "relative error" in report and "family: SD1.x" in report
        if node["class_type"] == "PromptOptim_ScoreImages":
            report = entry["outputs"][node_id]["text"][0]
            scores = [float(line.split(":")[1].split()[0]) for line in report.splitlines() if line.startswith("image ")]
            assert len(scores) == latent["batch_size"] and all(math.isfinite(s) for s in scores)
            assert len(set(scores)) == len(scores), "generated images should score differently"
        if node["class_type"] == "PromptOptim_DATESampler":
            # the reward at each update is shown under the node while it samples
            texts = [text for nid, text in events.texts if nid == node_id and text.startswith("DATE step")]
            assert len(texts) == len(range(0, node["inputs"]["steps"], int(node["inputs"]["schedule_value"])))
            assert all(math.isfinite(float(t.rsplit(" ", 1)[1])) for t in texts), texts
            bar = [p for p in events.progress if p.get("node") == node_id]
            assert bar and bar[-1]["value"] == bar[-1]["max"] == node["inputs"]["steps"], bar[-3:]
        if node["class_type"] == "PromptOptim_MinoritySampler":
            inputs = node["inputs"]
            optimized = math.ceil(inputs["optimize_fraction"] * inputs["steps"] - 1e-9)
            inner = optimized * inputs["iterations"]
            texts = [text for nid, text in events.texts if nid == node_id and text.startswith("MinorityPrompt step")]
            assert len(texts) == inner, texts  # the objective at every inner iteration, under the node
            assert all(math.isfinite(float(t.rsplit(" ", 1)[1])) for t in texts), texts
            bar = [p for p in events.progress if p.get("node") == node_id]  # one bar: steps + inner iterations
            assert bar and bar[-1]["value"] == bar[-1]["max"] == inputs["steps"] + inner, bar[-3:]
            assert any(p["value"] <= inner for p in bar[:3]), "the bar moves during the first inner iterations"
        if node["class_type"] == "PromptOptim_IPGOOptimize":
            inputs = node["inputs"]
            prompts = [p for p in inputs["prompts"].splitlines() if p.strip()]
            # the reward of every epoch under the node, and one bar tick per generation
            texts = [text for nid, text in events.texts if nid == node_id and text.startswith("IPGO epoch")]
            assert [t.split(":")[0] for t in texts] == [f"IPGO epoch {e + 1}/{inputs['epochs']}"
                                                        for e in range(inputs["epochs"])], texts
            assert all(math.isfinite(float(t.split(": ")[1].split()[1])) for t in texts), texts
            bar = [p for p in events.progress if p.get("node") == node_id]
            assert bar and bar[-1]["value"] == bar[-1]["max"] == inputs["epochs"] * len(prompts), bar[-3:]
            report = entry["outputs"][node_id]["text"][0]
            assert report.startswith("IPGO prompt-wise" if len(prompts) == 1 else "IPGO batch-wise"), report
            assert "in range: yes" in report, report
        if node["class_type"] == "PromptOptim_DenoisingLikelihood":
            report = entry["outputs"][node_id]["text"][0]
            values = [float(line.split(":")[1]) for line in report.splitlines() if line.startswith("image ")]
            assert len(values) == latent["batch_size"] and all(math.isfinite(v) for v in values), report
