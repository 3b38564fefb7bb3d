"""DATE inside a real ComfyUI (in-process executor) on the small SD1 and SDXL checkpoints.

The reward is the tiny random CLIP from devtools/reward_models.py: small, but a real differentiable
CLIP, so the reward gradient reaches the text embedding through VAE, UNet and CFG exactly as at scale.
"""
import sys

import pytest
import torch

from devtools.inprocess import GraphError, InvalidGraph
from devtools.reward_models import NAMES
from devtools.test_graphs import guided_sampling_graph, nan_latent_file
from devtools.weights import changed_keys, snapshot

PROMPT = "a red square"


def date_graph(ckpt: str, *, sampler="euler", scheduler="normal", steps=10, batch=2, seed=3, size=64,
               encode="PromptOptim_TextEncodeKeepText", reward="clip", **settings) -> dict:
    guider = {"rho": 0.5, "rule": "paper", "schedule": "every_k_steps", "schedule_value": "3", "iterations": 2,
              "prior_weight": 0.0, "decode_scale": "1.0", **settings}
    graph = guided_sampling_graph(
        ckpt, "PromptOptim_DATEGuider",
        {"model": ["ckpt", 0], "cfg": 7.5, "vae": ["ckpt", 2], "reward": ["rw", 0], **guider},
        {"class_type": encode, "inputs": {"clip": ["ckpt", 1], "text": PROMPT}},
        sampler=sampler, scheduler=scheduler, steps=steps, batch=batch, seed=seed, size=size, prefix="date")
    graph["rw"] = {"class_type": "PromptOptim_LoadRewardModel",
                   "inputs": {"family": reward, "weights": NAMES[reward], "clip_backbone": "none",
                              "open_clip_architecture": "", "dtype": "auto"}}
    return graph


def _run(comfy, graph):
    comfy.run(graph)
    return comfy.node_outputs("guider")[0][0], comfy.node_outputs("sca")[0][0]["samples"]


def _check_update_claims(guider, rho):
    run = guider.last_run
    assert run.updates, "no update ran"
    for step, sigma, (before, after) in run.updates:
        gain = after.rewards - before.rewards  # same state x, embedding before vs after one update
        predicted = rho * before.grad_norms  # first order: moving rho along g/|g| gains rho*|g|
        if step == run.updates[0][0]:  # highest noise: the reward depends most on the text
            ratio = gain / predicted
            assert (ratio > 0.5).all() and (ratio < 1.5).all(), (step, gain, predicted)
        sizeable = predicted > 1e-5
        assert (gain[sizeable] > 0).all(), (step, sigma, gain, predicted)
    distance = (run.final - run.reference).flatten(1).norm(dim=1)
    torch.testing.assert_close(distance, torch.full_like(distance, rho), rtol=1e-4, atol=1e-5)
    assert not torch.equal(run.final[0], run.final[1]), "each image must follow its own reward"


@pytest.mark.claim
def test_update_raises_the_reward_and_keeps_distance_rho_sd1(comfy, sd1_checkpoint):
    guider, _ = _run(comfy, date_graph(sd1_checkpoint.name))
    _check_update_claims(guider, 0.5)
    assert guider.method.reward_prompt == PROMPT, "the keep-text encode node carries the prompt to the reward"


def test_cumulative_rule_adds_updates(comfy, sd1_checkpoint):
    guider, _ = _run(comfy, date_graph(sd1_checkpoint.name, rule="cumulative", iterations=1, rho=0.2))
    run = guider.last_run
    distance = (run.final - run.reference).flatten(1).norm(dim=1)
    # four updates of norm 0.2 each: beyond 0.2 (the paper rule's distance), at most 0.8
    assert len(run.updates) == 4 and (distance > 0.25).all() and (distance <= 0.8 + 1e-4).all(), distance


@pytest.mark.parametrize("sampler, scheduler, schedule, value, expected", [
    ("euler", "normal", "every_k_steps", "3", [0, 3, 6, 9]),
    ("heun", "karras", "every_k_steps", "3", [0, 3, 6, 9]),  # two model calls per step, still one update
    ("dpmpp_2m", "normal", "percent_of_steps", "20", [0, 5]),
    ("euler_ancestral", "normal", "step_list", "1, 4-5, 40", [1, 4, 5]),
])
def test_reward_evaluations_equal_scheduled_updates(comfy, sd1_checkpoint, sampler, scheduler, schedule, value,
                                                    expected):
    graph = date_graph(sd1_checkpoint.name, sampler=sampler, scheduler=scheduler, schedule=schedule,
                       schedule_value=value, iterations=2, batch=1)
    guider, _ = _run(comfy, graph)
    run = guider.last_run
    assert run.planned == expected
    assert [u[0] for u in run.updates] == expected
    assert run.reward_evaluations == 2 * len(expected)


