"""MinorityPrompt inside a real ComfyUI (in-process executor) on the small SD1 and SDXL checkpoints.

The random test UNets depend only weakly on the text, so the objective moves little per iteration;
J is summed in float64 so those moves are still measured above rounding.
"""
import pytest
import torch

from devtools.inprocess import GraphError, InvalidGraph
from devtools.test_graphs import guided_sampling_graph, nan_latent_file
from devtools.weights import changed_keys, snapshot

PROMPT = "a red square"


def settings(**overrides) -> dict:
    return {"iterations": 4, "lr": 0.01, "optimize_fraction": 0.5, "every_n_steps": 2, "sg_lambda": 1.0,
            "norm": "plain", "anneal": True, "fixed_level": 0.75, "between_steps": "keep",
            "token_per_image": True, "diversity": 0.0, "gradient_checkpointing": False, "measure_gain": True,
            **overrides}


def minority_graph(ckpt: str, *, sampler="euler", scheduler="normal", steps=8, batch=2, seed=3, size=64, cfg=7.5,
                   init="word", position="end", model=None, **overrides) -> dict:
    graph = guided_sampling_graph(
        ckpt, "PromptOptim_MinorityGuider", {"model": model or ["ckpt", 0], "cfg": cfg, **settings(**overrides)},
        {"class_type": "PromptOptim_MinorityEncode",
         "inputs": {"clip": ["ckpt", 1], "text": PROMPT, "position": position, "init": init, "init_word": "cool",
                    "init_seed": 0}},
        sampler=sampler, scheduler=scheduler, steps=steps, batch=batch, seed=seed, size=size, prefix="minority")
    if model == "v_prediction":
        graph["msd"] = {"class_type": "ModelSamplingDiscrete",
                        "inputs": {"model": ["ckpt", 0], "sampling": "v_prediction", "zsnr": False}}
        graph["guider"]["inputs"]["model"] = ["msd", 0]
        graph["sig"]["inputs"]["model"] = ["msd", 0]
    return graph


def _run(comfy, graph):
    comfy.run(graph)
    return comfy.node_outputs("guider")[0][0], comfy.node_outputs("sca")[0][0]["samples"]


def _placeholder_index(clip) -> int:
    """Index of the end placeholder: right after the prompt's tokens (start token + prompt)."""
    ids = [t[0] for t in clip.tokenize(PROMPT)["l"][0]]
    return ids.index(49407, 1)


def _claims(comfy, guider, expected_steps):
    run = guider.last_run
    assert [s[0] for s in run.steps] == run.planned == expected_steps
    measurable = []
    for step, sigma, result in run.steps:
        # ascent: every Adam step moved the token along the gradient of J (first order gain > 0)
        assert all(g > 0 for g in result.predicted_gains), (step, result.predicted_gains)
        # the claim: after the inner iterations J is higher than before, on the same noise draws. Near
        # sigma 0 a random UNet ignores the text and the predicted change of J sinks below float32
        # rounding of the UNet's output (~1e-7 relative), where no direction can be measured.
        if sum(result.predicted_gains) > 1e-6 * float(result.before.mean()):
            measurable.append(step)
            assert (result.after > result.before).all(), (step, sigma, result.before, result.after)
    assert measurable and measurable[0] == expected_steps[0], "the noisiest step must show the gain"

    clip = comfy.node_outputs("ckpt")[1][0]
    original = comfy.node_outputs("pos")[0][0][0][0]
    final = run.conditioning.cross_attn.cpu()
    at = _placeholder_index(clip)
    # CLIP is causal: with the placeholder at the end, the prompt's own token states are unchanged
    torch.testing.assert_close(final[:, :at], original[:, :at].expand(final.shape[0], -1, -1), rtol=0, atol=1e-5)
    assert (final[:, at] - original[:, at]).abs().amax() > 1e-3, "the placeholder's state must differ"
    assert not torch.equal(run.token.vectors["l"][0], run.token.vectors["l"][1]), "one token per image"


