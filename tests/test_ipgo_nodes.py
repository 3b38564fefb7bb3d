"""IPGO inside a real ComfyUI (in-process executor) on the small SD1 and SDXL checkpoints.

The reward is the tiny random CLIP from devtools/reward_models.py: a real differentiable CLIP, so the
gradient reaches the learned tokens through the reward, the VAE decode, CFG and the last K UNet steps
exactly as at scale. Images are 64 x 64 and schedules short, so an epoch takes about a second.
"""

import pytest
import safetensors.torch
import torch

from devtools.inprocess import GraphError, InvalidGraph
from devtools.reward_models import NAMES
from devtools.weights import changed_keys, snapshot

PROMPT = "a red square"


def optimize_graph(ckpt: str, prompts: str = PROMPT, *, epochs=6, steps=6, size=64, seed=3, **settings) -> dict:
    inputs = {"prompts": prompts, "negative": "", "sampling_seed": seed, "steps": steps, "cfg": 5.0, "sampler_name": "euler",
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




@pytest.mark.claim
def test_sd1_reward_rises_tokens_stay_constrained_and_models_untouched(comfy, sd1_checkpoint):
    graph = optimize_graph(sd1_checkpoint.name, epochs=1)
    comfy.run(graph)  # loads the checkpoint; weights are compared around the real run
    model, clip, vae = (comfy.node_outputs("ckpt")[i][0] for i in range(3))
    before = [snapshot(m) for m in (model.model, clip.cond_stage_model, vae.first_stage_model)]
    comfy.run(optimize_graph(sd1_checkpoint.name, epochs=8))
    tokens, positive, negative, images, curve, report = (comfy.node_outputs("opt")[i][0] for i in range(6))
    curve_values = [float(v) for v in report.splitlines()[1].split(": ", 1)[1].split(", ")]
    assert len(curve_values) == 8
    assert max(curve_values[1:]) > curve_values[0] + 1e-4, curve_values
    assert tokens.info["best_epoch"] == str(1 + curve_values.index(max(curve_values)))
    # the basis stayed orthonormal and coefficients/angles in range after every update
    constraints = report.splitlines()[3]
    assert constraints.endswith("in range: yes") and float(constraints.split("|W^T W - I| ")[1].split(",")[0]) < 1e-4
    assert report.splitlines()[4] == "diffusion-model calls with gradient: 16"  # K = 2 per epoch
    for module, b in zip((model.model, clip.cond_stage_model, vae.first_stage_model), before):
        assert changed_keys(module, b) == []
        assert all(p.grad is None for p in module.parameters())
    assert not model.get_additional_models_with_key("prompt_optim_ipgo")
    # the conditioning: [prefix(3); BOS a red square EOS (5); suffix(3)], negative cut to the same length
    assert positive[0][0].shape == (1, 3 + 5 + 3, 768) and negative[0][0].shape == (1, 11, 768)
    torch.testing.assert_close(positive[0][0][0, :3], tokens.prefix, rtol=0, atol=0)
    torch.testing.assert_close(positive[0][0][0, -3:], tokens.suffix, rtol=0, atol=0)
    assert images.shape == (1, 64, 64, 3) and curve.shape[-1] == 3


def _error(comfy, graph) -> str:
    with pytest.raises(GraphError) as error:
        comfy.run(graph)
    return str(error.value)


def _score(reward_of, image_node, prompt=PROMPT):
    return {"class_type": "PromptOptim_ScoreImages",
            "inputs": {"images": [image_node, 0], "reward": [reward_of, 0], "prompt": prompt, "prompt_per_line": False,
                       "top_k": 0}}


def test_apply_reproduces_the_conditioning_and_its_image_scores_as_the_best_epoch(comfy, sd1_checkpoint, base_dir):
    """Apply -> KSampler (euler, same seed) regenerates the best epoch's image: the last two steps of the
    optimizer's render are Euler steps too, so the reward of the re-generated image is the kept reward."""
    graph = optimize_graph(sd1_checkpoint.name, epochs=5)
    graph.update({
        "apply": {"class_type": "PromptOptim_IPGOApply",
                  "inputs": {"clip": ["ckpt", 1], "tokens": ["opt", 0], "text": PROMPT, "negative": ""}},
        "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "ks": {"class_type": "KSampler",
               "inputs": {"model": ["ckpt", 0], "seed": 3, "steps": 6, "cfg": 5.0, "sampler_name": "euler",
                          "scheduler": "normal", "positive": ["apply", 0], "negative": ["apply", 1],
                          "latent_image": ["lat", 0], "denoise": 1.0}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["ckpt", 2]}},
        "score": _score("rw", "dec"),
        "save": {"class_type": "PromptOptim_SaveIPGOTokens", "inputs": {"tokens": ["opt", 0], "name": "red_square"}},
    })
    comfy.run(graph)
    tokens, positive, negative = (comfy.node_outputs("opt")[i][0] for i in range(3))
    applied_pos, applied_neg = (comfy.node_outputs("apply")[i][0] for i in range(2))
    for a, b in ((applied_pos, positive), (applied_neg, negative)):
        assert torch.equal(a[0][0], b[0][0]) and torch.equal(a[0][1]["pooled_output"], b[0][1]["pooled_output"])
    best = float(tokens.info["best_reward"])
    rescored = float(comfy.node_outputs("score")[2][0])
    assert rescored == pytest.approx(best, rel=1e-3, abs=1e-5), (rescored, best)

    # save -> load is exact, metadata included
    file = comfy.node_outputs("save")[0][0]
    saved = base_dir / "models" / "ipgo_tokens" / file
    assert saved.is_file() and torch.equal(safetensors.torch.load_file(saved)["prefix"], tokens.prefix)
    comfy.run({"load": {"class_type": "PromptOptim_LoadIPGOTokens", "inputs": {"tokens_name": file}},
               "ckpt": graph["ckpt"],
               "apply": {"class_type": "PromptOptim_IPGOApply",
                         "inputs": {"clip": ["ckpt", 1], "tokens": ["load", 0], "text": PROMPT, "negative": ""}},
               "out": {"class_type": "PreviewAny", "inputs": {"source": ["apply", 0]}}})
    loaded = comfy.node_outputs("load")[0][0]
    assert torch.equal(loaded.prefix, tokens.prefix) and torch.equal(loaded.suffix, tokens.suffix)
    assert loaded.info == tokens.info
    assert torch.equal(comfy.node_outputs("apply")[0][0][0][0], positive[0][0])


