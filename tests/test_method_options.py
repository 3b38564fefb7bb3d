"""Compact method nodes with an options node (issue: at most about eight widgets per method node).

The compact nodes run the same code as the first nodes that showed every setting: with the settings moved
to the options node they give the same result bit for bit, and with no options node they run the
defaults. The first nodes stay registered (deprecated) with the inputs they had, so saved workflows load
with their values.
"""
import pytest
import torch

from devtools.inprocess import GraphError, InvalidGraph
from devtools.test_graphs import COMPACT_NODES, with_options_node
from test_date_nodes import date_graph
from test_gfn_rewriter_node import _graph as rewriter_graph
from test_ipgo_nodes import optimize_graph
from test_minority_nodes import minority_graph, sampler_graph

# the inputs of the first nodes, in their order: a saved workflow's widget values map onto them by position
FIRST_NODE_SETTINGS = {
    "PromptOptim_MinorityGuider": "cfg iterations lr optimize_fraction every_n_steps sg_lambda norm anneal "
                                  "fixed_level between_steps token_per_image diversity gradient_checkpointing "
                                  "measure_gain optimize anneal_level",
    "PromptOptim_MinoritySampler": "seed steps cfg sampler_name scheduler denoise iterations lr optimize_fraction "
                                   "every_n_steps sg_lambda norm anneal fixed_level between_steps token_per_image "
                                   "diversity gradient_checkpointing measure_gain optimize anneal_level",
    "PromptOptim_DATEGuider": "cfg rho rule schedule schedule_value iterations prior_weight decode_scale "
                              "reward_prompt",
    "PromptOptim_DATESampler": "seed steps cfg sampler_name scheduler denoise rho rule schedule schedule_value "
                               "iterations prior_weight decode_scale reward_prompt",
    "PromptOptim_IPGOOptimize": "prompts negative sampling_seed steps cfg sampler_name scheduler width height epochs "
                                "learning_rate lr_step lr_gamma accumulation prefix_tokens suffix_tokens rank "
                                "rotation conformity_weight last_steps clip_norm init_seed",
    "PromptOptim_GFlowNetRewriter": "policy prompt count mode seed temperature top_p min_new_tokens max_new_tokens "
                                    "diversity_penalty template dtype length_penalty unique template_preset",
}
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def _widgets(info: dict) -> list[str]:
    return [name for section in ("required", "optional") for name, spec in info["input"].get(section, {}).items()
            if isinstance(spec[0], list) or spec[0] in WIDGET_TYPES]


def test_method_nodes_show_at_most_eight_widgets_first_nodes_kept_deprecated(object_info):
    ours = {k: v for k, v in object_info.items() if k.startswith("PromptOptim_")}
    shown = {k: _widgets(v) for k, v in ours.items() if not v.get("deprecated") and not k.endswith("Options")}
    assert {k: w for k, w in shown.items() if len(w) > 8} == {}
    for first, settings in FIRST_NODE_SETTINGS.items():
        assert ours[first]["deprecated"] is True, first
        assert _widgets(ours[first]) == settings.split(), first
        compact, options = COMPACT_NODES[first]
        assert not ours[compact].get("deprecated") and not ours[options].get("deprecated")
        assert ours[compact]["display_name"] == ours[first]["display_name"]
        assert ours[compact]["input"]["optional"]["options"][0] == ours[options]["output"][0]
        # every setting is on the compact node or its options node, with the same default and tooltip
        split = {**ours[compact]["input"]["required"], **ours[compact]["input"]["optional"],
                 **ours[options]["input"]["required"], **ours[options]["input"].get("optional", {})}
        for name in settings.split():
            spec = {**ours[first]["input"]["required"], **ours[first]["input"].get("optional", {})}[name]
            assert split[name][1].get("default") == spec[1].get("default"), (first, name)
            assert split[name][1]["tooltip"] == spec[1]["tooltip"], (first, name)