@pytest.mark.slow
@pytest.mark.claim
def test_sd1_objective_rises_and_only_the_placeholder_changes(comfy, sd1_checkpoint):
    graph = minority_graph(sd1_checkpoint.name)
    guider, _ = _run(comfy, graph)
    _claims(comfy, guider, [0, 2])
    clip = comfy.node_outputs("ckpt")[1][0]
    model = comfy.node_outputs("ckpt")[0][0]
    clip_before, unet_before = snapshot(clip.cond_stage_model), snapshot(model.model)
    _run(comfy, minority_graph(sd1_checkpoint.name, seed=11))
    # every vocabulary row and every other weight of the user's CLIP and model is as loaded, bit for bit
    assert changed_keys(clip.cond_stage_model, clip_before) == []
    assert changed_keys(model.model, unet_before) == []
    assert not model.get_additional_models_with_key("prompt_optim_minority"), "the user's model gets no attachment"


@pytest.mark.slow
def test_sdxl_at_cfg_1_objective_rises_and_only_the_placeholder_changes(comfy, sdxl_checkpoint):
    """SDXL (both encoders, pooled output, size conditioning) as distilled few-step models run it: cfg 1."""
    # one optimized step of two (CLIP-G's backward costs most of this test's time)
    guider, _ = _run(comfy, minority_graph(sdxl_checkpoint.name, cfg=1.0, steps=2, optimize_fraction=0.5,
                                           every_n_steps=1, iterations=2))
    _claims(comfy, guider, [0])
    token = guider.last_run.token
    assert {k: v.shape[-1] for k, v in token.vectors.items()} == {"l": 768, "g": 1280}
    original_pooled = comfy.node_outputs("pos")[0][0][0][1]["pooled_output"]
    pooled = guider.last_run.conditioning.pooled.cpu()
    assert (pooled - original_pooled).abs().amax() > 1e-4, "SDXL's pooled output follows the placeholder"


def test_whole_embedding_ablation_moves_the_prompts_own_states_and_leaves_no_token(comfy, sd1_checkpoint):
    """The paper's ablation: the objective rises as with the token, but every position of C moves (the
    prompt's own token states too, which the appended token cannot touch), and there is no token to save."""
    guider, latent = _run(comfy, minority_graph(sd1_checkpoint.name, optimize="whole_embedding"))
    run = guider.last_run
    assert [s[0] for s in run.steps] == [0, 2]
    assert all(g > 0 for _, _, r in run.steps for g in r.predicted_gains)
    assert (run.steps[0][2].after > run.steps[0][2].before).all()
    clip = comfy.node_outputs("ckpt")[1][0]
    original = comfy.node_outputs("pos")[0][0][0][0]
    final = run.conditioning.cross_attn.cpu()
    at = _placeholder_index(clip)
    assert final.shape == (2, *original.shape[1:]), "one C per image, no placeholder position added"
    moved = (final[:, 1:at] - original[:, 1:at]).abs().amax(dim=-1)
    assert (moved > 1e-3).all(), "each of the prompt's own token states moves"
    assert not torch.equal(final[0], final[1]), "one embedding per image"
    assert run.token is None
    _, token_latent = _run(comfy, minority_graph(sd1_checkpoint.name))
    assert not torch.equal(latent, token_latent)


@pytest.mark.parametrize("sampler, scheduler, steps, fraction, every, expected", [
    ("euler", "normal", 10, 0.1, 1, [0]),  # the paper's first 10%
    ("heun", "karras", 8, 0.5, 2, [0, 2]),  # two model calls per step, still one optimization per step
    ("dpmpp_2m", "normal", 7, 1.0, 3, [0, 3, 6]),
    ("euler", "normal", 6, 0.0, 1, []),
])
def test_optimized_steps_match_the_settings(comfy, sd1_checkpoint, sampler, scheduler, steps, fraction, every,
                                            expected):
    graph = minority_graph(sd1_checkpoint.name, sampler=sampler, scheduler=scheduler, steps=steps, batch=1,
                           optimize_fraction=fraction, every_n_steps=every, iterations=2, measure_gain=False)
    guider, _ = _run(comfy, graph)
    run = guider.last_run
    assert run.planned == expected and [s[0] for s in run.steps] == expected
    assert all(len(r.objectives) == 2 for _, _, r in run.steps)


