"""The GFlowNet rewriter node inside a real ComfyUI (in-process executor): list output, seeds, memory
manager, bad folders. The HTTP run of the example workflow is in test_workflows_http.py."""
import pytest

from devtools.prompt_rewriters import BAD, NAMES


def _graph(policy=NAMES["policy"], prompt="a cat", count=3, mode="sampling", seed=5) -> dict:
    return {"rw": {"class_type": "PromptOptim_GFlowNetRewriter",
                   "inputs": {"policy": policy, "prompt": prompt, "count": count, "mode": mode, "seed": seed,
                              "temperature": 1.0, "top_p": 0.9, "min_new_tokens": 3, "max_new_tokens": 8,
                              "diversity_penalty": 1.0, "template": "{prompt} Rephrase:\n", "dtype": "auto"}}}


def test_rewrites_are_a_list_equal_to_core_sampling_and_repeat_with_the_seed(comfy, pack, prompt_rewriters):
    import importlib

    package = pack.package
    core_rewrite = importlib.import_module(f"{package}.core.gfn_rewriter.rewrite")
    folder = importlib.import_module(f"{package}.core.gfn_rewriter.policy_folder")
    ui = comfy.run(_graph(prompt="a cat\nthe old house"))
    rewrites, text = comfy.node_outputs("rw")
    assert len(rewrites) == 6 and text == ["\n".join(rewrites)] and ui["rw"]["text"] == text
    model, tok = folder.load_policy(prompt_rewriters / NAMES["policy"])
    settings = core_rewrite.RewriteSettings(count=3, mode="sampling", seed=5, min_new_tokens=3, max_new_tokens=8,
                                            top_p=0.9)
    expected = core_rewrite.rewrite(model, tok, "a cat", settings) + core_rewrite.rewrite(model, tok, "the old house",
                                                                                         settings)
    assert rewrites == expected
    comfy.run(_graph(prompt="a cat\nthe old house", seed=6))
    assert comfy.node_outputs("rw")[0] != rewrites


def test_policy_is_held_by_comfyui_memory_manager(comfy, pack):
    import comfy.model_management as mm

    comfy.run(_graph(mode="diverse_beam_search", count=4))
    beams = comfy.node_outputs("rw")[0]
    assert len(beams) == 4 and len(set(beams)) == 4, beams
    held = [type(m.model.model.module).__name__ for m in mm.current_loaded_models
            if type(m.model.model).__name__ == "ModuleHolder"]
    assert "GPT2LMHeadModel" in held, held


@pytest.mark.parametrize("bad, missing", [(BAD["missing_tokenizer"], "has no tokenizer files"),
                                          (BAD["not_causal_lm"], "holds a GPT2Model (config.json), not a causal "
                                                                 "language model")])
def test_bad_folders_give_one_clear_error(comfy, bad, missing):
    with pytest.raises(Exception) as error:
        comfy.run(_graph(policy=bad))
    message = str(error.value)
    assert "input 'policy'" in message and bad.split("/")[-1] in message and missing in message, message


@pytest.mark.parametrize("change, input_name, words", [
    ({"template": "Rephrase:\n"}, "template", "must contain {prompt}"),
    ({"min_new_tokens": 9}, "min_new_tokens", "min_new_tokens <= max_new_tokens"),
])
def test_bad_settings_name_the_input(comfy, change, input_name, words):
    graph = _graph()
    graph["rw"]["inputs"].update(change)
    with pytest.raises(Exception) as error:
        comfy.run(graph)
    message = str(error.value)
    assert f"input '{input_name}'" in message and words in message, message


def test_unique_drops_repeated_rewrites_and_says_when_fewer_exist(comfy):
    graph = _graph(count=4)
    graph["rw"]["inputs"].update(temperature=0.05, top_p=0.05)  # greedy: every draw reads the same
    comfy.run(graph)
    repeated = comfy.node_outputs("rw")[0]
    assert len(repeated) == 4 and len(set(repeated)) == 1, repeated
    graph["rw"]["inputs"]["unique"] = True
    ui = comfy.run(graph)
    distinct = comfy.node_outputs("rw")[0]
    assert distinct == repeated[:1]
    assert "note: only 1 distinct rewrites of 'a cat' (asked for 4)" in ui["rw"]["text"][0]
    assert comfy.node_outputs("rw")[1] == [repeated[0]], "the text output holds the rewrites only"


def test_damaged_policy_weights_name_the_input_and_folder(comfy, base_dir):
    from devtools.weights import damaged_copy

    damaged = damaged_copy(base_dir / "models" / "prompt_rewriters" / NAMES["policy"], "prompt_optim_damaged_policy")
    with pytest.raises(Exception) as error:
        comfy.run(_graph(policy=damaged.name))
    message = str(error.value)
    assert "[GFlowNet Prompt Rewriter] input 'policy'" in message and str(damaged) in message, message
    assert "damaged or incomplete" in message