def test_cancel_mid_run_returns_the_best_so_far(comfy, sd1_checkpoint):
    import comfy.model_management as mm

    comfy.run(optimize_graph(sd1_checkpoint.name, epochs=1))
    unet = comfy.node_outputs("ckpt")[0][0].model.diffusion_model
    calls, interrupt_at = [], []

    def hook(module, args, output):
        calls.append(1)
        if interrupt_at and len(calls) == interrupt_at[0]:
            mm.interrupt_current_processing(True)

    handle = unet.register_forward_hook(hook)
    try:
        comfy.run(optimize_graph(sd1_checkpoint.name, epochs=1, seed=4))
        per_epoch = len(calls)
        calls.clear()
        interrupt_at.append(2 * per_epoch + 2)  # inside the third epoch
        ui = comfy.run(optimize_graph(sd1_checkpoint.name, epochs=6, seed=5))
    finally:
        handle.remove()
        mm.interrupt_current_processing(False)
    tokens, report = comfy.node_outputs("opt")[0][0], comfy.node_outputs("opt")[5][0]
    assert "cancelled" in report and report.startswith("IPGO prompt-wise: 2 epochs")
    curve = [float(v) for v in report.splitlines()[1].split(": ", 1)[1].split(", ")]
    assert len(curve) == 2 and float(tokens.info["best_reward"]) == pytest.approx(max(curve), rel=1e-4)
    assert len(calls) <= 2 * per_epoch + 3, "the run stopped right after the cancel"
    assert ui["preview"]["images"], "the graph went on with the best images"


def test_batch_wise_on_a_prompt_list_then_apply_to_a_new_prompt(comfy, sd1_checkpoint):
    prompts = "a red square\na blue circle\na green triangle"
    graph = optimize_graph(sd1_checkpoint.name, prompts, epochs=2, accumulation=2)
    graph["apply"] = {"class_type": "PromptOptim_IPGOApply",
                      "inputs": {"clip": ["ckpt", 1], "tokens": ["opt", 0], "text": "a yellow star", "negative": ""}}
    graph["out"] = {"class_type": "PreviewAny", "inputs": {"source": ["apply", 0]}}
    comfy.run(graph)
    tokens, images, report = (comfy.node_outputs("opt")[i][0] for i in (0, 3, 5))
    assert report.startswith("IPGO batch-wise over 3 prompts: 2 epochs, 4 optimizer steps"), report
    assert "(last: several optimizer steps per epoch)" in report
    assert images.shape[0] == 3, "one image per prompt"
    assert tokens.info["prompts"] == '["a red square", "a blue circle", "a green triangle"]'
    positive = comfy.node_outputs("apply")[0][0][0][0]
    assert positive.shape == (1, 3 + 5 + 3, 768)  # BOS a yellow star EOS
    torch.testing.assert_close(positive[0, :3], tokens.prefix, rtol=0, atol=0)