def test_v_prediction_model_is_optimized_too(comfy, sd1_checkpoint):
    guider, _ = _run(comfy, minority_graph(sd1_checkpoint.name, model="v_prediction", batch=1))
    assert [s[0] for s in guider.last_run.steps] == [0, 2]
    assert all((r.after > r.before).all() for _, _, r in guider.last_run.steps)


def test_same_seed_same_image_and_between_steps_setting(comfy, sd1_checkpoint):
    quick = dict(batch=1, iterations=2, measure_gain=False)
    graph = minority_graph(sd1_checkpoint.name, **quick)
    _, first = _run(comfy, graph)
    first = first.clone()
    _run(comfy, minority_graph(sd1_checkpoint.name, seed=5, **quick))
    _, again = _run(comfy, graph)
    assert torch.equal(first, again), "same seed and settings must give the same latent"
    _, reverted = _run(comfy, minority_graph(sd1_checkpoint.name, between_steps="original", **quick))
    assert not torch.equal(first, reverted), "reverting to the prompt between optimized steps changes the result"


def sampler_graph(ckpt: str, seed=3, fraction=0.5, batch=2, **overrides) -> dict:
    graph = minority_graph(ckpt, batch=batch)
    for key in ("guider", "noise", "ks", "sig", "sca"):
        graph.pop(key)
    graph.pop("save")
    node_settings = {k: v for k, v in overrides.items() if k in settings()}
    graph["mks"] = {"class_type": "PromptOptim_MinoritySampler",
                    "inputs": {"model": ["ckpt", 0], "seed": seed, "steps": 8, "cfg": 7.5, "sampler_name": "euler",
                               "scheduler": "normal", "positive": ["pos", 0], "negative": ["neg", 0],
                               "latent_image": ["lat", 0], "denoise": 1.0,
                               **settings(optimize_fraction=fraction, measure_gain=False, **node_settings)}}
    return graph


def test_sampler_node_without_optimized_steps_equals_ksampler(comfy, sd1_checkpoint):
    graph = sampler_graph(sd1_checkpoint.name, fraction=0.0)
    graph["ref"] = {"class_type": "KSampler",
                    "inputs": {"model": ["ckpt", 0], "seed": 3, "steps": 8, "cfg": 7.5, "sampler_name": "euler",
                               "scheduler": "normal", "positive": ["pos", 0], "negative": ["neg", 0],
                               "latent_image": ["lat", 0], "denoise": 1.0}}
    graph["out"] = {"class_type": "SaveLatent", "inputs": {"samples": ["mks", 0], "filename_prefix": "m"}}
    graph["out2"] = {"class_type": "SaveLatent", "inputs": {"samples": ["ref", 0], "filename_prefix": "r"}}
    comfy.run(graph)
    plain = comfy.node_outputs("mks")[0][0]["samples"]
    assert torch.equal(plain, comfy.node_outputs("ref")[0][0]["samples"])
    assert "no optimized step" in comfy.node_outputs("mks")[2][0]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_saved_embedding_reproduces_the_optimized_conditioning(comfy, pack, sd1_checkpoint, sdxl_checkpoint,
                                                               family):
    ckpt = (sd1_checkpoint if family == "sd1" else sdxl_checkpoint).name
    name = f"mp_roundtrip_{family}"
    # SD1: two optimized steps (the token carried from one to the next); SDXL: one (CLIP-G's backward is slow)
    graph = sampler_graph(ckpt, batch=2, iterations=2, fraction=0.25 if family == "sd1" else 0.125)
    graph["emb"] = {"class_type": "PromptOptim_SaveMinorityEmbedding",
                    "inputs": {"token": ["mks", 1], "name": name, "image_index": 1}}
    comfy.run(graph)
    usage = comfy.node_outputs("emb")[0][0]
    token = comfy.node_outputs("mks")[1][0]
    saved = usage.split("embedding:")[1]
    assert usage == f"{PROMPT} embedding:{saved}" and saved.startswith(name)

    clip = comfy.node_outputs("ckpt")[1][0]
    # exactly what CLIP Text Encode does with the text; the tokenizer finds the file in models/embeddings
    loaded = clip.encode_from_tokens_scheduled(clip.tokenize(usage))[0]
    # what the guider encodes with image 1's token, through the same differentiable path
    learnable = pack.text_encoder.LearnableTokens({k: v[1:2] for k, v in token.vectors.items()}, "end")
    expected = pack.comfy_text_encoder.ComfyTextEncoder(clip).encode(PROMPT, learnable)
    torch.testing.assert_close(loaded[0].float(), expected.cross_attn.detach().cpu().float(), rtol=0, atol=1e-5)
    if family == "sdxl":
        torch.testing.assert_close(loaded[1]["pooled_output"].float(), expected.pooled.detach().cpu().float(),
                                   rtol=0, atol=1e-5)