# --- published GPT-2 rewriters in their own layouts (pytorch_model.bin, vocab.json + merges.txt) and presets ---

def _preset_graph(layout: str, preset: str | None, mode: str = "sampling", template: str = "{prompt} Rephrase:\n"):
    graph = _graph(policy=NAMES[layout], prompt="a cat\nthe old house", mode=mode)
    graph["rw"]["inputs"]["template"] = template
    if preset is not None:
        graph["rw"]["inputs"]["template_preset"] = preset
    return graph


# what each preset must read and return, written out (not taken from the pack's table)
PRESETS = {"custom": ("{prompt} Rephrase:\n", False), "gflownet (authors)": ("{prompt} Rephrase:\n", False),
           "promptist": ("{prompt} Rephrase:", False), "magicprompt": ("{prompt}", True)}


@pytest.mark.parametrize("layout", ["promptist", "magicprompt"])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_published_layouts_run_with_each_preset(comfy, pack, prompt_rewriters, layout, preset):
    import importlib

    core_rewrite = importlib.import_module(f"{pack.package}.core.gfn_rewriter.rewrite")
    folder = importlib.import_module(f"{pack.package}.core.gfn_rewriter.policy_folder")
    comfy.run(_preset_graph(layout, preset, template="{prompt} Rephrase:\n"))
    rewrites = comfy.node_outputs("rw")[0]
    template, keep_prompt = PRESETS[preset]
    model, tok = folder.load_policy(prompt_rewriters / NAMES[layout])
    settings = core_rewrite.RewriteSettings(count=3, mode="sampling", seed=5, min_new_tokens=3, max_new_tokens=8,
                                            top_p=0.9, template=template, keep_prompt=keep_prompt)
    expected = [r for p in ("a cat", "the old house") for r in core_rewrite.rewrite(model, tok, p, settings)]
    assert rewrites == expected and len(rewrites) == 6
    firsts, seconds = rewrites[:3], rewrites[3:]
    if keep_prompt:
        assert all(r.startswith("a cat") and r != "a cat" for r in firsts), firsts
        assert all(r.startswith("the old house") for r in seconds), seconds
    else:  # the rewrite is the continuation only: the prompt and template are not echoed
        assert not any(r.startswith(("a cat", "Rephrase")) for r in firsts), firsts
        assert not any(r.startswith(("the old house", "Rephrase")) for r in seconds), seconds


def test_presets_read_as_their_templates_and_the_default_is_the_template_input(comfy):
    runs = {}
    for name, (preset, template) in {"omitted": (None, "{prompt} Rephrase:"),
                                     "custom": ("custom", "{prompt} Rephrase:"),
                                     "promptist": ("promptist", "ignored, no placeholder"),
                                     "gflownet": ("gflownet (authors)", "{prompt} Rephrase:"),
                                     "gflownet_custom": ("custom", "{prompt} Rephrase:\n")}.items():
        comfy.run(_preset_graph("promptist", preset, mode="diverse_beam_search", template=template))
        runs[name] = comfy.node_outputs("rw")[0]
    assert runs["omitted"] == runs["custom"] == runs["promptist"]  # saved workflows: the template input as before
    assert runs["gflownet"] == runs["gflownet_custom"] != runs["promptist"]
    assert not any(" Rephrase:" in r for r in runs["promptist"]), runs["promptist"]


def test_node_loads_a_published_layout_as_transformers_does(comfy, pack, prompt_rewriters):
    """The policy the node holds gives the logits of GPT2LMHeadModel.from_pretrained on the same .bin."""
    import importlib

    import torch
    from transformers import GPT2LMHeadModel

    nodes = importlib.import_module(f"{pack.package}.nodes.rewriter.nodes")
    comfy.run(_preset_graph("magicprompt", "magicprompt"))
    (patcher, tok), = nodes._loaded.values()
    held = patcher.model.module
    reference = GPT2LMHeadModel.from_pretrained(str(prompt_rewriters / NAMES["magicprompt"]), local_files_only=True,
                                                use_safetensors=False).eval()
    ids = torch.tensor([tok("a cat on the river").input_ids])
    with torch.no_grad():
        assert torch.equal(held(ids.to(held.device)).logits.cpu(), reference(ids).logits)


def test_damaged_pytorch_model_bin_names_the_input_and_folder(comfy, base_dir):
    from devtools.weights import damaged_copy

    damaged = damaged_copy(base_dir / "models" / "prompt_rewriters" / NAMES["promptist"],
                           "prompt_optim_damaged_bin_policy", weights="pytorch_model.bin")
    graph = _preset_graph("promptist", "promptist")
    graph["rw"]["inputs"]["policy"] = damaged.name
    with pytest.raises(Exception) as error:
        comfy.run(graph)
    message = str(error.value)
    assert "[GFlowNet Prompt Rewriter] input 'policy'" in message and str(damaged) in message, message
    assert "pytorch_model.bin cannot be read" in message and "damaged or incomplete" in message, message