def _cases(sd1):
    """(graph written for a first node, the node's id, how to read its result)."""
    latent = lambda comfy: comfy.node_outputs("sca")[0][0]["samples"]  # noqa: E731
    minority_sampler = sampler_graph(sd1, fraction=0.4, iterations=2, between_steps="original")
    minority_sampler["out"] = {"class_type": "SaveLatent", "inputs": {"samples": ["mks", 0], "filename_prefix": "m"}}
    return {
        "minority_guider": (minority_graph(sd1, steps=6, iterations=2, optimize_fraction=0.5, every_n_steps=2,
                                           measure_gain=False, anneal=False, fixed_level=0.6), "guider", latent),
        "minority_sampler": (minority_sampler, "mks",
                             lambda comfy: comfy.node_outputs("mks")[0][0]["samples"]),
        "date_guider": (date_graph(sd1, steps=6, batch=1, schedule="step_list", schedule_value="0, 2",
                                   rule="cumulative", iterations=1, prior_weight=0.5), "guider", latent),
        "ipgo": (optimize_graph(sd1, epochs=2, steps=4, prefix_tokens=2, suffix_tokens=1, rank=8),
                 "opt", lambda comfy: comfy.node_outputs("opt")[0][0].tensors()),
        "rewriter": (rewriter_graph(count=3, mode="sampling", seed=7), "rw", lambda comfy: comfy.node_outputs("rw")[0]),
    }


@pytest.mark.parametrize("case", ["minority_guider", "minority_sampler", "date_guider", "ipgo", "rewriter"])
def test_compact_node_with_its_options_equals_the_first_node(comfy, sd1_checkpoint, case):
    graph, node_id, result = _cases(sd1_checkpoint.name)[case]
    comfy.run(graph)
    first = result(comfy)
    comfy.run(with_options_node(graph, node_id, comfy.nodes.NODE_CLASS_MAPPINGS))
    compact = result(comfy)
    if isinstance(first, dict):
        assert first.keys() == compact.keys() and all(torch.equal(first[k], compact[k]) for k in first)
    elif isinstance(first, list):  # the rewriter's rewrites
        assert first == compact and len(first) == 3
    else:
        assert torch.equal(first, compact)


def test_compact_node_without_options_runs_the_defaults(comfy, sd1_checkpoint):
    """No options node = the first node with every option at its default (DATE: every 10th step)."""
    graph, node_id, _ = _cases(sd1_checkpoint.name)["date_guider"]
    defaults = {"rule": "cumulative", "schedule": "every_k_steps", "schedule_value": "10", "iterations": 1,
                "prior_weight": 0.0, "decode_scale": "1.0"}
    graph["guider"]["inputs"].update(defaults, steps=12)
    graph["sig"]["inputs"]["steps"] = 12
    comfy.run(graph)
    first = comfy.node_outputs("guider")[0][0].last_run
    assert [u[0] for u in first.updates] == [0, 10]
    first_latent = comfy.node_outputs("sca")[0][0]["samples"]
    comfy.run(with_options_node(graph, node_id, comfy.nodes.NODE_CLASS_MAPPINGS, connect=False))
    assert [u[0] for u in comfy.node_outputs("guider")[0][0].last_run.updates] == [0, 10]
    assert torch.equal(comfy.node_outputs("sca")[0][0]["samples"], first_latent)


def test_options_are_checked_on_the_options_node_when_queued(comfy, sd1_checkpoint):
    graph, node_id, _ = _cases(sd1_checkpoint.name)["date_guider"]
    graph["guider"]["inputs"]["schedule_value"] = "0-x"
    compact = with_options_node(graph, node_id, comfy.nodes.NODE_CLASS_MAPPINGS)
    with pytest.raises(InvalidGraph) as error:
        comfy.run(compact)
    assert list(error.value.node_errors) == ["guider_options"]
    assert "[DATE Options] input 'schedule_value'" in "\n".join(error.value.details)

    graph, node_id, _ = _cases(sd1_checkpoint.name)["minority_guider"]
    graph["guider"]["inputs"].update(diversity=1.0, token_per_image=False)
    with pytest.raises(InvalidGraph) as error:
        comfy.run(with_options_node(graph, node_id, comfy.nodes.NODE_CLASS_MAPPINGS))
    assert list(error.value.node_errors) == ["guider_options"]
    assert "[MinorityPrompt Options] input 'diversity'" in "\n".join(error.value.details)


def test_an_option_that_conflicts_with_the_method_node_says_where_it_is_set(comfy, sd1_checkpoint):
    graph, node_id, _ = _cases(sd1_checkpoint.name)["ipgo"]
    graph["opt"]["inputs"]["last_steps"] = 4  # not fewer than the node's steps (4): only known when both meet
    with pytest.raises(GraphError) as error:
        comfy.run(with_options_node(graph, node_id, comfy.nodes.NODE_CLASS_MAPPINGS))
    message = error.value.message["exception_message"]
    assert error.value.message["node_id"] == "opt"
    assert message.startswith("[IPGO Optimize Prompt Tokens] input 'last_steps': must be fewer than steps (4)")
    assert "(set on 'IPGO Options', connected to 'options')" in message
