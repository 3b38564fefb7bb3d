"""The real model files the example workflows name, where to download them, and the embedded models the
demo and the tests run in their place.

A template names what ComfyUI users have (the SD1.5 checkpoint, OpenAI's CLIP ViT-L/14, ImageReward v1.0)
and carries the frontend's model metadata ({name, url, directory}), so its missing-models dialog lists the
files to get when they are absent. Files the frontend matches by widget value (a checkpoint) go in the
node's `properties.models`; a reward is a folder, which no widget value names file by file, so its files go
in the workflow's `models` list. The demo and the tests swap each name for the embedded stand-in
(`stand_ins`), as the user would pick their own file.
"""
from __future__ import annotations

import copy

HF = "https://huggingface.co"

SD15 = "v1-5-pruned-emaonly-fp16.safetensors"
CLIP_L14 = "clip-vit-large-patch14"
IMAGE_REWARD = "ImageReward"
PROMPTIST = "Promptist"

# widget value -> (ComfyUI models folder, [(file name inside that folder, download URL)])
FILES = {
    SD15: ("checkpoints", [(SD15, f"{HF}/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/{SD15}")]),
    # the CLIP tokenizer is ComfyUI's own (the same for every CLIP), so config and weights suffice
    CLIP_L14: ("rewards", [(f"{CLIP_L14}/config.json",
                            f"{HF}/openai/clip-vit-large-patch14/resolve/main/config.json"),
                           (f"{CLIP_L14}/model.safetensors",
                            f"{HF}/openai/clip-vit-large-patch14/resolve/main/model.safetensors")]),
    IMAGE_REWARD: ("rewards", [(f"{IMAGE_REWARD}/ImageReward.pt",
                                f"{HF}/THUDM/ImageReward/resolve/main/ImageReward.pt"),
                               (f"{IMAGE_REWARD}/med_config.json",
                                f"{HF}/THUDM/ImageReward/resolve/main/med_config.json"),
                               (f"{IMAGE_REWARD}/vocab.txt",
                                f"{HF}/google-bert/bert-base-uncased/resolve/main/vocab.txt")]),
    PROMPTIST: ("prompt_rewriters", [(f"{PROMPTIST}/{name}", f"{HF}/microsoft/Promptist/resolve/main/{name}")
                                     for name in ("config.json", "pytorch_model.bin", "vocab.json", "merges.txt")]),
}

# (node type, widget index) -> the widget that names a file of FILES
MODEL_WIDGETS = {("CheckpointLoaderSimple", 0): "ckpt_name", ("PromptOptim_LoadRewardModel", 1): "weights",
                 ("PromptOptim_GFlowNetRewriterV2", 0): "policy"}


def model_entries(name: str) -> list[dict]:
    """The frontend's metadata for one widget value: [{name, url, directory}] per file."""
    directory, files = FILES[name]
    return [{"name": file, "url": url, "directory": directory} for file, url in files]


def stand_ins() -> dict[str, str]:
    """Real file -> the embedded model the demo and the tests use instead."""
    from devtools.prompt_rewriters import NAMES as TEST_REWRITERS  # noqa: F401 - keeps devtools' imports lazy
    from devtools.reward_models import NAMES as TEST_REWARDS
    from lab.checkpoint import CHECKPOINT_NAME, REWARD_NAME
    from lab.rewriter import NAMES as LAB_REWRITERS

    return {SD15: CHECKPOINT_NAME, CLIP_L14: REWARD_NAME, IMAGE_REWARD: TEST_REWARDS["image_reward"],
            PROMPTIST: LAB_REWRITERS["gfn"]}


def rewriter_stand_in_settings() -> dict[str, dict]:
    """Promptist's stand-in, the lab's GFlowNet policy, reads its own template and writes short rewrites:
    {node type: {input: value}} for the rewriter and its options node."""
    from core.gfn_rewriter.templates import TEMPLATE_PRESETS
    from lab.rewriter import MAX_NEW, MIN_NEW, TEMPLATE

    preset = next(name for name, p in TEMPLATE_PRESETS.items() if p.template == TEMPLATE)
    return {"PromptOptim_GFlowNetRewriterV2": {"template_preset": preset},
            "PromptOptim_RewriterOptions": {"min_new_tokens": MIN_NEW, "max_new_tokens": MAX_NEW}}


def with_stand_ins_api(graph: dict, ckpt_name: str | None = None) -> dict:
    """An API-format graph with each real file replaced by its stand-in (the checkpoint by ckpt_name if given)."""
    table = stand_ins()
    if ckpt_name:
        table[SD15] = ckpt_name
    for node in graph.values():
        for (node_type, _), widget in MODEL_WIDGETS.items():
            value = node["inputs"].get(widget)
            if node["class_type"] == node_type and isinstance(value, str) and value in table:
                node["inputs"][widget] = table[value]
    settings = rewriter_stand_in_settings()
    for node in graph.values():
        if node["class_type"] == "PromptOptim_GFlowNetRewriterV2" and node["inputs"]["policy"] == table[PROMPTIST]:
            node["inputs"].update(settings[node["class_type"]])
            linked = node["inputs"].get("options")
            if isinstance(linked, list):
                graph[linked[0]]["inputs"].update(settings[graph[linked[0]]["class_type"]])
    return graph


def with_stand_ins_ui(workflow: dict) -> dict:
    """A copy of a UI-format workflow with each real file replaced by its stand-in, as a user would pick it,
    and without the download list of the files it no longer names (the workflow's `models`)."""
    workflow = copy.deepcopy(workflow)
    workflow.pop("models", None)
    table = stand_ins()
    for node in workflow["nodes"]:
        for (node_type, index), _ in MODEL_WIDGETS.items():
            values = node.get("widgets_values")
            if node["type"] == node_type and values and values[index] in table:
                values[index] = table[values[index]]
    # the rewriter's settings by widget position (seed is followed by its control value)
    positions = {"PromptOptim_GFlowNetRewriterV2": {"template_preset": 6},
                 "PromptOptim_RewriterOptions": {"min_new_tokens": 2, "max_new_tokens": 3}}
    for node in workflow["nodes"]:
        for name, value in rewriter_stand_in_settings().get(node["type"], {}).items():
            node["widgets_values"][positions[node["type"]][name]] = value
    return workflow
