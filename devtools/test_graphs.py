"""API-format graphs the node tests share: a checkpoint, a method's guider and SamplerCustomAdvanced."""
from __future__ import annotations


def guided_sampling_graph(ckpt: str, guider_class: str, guider_inputs: dict, positive: dict, *, sampler: str,
                          scheduler: str, steps: int, batch: int, seed: int, size: int, prefix: str,
                          negative_text: str = "blurry") -> dict:
    """CheckpointLoaderSimple -> `positive` (node "pos") and CLIPTextEncode (negative) -> `guider_class` with
    `guider_inputs` -> SamplerCustomAdvanced (RandomNoise, KSamplerSelect, BasicScheduler) -> SaveLatent.
    Node ids: ckpt, pos, neg, lat, guider, noise, ks, sig, sca, save."""
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pos": positive,
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": negative_text}},
        "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": batch}},
        "guider": {"class_type": guider_class,
                   "inputs": {"positive": ["pos", 0], "negative": ["neg", 0], **guider_inputs}},
        "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
        "ks": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}},
        "sig": {"class_type": "BasicScheduler",
                "inputs": {"model": ["ckpt", 0], "scheduler": scheduler, "steps": steps, "denoise": 1.0}},
        "sca": {"class_type": "SamplerCustomAdvanced",
                "inputs": {"noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["ks", 0],
                           "sigmas": ["sig", 0], "latent_image": ["lat", 0]}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sca", 0], "filename_prefix": prefix}},
    }


def nan_latent_file(size: int = 64) -> str:
    """A .latent file with one NaN in ComfyUI's input folder (what Load Latent reads); its name."""
    import os

    import folder_paths
    import safetensors.torch
    import torch

    latent = torch.zeros(1, 4, size // 8, size // 8)
    latent[0, 0, 0, 0] = float("nan")
    name = "prompt_optim_nan.latent"
    safetensors.torch.save_file({"latent_tensor": latent, "latent_format_version_0": torch.tensor([])},
                                os.path.join(folder_paths.get_input_directory(), name))
    return name


# a node that showed every setting -> (its compact node, its options node); the options node's inputs come
# from its schema, so a graph written for the first node converts without listing them again
COMPACT_NODES = {
    "PromptOptim_MinorityGuider": ("PromptOptim_MinorityGuiderV2", "PromptOptim_MinorityOptions"),
    "PromptOptim_MinoritySampler": ("PromptOptim_MinoritySamplerV2", "PromptOptim_MinorityOptions"),
    "PromptOptim_DATEGuider": ("PromptOptim_DATEGuiderV2", "PromptOptim_DATEOptions"),
    "PromptOptim_DATESampler": ("PromptOptim_DATESamplerV2", "PromptOptim_DATEOptions"),
    "PromptOptim_IPGOOptimize": ("PromptOptim_IPGOOptimizeV2", "PromptOptim_IPGOOptions"),
    "PromptOptim_GFlowNetRewriter": ("PromptOptim_GFlowNetRewriterV2", "PromptOptim_RewriterOptions"),
}


def with_options_node(graph: dict, node_id: str, node_classes: dict, connect: bool = True) -> dict:
    """A copy of `graph` whose node `node_id` (one that shows every setting) is its compact node, with the
    settings its options node holds moved there (node id `<node_id>_options`). `connect=False` drops them
    instead: the compact node then runs on the options' defaults."""
    graph = {k: {**v, "inputs": dict(v["inputs"])} for k, v in graph.items()}
    node = graph[node_id]
    compact, options_class = COMPACT_NODES[node["class_type"]]
    declared = node_classes[options_class].INPUT_TYPES()
    names = {*declared.get("required", {}), *declared.get("optional", {})}
    moved = {k: node["inputs"].pop(k) for k in list(node["inputs"]) if k in names}
    node["class_type"] = compact
    if connect:
        graph[f"{node_id}_options"] = {"class_type": options_class, "inputs": moved}
        node["inputs"]["options"] = [f"{node_id}_options", 0]
    return graph