def test_cancel_inside_the_inner_loop(comfy, sd1_checkpoint):
    import comfy.model_management as mm

    graph = minority_graph(sd1_checkpoint.name, batch=1, iterations=5, measure_gain=False)
    comfy.run(graph)
    unet = comfy.node_outputs("ckpt")[0][0].model.diffusion_model
    calls = []

    def interrupt(module, args, output):
        calls.append(1)
        mm.interrupt_current_processing(True)

    handle = unet.register_forward_hook(interrupt)
    try:
        with pytest.raises(RuntimeError) as error:
            comfy.run(minority_graph(sd1_checkpoint.name, batch=1, iterations=5, measure_gain=False, seed=99))
    finally:
        handle.remove()
        mm.interrupt_current_processing(False)
    assert "execution_interrupted" in str(error.value)
    # 5 iterations would make 10 UNet calls; the cancel is seen within iteration 0 (ComfyUI checks before
    # each model call) or, at the latest, before iteration 1
    assert 1 <= len(calls) <= 2, calls


@pytest.mark.claim
def test_likelihood_ranks_a_sample_noised_far_from_the_data_lower(comfy, pack, sd1_checkpoint):
    """The random UNet predicts about zero; read as v-prediction that is the exact denoiser of N(0, I) data
    (x0_hat = x / (sigma^2 + 1)), so the model's own samples are data and heavily noised ones are not."""
    graph = minority_graph(sd1_checkpoint.name, model="v_prediction", batch=3)
    graph["lik"] = {"class_type": "PromptOptim_DenoisingLikelihood",
                    "inputs": {"model": ["msd", 0], "positive": ["pos", 0], "samples": ["sca", 0], "evaluation_seed": 0,
                               "levels": 8}}
    graph["guider"]["inputs"]["optimize_fraction"] = 0.0  # plain sampling: the model's own samples
    comfy.run(graph)
    close = comfy.node_outputs("lik")[0]
    assert len(close) == 3 and all(torch.isfinite(torch.tensor(close)))
    samples = comfy.node_outputs("sca")[0][0]["samples"]
    scale = 0.18215  # SD1 latent scale: model space = raw latent * scale
    far = samples + 2.0 / scale * torch.randn(samples.shape, generator=torch.Generator().manual_seed(1))
    lik_class = pack.likelihood_node.DenoisingLikelihood
    model = comfy.node_outputs("msd")[0][0]
    positive = comfy.node_outputs("pos")[0][0]
    out_far = lik_class.execute(model, positive, {"samples": far}, 0, 8)
    out_close = lik_class.execute(model, positive, {"samples": samples}, 0, 8)
    assert out_close.result[0] == close, "fixed seed: the same scores again"
    assert all(f < c for f, c in zip(out_far.result[0], close)), (out_far.result[0], close)