def test_sigma_range_schedule_selects_steps_by_noise_level(comfy, sd1_checkpoint):
    guider, _ = _run(comfy, date_graph(sd1_checkpoint.name, schedule="sigma_range", schedule_value="1.0-6.0",
                                       iterations=1, batch=1))
    run = guider.last_run
    assert run.updates and all(1.0 <= sigma <= 6.0 for _, sigma, _ in run.updates)
    assert run.reward_evaluations == len(run.updates) == len(run.planned)


def test_same_seed_same_image_and_inputs_untouched(comfy, sd1_checkpoint):
    graph = date_graph(sd1_checkpoint.name)
    _, first = _run(comfy, graph)
    first = first.clone()
    positive = comfy.node_outputs("pos")[0][0]
    negative = comfy.node_outputs("neg")[0][0]
    before = [(c.clone(), {k: v.clone() for k, v in d.items() if torch.is_tensor(v)}) for c, d in positive + negative]
    model = comfy.node_outputs("ckpt")[0][0]
    weights = snapshot(model.model)
    vae = comfy.node_outputs("ckpt")[2][0]
    vae_weights = snapshot(vae.first_stage_model)

    _run(comfy, date_graph(sd1_checkpoint.name, seed=4))  # something else in between
    _, again = _run(comfy, graph)
    assert torch.equal(first, again), "same seed and settings must give the same latent"

    for (c, d), (c0, d0) in zip(positive + negative, before):  # the user's conditioning, positive and negative
        assert torch.equal(c, c0) and all(torch.equal(d[k], v) for k, v in d0.items())
    assert changed_keys(model.model, weights) == []
    assert changed_keys(vae.first_stage_model, vae_weights) == []
    assert not model.get_additional_models(), "the user's ModelPatcher must not carry our extra models"


def test_reward_and_vae_are_loaded_by_comfyui_with_the_model(comfy, sd1_checkpoint):
    import comfy.model_management as mm

    guider, _ = _run(comfy, date_graph(sd1_checkpoint.name, batch=1))
    reward = comfy.node_outputs("rw")[0][0]
    vae = comfy.node_outputs("ckpt")[2][0]
    extra = guider.model_patcher.get_additional_models()
    assert vae.patcher in extra and all(p in extra for p in reward.patchers)
    loaded = [m.model for m in mm.current_loaded_models]
    assert vae.patcher in loaded and all(p in loaded for p in reward.patchers)


