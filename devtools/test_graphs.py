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