def _error(comfy, graph) -> str:
    with pytest.raises(GraphError) as error:
        comfy.run(graph)
    return error.value.message["exception_message"]


def test_bad_inputs_are_refused_with_the_node_and_input_named(comfy, sd1_checkpoint, ip2p_unet):
    name = sd1_checkpoint.name
    graph = minority_graph(name)
    graph["pos"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": PROMPT}}
    message = _error(comfy, graph)
    assert "MinorityPrompt Guider" in message and "input 'positive'" in message and "placeholder" in message

    graph = minority_graph(name)
    graph["pos"]["inputs"]["init_word"] = "qwzxvkj"
    message = _error(comfy, graph)
    assert "input 'init_word'" in message and "one token" in message

    graph = minority_graph(name)
    graph["pos"]["inputs"]["text"] = "  "
    assert "input 'text'" in _error(comfy, graph)

    graph = minority_graph(name, position="start")
    graph["pos"]["inputs"]["text"] = "a " * 75  # fills CLIP's first window: no room for a start placeholder
    message = _error(comfy, graph)
    assert "input 'text'" in message and "use position end" in message

    with pytest.raises(InvalidGraph) as error:  # refused when queued (validate_inputs)
        comfy.run(minority_graph(name, token_per_image=False, diversity=0.5))
    assert "input 'diversity'" in "\n".join(error.value.details)
    with pytest.raises(InvalidGraph) as error:  # ComfyUI's own range check, kept for inputs validate_inputs takes
        comfy.run(minority_graph(name, diversity=-1.0))
    assert "input 'diversity'" in "\n".join(error.value.details)

    graph = minority_graph(name)
    graph["unet"] = {"class_type": "UNETLoader", "inputs": {"unet_name": ip2p_unet.name, "weight_dtype": "default"}}
    graph["guider"]["inputs"]["model"] = ["unet", 0]
    assert "input 'model'" in _error(comfy, graph)

    graph = sampler_graph(name, fraction=0.5, batch=1, iterations=1)
    graph["emb"] = {"class_type": "PromptOptim_SaveMinorityEmbedding",
                    "inputs": {"token": ["mks", 1], "name": "../outside", "image_index": 0}}
    assert "input 'name'" in _error(comfy, graph)
    graph["emb"]["inputs"].update(name="fine", image_index=3)
    assert "input 'image_index'" in _error(comfy, graph)


def _short_run(ckpt: str, **overrides) -> dict:
    """Two steps, one optimized with one iteration: enough to see what the guider does with its positive."""
    return minority_graph(ckpt, steps=2, batch=1, **{"optimize_fraction": 0.5, "every_n_steps": 1, "iterations": 1,
                                                     "measure_gain": False, **overrides})


@pytest.mark.parametrize("words", [75, 76, 1000])
def test_any_prompt_length_runs_with_an_end_placeholder(comfy, sd1_checkpoint, words):
    """75 words fill the window (the placeholder opens a window of its own), 76 spill into a second one
    (the placeholder joins it), 1000 run over 14 windows, like CLIP Text Encode."""
    graph = _short_run(sd1_checkpoint.name)
    graph["pos"]["inputs"]["text"] = "a " * words
    guider, _ = _run(comfy, graph)
    windows = -(-words // 75) + (1 if words % 75 == 0 else 0)
    run = guider.last_run
    assert len(run.steps) == 1 and run.conditioning.cross_attn.shape[1] == 77 * windows
    prompt = comfy.node_outputs("pos")[0][0][0][0]
    assert prompt.shape[1] == 77 * -(-words // 75)
    # the prompt's own windows are untouched (causal CLIP, separate windows); the placeholder's differs
    last = prompt.shape[1] - 77 if words % 75 else prompt.shape[1]
    torch.testing.assert_close(run.conditioning.cross_attn[:, :last].cpu(), prompt[:, :last], rtol=0, atol=1e-5)


def test_concatenated_conditioning_is_carried_through_optimization(comfy, sd1_checkpoint):
    graph = _short_run(sd1_checkpoint.name, optimize_fraction=1.0)
    graph["more"] = {"class_type": "CLIPTextEncode",
                     "inputs": {"clip": ["ckpt", 1], "text": "blue square, black background"}}
    graph["concat"] = {"class_type": "ConditioningConcat",
                       "inputs": {"conditioning_to": ["pos", 0], "conditioning_from": ["more", 0]}}
    graph["guider"]["inputs"]["positive"] = ["concat", 0]
    guider, _ = _run(comfy, graph)
    run = guider.last_run
    concatenated = comfy.node_outputs("more")[0][0][0][0]
    optimized = run.conditioning.cross_attn.cpu()
    assert len(run.steps) == 2 and optimized.shape[1] == 154
    torch.testing.assert_close(optimized[:, 77:], concatenated, rtol=0, atol=0)
    at = _placeholder_index(comfy.node_outputs("ckpt")[1][0])
    original = comfy.node_outputs("pos")[0][0][0][0]
    assert (optimized[:, at] - original[:, at]).abs().amax() > 1e-4, "the placeholder was optimized"


@pytest.mark.parametrize("node, inputs, words", [
    ("ConditioningSetTimestepRange", {"start": 0.0, "end": 0.5}, "a timestep range (0-0.5)"),
    ("ConditioningSetArea", {"width": 64, "height": 64, "x": 0, "y": 0, "strength": 1.0}, "an area"),
    ("ConditioningSetMask", {"mask": ["mask", 0], "strength": 1.0, "set_cond_area": "default"}, "a mask"),
    ("ConditioningCombine", {}, "2 entries"),
    ("ConditioningAverage", {"conditioning_to_strength": 0.5}, "not the ones the encode node produced"),
])
def test_conditioning_the_guider_cannot_honour_is_refused_at_the_guider(comfy, sd1_checkpoint, node, inputs, words):
    graph = _short_run(sd1_checkpoint.name, optimize_fraction=1.0)
    graph["other"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a blue circle"}}
    graph["mask"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}}
    links = {"ConditioningCombine": {"conditioning_1": ["pos", 0], "conditioning_2": ["other", 0]},
             "ConditioningAverage": {"conditioning_to": ["pos", 0], "conditioning_from": ["other", 0]}}
    graph["limit"] = {"class_type": node, "inputs": {**links.get(node, {"conditioning": ["pos", 0]}), **inputs}}
    graph["guider"]["inputs"]["positive"] = ["limit", 0]
    with pytest.raises(GraphError) as error:
        comfy.run(graph)
    assert error.value.message["node_id"] == "guider", "raised by the guider node, not later by the sampler"
    message = error.value.message["exception_message"]
    assert message.startswith("[MinorityPrompt Guider] input 'positive': ") and words in message


def test_nan_latent_is_refused_naming_the_input(comfy, sd1_checkpoint):
    graph = sampler_graph(sd1_checkpoint.name, fraction=0.5, batch=1, iterations=1)
    graph["nan"] = {"class_type": "LoadLatent", "inputs": {"latent": nan_latent_file()}}
    graph["mks"]["inputs"]["latent_image"] = ["nan", 0]
    graph["out"] = {"class_type": "SaveLatent", "inputs": {"samples": ["mks", 0], "filename_prefix": "nan"}}
    message = _error(comfy, graph)
    assert message.startswith("[MinorityPrompt KSampler] input 'latent_image': ") and "1 NaN or infinite" in message