def test_schedule_without_updates_equals_ksampler(comfy, sd1_checkpoint, monkeypatch):
    # a schedule picking no step is refused (test_schedule_that_picks_no_step_is_refused); to compare the
    # sampling path itself, the plan is emptied here
    nodes_module = sys.modules[comfy.nodes.NODE_CLASS_MAPPINGS["PromptOptim_DATESampler"].__module__]
    step_cls = sys.modules[nodes_module.date_guider.__module__].DateStep
    planned = step_cls.planned_steps
    monkeypatch.setattr(step_cls, "planned_steps",
                        lambda self, sigmas: [] if self.schedule.value == "100" else planned(self, sigmas))
    graph = date_graph(sd1_checkpoint.name, batch=2)
    common = {"seed": 11, "steps": 6, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal",
              "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["lat", 0], "denoise": 1.0}
    graph["plain"] = {"class_type": "KSampler", "inputs": {"model": ["ckpt", 0], **common}}
    graph["date"] = {"class_type": "PromptOptim_DATESampler",
                     "inputs": {"model": ["ckpt", 0], **common, "vae": ["ckpt", 2], "reward": ["rw", 0], "rho": 0.5,
                                "rule": "paper", "schedule": "step_list", "schedule_value": "100",
                                "iterations": 1, "prior_weight": 0.0, "decode_scale": "1.0"}}
    graph["date_on"] = {"class_type": "PromptOptim_DATESampler",
                        "inputs": {**graph["date"]["inputs"], "schedule_value": "0-2", "rho": 5.0}}
    for name in ("plain", "date", "date_on"):
        graph[f"save_{name}"] = {"class_type": "SaveLatent", "inputs": {"samples": [name, 0], "filename_prefix": name}}
    comfy.run(graph)
    plain = comfy.node_outputs("plain")[0][0]["samples"]
    assert torch.equal(comfy.node_outputs("date")[0][0]["samples"], plain)
    assert not torch.equal(comfy.node_outputs("date_on")[0][0]["samples"], plain)
    report = comfy.node_outputs("date_on")[1][0]
    assert "3 updates at steps [0, 1, 2]" in report


def test_decode_scale_and_prior_weight_run_through(comfy, sd1_checkpoint):
    guider, _ = _run(comfy, date_graph(sd1_checkpoint.name, decode_scale="0.5", prior_weight=10.0,
                                       rule="cumulative", iterations=2, batch=1))
    assert guider.method.decode_scale == 0.5 and len(guider.last_run.updates) == 4
    # a reward gradient still arrives through the half-size decode
    assert all((rec.grad_norms > 0).all() for _, _, recs in guider.last_run.updates for rec in recs)


@pytest.mark.parametrize("change, input_name, words", [
    ({"encode": "CLIPTextEncode"}, "reward_prompt", "carries no text"),
])
def test_bad_settings_name_the_input(comfy, sd1_checkpoint, change, input_name, words):
    with pytest.raises(GraphError) as error:
        comfy.run(date_graph(sd1_checkpoint.name, **change))
    message = error.value.message["exception_message"]
    assert "[DATE Guider]" in message and f"input '{input_name}'" in message and words in message


@pytest.mark.parametrize("change, input_name, words", [
    ({"schedule_value": "every now and then"}, "schedule_value", "cannot read"),
    ({"schedule": "percent_of_steps", "schedule_value": "0"}, "schedule_value", "(0, 100]"),
    ({"schedule": "every_hour"}, "schedule", "is not one of"),  # ComfyUI's own option check, kept
])
def test_bad_schedule_is_refused_when_queued(comfy, sd1_checkpoint, change, input_name, words):
    with pytest.raises(InvalidGraph) as error:  # validate_inputs: nothing ran
        comfy.run(date_graph(sd1_checkpoint.name, **change))
    message = "\n".join(error.value.details)
    assert "[DATE Guider]" in message and f"input '{input_name}'" in message and words in message


def test_linked_schedule_value_is_still_checked_when_run(comfy, sd1_checkpoint):
    graph = date_graph(sd1_checkpoint.name)
    graph["value"] = {"class_type": "PrimitiveString", "inputs": {"value": "every now and then"}}
    graph["guider"]["inputs"]["schedule_value"] = ["value", 0]
    with pytest.raises(GraphError) as error:
        comfy.run(graph)
    message = error.value.message["exception_message"]
    assert "[DATE Guider]" in message and "input 'schedule_value'" in message and "cannot read" in message


def test_unsupported_family_is_refused(comfy, sd1_checkpoint, ip2p_unet):
    graph = date_graph(sd1_checkpoint.name)
    graph["unet"] = {"class_type": "UNETLoader", "inputs": {"unet_name": ip2p_unet.name, "weight_dtype": "default"}}
    graph["guider"]["inputs"]["model"] = ["unet", 0]
    with pytest.raises(GraphError) as error:
        comfy.run(graph)
    assert "input 'model'" in error.value.message["exception_message"]


def test_combined_positive_is_refused_with_a_clear_message(comfy, sd1_checkpoint):
    graph = date_graph(sd1_checkpoint.name, reward_prompt=PROMPT)
    graph["pos2"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a blue circle"}}
    graph["both"] = {"class_type": "ConditioningCombine",
                     "inputs": {"conditioning_1": ["pos", 0], "conditioning_2": ["pos2", 0]}}
    graph["guider"]["inputs"]["positive"] = ["both", 0]
    with pytest.raises(GraphError) as error:
        comfy.run(graph)
    # raised by the guider node itself, not later from the sampler
    assert error.value.message["node_id"] == "guider"
    message = error.value.message["exception_message"]
    assert message.startswith("[DATE Guider] input 'positive': ") and "2 entries" in message


@pytest.mark.parametrize("node, inputs, words", [
    ("ConditioningSetArea", {"width": 64, "height": 64, "x": 0, "y": 0, "strength": 1.0}, "an area"),
    ("ConditioningSetTimestepRange", {"start": 0.0, "end": 0.5}, "a timestep range (0-0.5)"),
])
def test_area_and_timestep_range_are_refused_at_the_guider(comfy, sd1_checkpoint, node, inputs, words):
    graph = date_graph(sd1_checkpoint.name, batch=1, steps=2, schedule_value="1")
    graph["limit"] = {"class_type": node, "inputs": {"conditioning": ["pos", 0], **inputs}}
    graph["guider"]["inputs"]["positive"] = ["limit", 0]
    with pytest.raises(GraphError) as error:
        comfy.run(graph)
    assert error.value.message["node_id"] == "guider"
    message = error.value.message["exception_message"]
    assert message.startswith("[DATE Guider] input 'positive': ") and words in message


def test_concatenated_positive_is_updated_whole(comfy, sd1_checkpoint):
    graph = date_graph(sd1_checkpoint.name, batch=1, steps=2, schedule_value="1", iterations=1)
    graph["more"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "black background"}}
    graph["concat"] = {"class_type": "ConditioningConcat",
                       "inputs": {"conditioning_to": ["pos", 0], "conditioning_from": ["more", 0]}}
    graph["guider"]["inputs"]["positive"] = ["concat", 0]
    guider, _ = _run(comfy, graph)
    run = guider.last_run
    assert run.reference.shape[1] == 154 and len(run.updates) == 2
    moved = (run.final - run.reference).flatten(2).norm(dim=2)[0]
    assert moved[:77].sum() > 0 and moved[77:].sum() > 0, "the update reaches both parts of the sequence"


def test_reward_reads_the_prompts_plain_words(comfy, sd1_checkpoint):
    """ComfyUI's weight syntax and embedding names never reach the reward: the reward at the first update
    equals the one with the plain words typed as reward_prompt (same state, same embedding)."""
    rewards = {}
    for name, text, reward_prompt in (("syntax", "a (red:1.3) square embedding:some_token", ""),
                                      ("typed", "a (red:1.3) square embedding:some_token", "a red square")):
        graph = date_graph(sd1_checkpoint.name, batch=1, steps=2, schedule_value="1", iterations=1,
                           reward_prompt=reward_prompt)
        graph["pos"]["inputs"]["text"] = text
        guider, _ = _run(comfy, graph)
        assert guider.method.reward_prompt == "a red square", name
        assert "reward text: 'a red square'" in guider.last_run.report("clip")
        rewards[name] = guider.last_run.updates[0][2][0].rewards
    torch.testing.assert_close(rewards["syntax"], rewards["typed"], rtol=0, atol=0)


def test_schedule_that_picks_no_step_is_refused(comfy, sd1_checkpoint):
    graph = date_graph(sd1_checkpoint.name, batch=1, steps=4, schedule="step_list", schedule_value="100")
    with pytest.raises(GraphError) as error:
        comfy.run(graph)
    message = error.value.message["exception_message"]
    assert "[DATE Guider] input 'schedule_value': " in message and "4 steps (0-3)" in message
    # partly beyond the run: the listed steps it has run, and the report names the others
    graph = date_graph(sd1_checkpoint.name, batch=1, steps=4, schedule="step_list", schedule_value="1, 100",
                       iterations=1)
    guider, _ = _run(comfy, graph)
    assert [u[0] for u in guider.last_run.updates] == [1]
    assert "listed steps [100] are beyond this run's 4 steps" in guider.last_run.report("clip")


def test_nan_latent_is_refused_naming_the_latent(comfy, sd1_checkpoint):
    graph = date_graph(sd1_checkpoint.name, batch=1, steps=2, schedule_value="1")
    graph["nan"] = {"class_type": "LoadLatent", "inputs": {"latent": nan_latent_file()}}
    graph["sca"]["inputs"]["latent_image"] = ["nan", 0]
    with pytest.raises(GraphError) as error:
        comfy.run(graph)
    message = error.value.message["exception_message"]
    assert "[DATE Guider] the sampler's input 'latent_image'" in message and "NaN or infinite" in message


def test_cancel_inside_the_update_loop(comfy, sd1_checkpoint):
    """Interrupt raised during the first reward evaluation stops sampling before the second one."""
    import comfy.model_management as mm

    graph = date_graph(sd1_checkpoint.name, batch=1, iterations=3)
    comfy.run(graph)
    guider = comfy.node_outputs("guider")[0][0]
    reward = guider.method.reward.reward
    calls = []

    def interrupt(module, args, output):
        calls.append(1)
        mm.interrupt_current_processing(True)

    handle = reward.register_forward_hook(interrupt)
    try:
        with pytest.raises(RuntimeError) as error:  # the executor reports execution_interrupted
            comfy.run(date_graph(sd1_checkpoint.name, batch=1, iterations=3, seed=99))
    finally:
        handle.remove()
        mm.interrupt_current_processing(False)
    assert "execution_interrupted" in str(error.value)
    assert len(calls) == 1, "the next inner iteration must notice the cancel"


@pytest.mark.slow
def test_sdxl_update_raises_the_reward_and_keeps_distance_rho(comfy, sdxl_checkpoint):
    guider, _ = _run(comfy, date_graph(sdxl_checkpoint.name))
    _check_update_claims(guider, 0.5)
    assert guider.last_run.reference.shape[-1] == 2048  # both encoders' token states; pooled stays as encoded