def test_sdxl_tokens_span_both_encoders_and_pooled_stays_the_prompts(comfy, sdxl_checkpoint):
    graph = optimize_graph(sdxl_checkpoint.name, epochs=3, steps=4, prefix_tokens=2, suffix_tokens=2)
    comfy.run(graph)
    tokens, positive, report = (comfy.node_outputs("opt")[i][0] for i in (0, 1, 5))
    assert tokens.prefix.shape == (2, 2048) and tokens.info["family"] == "SDXL"
    clip = comfy.node_outputs("ckpt")[1][0]
    _, pooled = clip.encode_from_tokens(clip.tokenize(PROMPT), return_pooled=True)
    assert torch.equal(positive[0][1]["pooled_output"].to(pooled), pooled)
    curve = [float(v) for v in report.splitlines()[1].split(": ", 1)[1].split(", ")]
    assert max(curve[1:]) > curve[0], curve


@pytest.mark.parametrize("words, length", [(70, 72), (100, 104)])
def test_long_prompts_are_encoded_as_clip_text_encode_encodes_them(comfy, sd1_checkpoint, words, length):
    """70 words + BOS/EOS fit one window but not with the learned tokens; 100 words take two windows (the second
    cut after its EOS). The learned tokens go around ComfyUI's own states of the prompt."""
    text = "cat " * words
    comfy.run(optimize_graph(sd1_checkpoint.name, text, epochs=1, steps=3, prefix_tokens=2, suffix_tokens=3))
    positive, negative = (comfy.node_outputs("opt")[i][0] for i in (1, 2))
    clip = comfy.node_outputs("ckpt")[1][0]
    plain = clip.encode_from_tokens(clip.tokenize(text))
    empty = clip.encode_from_tokens(clip.tokenize(""))
    assert positive[0][0].shape[1] == 2 + length + 3
    torch.testing.assert_close(positive[0][0][:, 2:2 + length].to(plain), plain[:, :length], rtol=0, atol=0)
    assert not torch.equal(plain[:, length - 1], plain[:, length])  # the cut is at the last EOS, not in padding
    torch.testing.assert_close(negative[0][0].to(empty), empty, rtol=0, atol=0)  # uncut: no window to pad into


def test_bad_inputs_are_refused_with_the_node_and_input_named(comfy, sd1_checkpoint, sdxl_checkpoint):
    name = sd1_checkpoint.name
    assert "input 'prompts'" in _error(comfy, optimize_graph(name, "  \n "))
    with pytest.raises(InvalidGraph) as error:  # refused when queued (validate_inputs)
        comfy.run(optimize_graph(name, steps=4, last_steps=4))
    assert "input 'last_steps'" in "\n".join(error.value.details)
    with pytest.raises(InvalidGraph) as error:  # ComfyUI's own range check, kept for inputs validate_inputs takes
        comfy.run(optimize_graph(name, last_steps=0))
    assert "input 'last_steps'" in "\n".join(error.value.details)
    message = _error(comfy, optimize_graph(name, rank=1000))
    assert "input 'rank'" in message and "768" in message
    graph = optimize_graph(name)
    graph["xl"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sdxl_checkpoint.name}}
    graph["opt"]["inputs"]["clip"] = ["xl", 1]
    assert "input 'clip'" in _error(comfy, graph)

    load = {"load": {"class_type": "PromptOptim_LoadIPGOTokens", "inputs": {"tokens_name": "missing.safetensors"}},
            "out": {"class_type": "PreviewAny", "inputs": {"source": ["load", 0]}}}
    message = _error(comfy, load)
    assert "missing.safetensors" in message

    graph = optimize_graph(name, epochs=1)
    graph["xl"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sdxl_checkpoint.name}}
    graph["apply"] = {"class_type": "PromptOptim_IPGOApply",
                      "inputs": {"clip": ["xl", 1], "tokens": ["opt", 0], "text": PROMPT, "negative": ""}}
    graph["out"] = {"class_type": "PreviewAny", "inputs": {"source": ["apply", 0]}}
    message = _error(comfy, graph)
    assert "input 'tokens'" in message and "SD1.x" in message


def test_same_seeds_same_run(comfy, sd1_checkpoint):
    """Two runs that differ only in their number of epochs report the same rewards for their common epochs."""
    def curve(epochs):
        comfy.run(optimize_graph(sd1_checkpoint.name, epochs=epochs, seed=8, init_seed=2))
        report = comfy.node_outputs("opt")[5][0]
        return report.splitlines()[1].split(": ", 1)[1].split(", "), comfy.node_outputs("opt")[0][0]

    short, short_tokens = curve(2)
    long, _ = curve(3)
    assert long[:2] == short and len(long) == 3
    comfy.run(optimize_graph(sd1_checkpoint.name, epochs=2, seed=8, init_seed=3))
    assert not torch.equal(comfy.node_outputs("opt")[0][0].prefix, short_tokens.prefix), "init_seed matters"
