"""IPGO inside a real ComfyUI (in-process executor) on the small SD1 and SDXL checkpoints.

The reward is the tiny random CLIP from devtools/reward_models.py: a real differentiable CLIP, so the
gradient reaches the learned tokens through the reward, the VAE decode, CFG and the last K UNet steps
exactly as at scale. Images are 64 x 64 and schedules short, so an epoch takes about a second.
"""
import math

import pytest
import safetensors.torch
import torch

from devtools.inprocess import GraphError
from devtools.reward_models import NAMES

PROMPT = "a red square"


def optimize_graph(ckpt: str, prompts: str = PROMPT, *, epochs=6, steps=6, size=64, seed=3, **settings) -> dict:
    inputs = {"prompts": prompts, "negative": "", "seed": seed, "steps": steps, "cfg": 5.0, "sampler_name": "euler",
              "scheduler": "normal", "width": size, "height": size, "epochs": epochs, "learning_rate": 0.05,
              "lr_step": 10, "lr_gamma": 0.9, "accumulation": 4, "prefix_tokens": 3, "suffix_tokens": 3,
              "rank": 16, "rotation": True, "conformity_weight": 0.001, "last_steps": 2, "clip_norm": 1.0,
              "init_seed": 0, **settings}
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "rw": {"class_type": "PromptOptim_LoadRewardModel",
               "inputs": {"family": "clip", "weights": NAMES["clip"], "clip_backbone": "none",
                          "open_clip_architecture": "", "dtype": "auto"}},
        "opt": {"class_type": "PromptOptim_IPGOOptimize",
                "inputs": {"model": ["ckpt", 0], "clip": ["ckpt", 1], "vae": ["ckpt", 2], "reward": ["rw", 0],
                           **inputs}},
        "preview": {"class_type": "PreviewImage", "inputs": {"images": ["opt", 3]}},
    }


def _weights(module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _unchanged(module, before) -> bool:
    return all(torch.equal(v, before[k]) for k, v in module.state_dict().items())


def test_sd1_reward_rises_tokens_stay_constrained_and_models_untouched(comfy, sd1_checkpoint):
    graph = optimize_graph(sd1_checkpoint.name, epochs=1)
    comfy.run(graph)  # loads the checkpoint; weights are compared around the real run
    model, clip, vae = (comfy.node_outputs("ckpt")[i][0] for i in range(3))
    before = [_weights(m) for m in (model.model, clip.cond_stage_model, vae.first_stage_model)]
    comfy.run(optimize_graph(sd1_checkpoint.name, epochs=8))
    tokens, positive, negative, images, curve, report = (comfy.node_outputs("opt")[i][0] for i in range(6))
    curve_values = [float(v) for v in report.splitlines()[1].split(": ", 1)[1].split(", ")]
    assert len(curve_values) == 8
    assert max(curve_values[1:]) > curve_values[0] + 1e-4, curve_values
    assert tokens.info["best_epoch"] == str(1 + curve_values.index(max(curve_values)))
    for module, b in zip((model.model, clip.cond_stage_model, vae.first_stage_model), before):
        assert _unchanged(module, b)
        assert all(p.grad is None for p in module.parameters())
    assert not model.get_additional_models_with_key("prompt_optim_ipgo")
    # the conditioning: [prefix(3); BOS a red square EOS (5); suffix(3)], negative cut to the same length
    assert positive[0][0].shape == (1, 3 + 5 + 3, 768) and negative[0][0].shape == (1, 11, 768)
    torch.testing.assert_close(positive[0][0][0, :3], tokens.prefix, rtol=0, atol=0)
    torch.testing.assert_close(positive[0][0][0, -3:], tokens.suffix, rtol=0, atol=0)
    assert images.shape == (1, 64, 64, 3) and curve.shape[-1] == 3
