"""The reward nodes inside a real ComfyUI (in-process executor): loader, combiner, scorer, memory manager."""
import pytest
import torch

from devtools.reward_models import NAMES
from test_rewards import BUNDLED_TOKENIZER

COLORS = [0xD03020, 0x2040C0, 0x20A040]


def _graph(family: str, weights: str, prompt="a red square", top_k=0, backbone="none", per_line=False) -> dict:
    graph = {
        "load": {"class_type": "PromptOptim_LoadRewardModel",
                 "inputs": {"family": family, "weights": weights, "clip_backbone": backbone,
                            "open_clip_architecture": "", "dtype": "auto"}},
        "score": {"class_type": "PromptOptim_ScoreImages",
                  "inputs": {"images": ["batch2", 0], "reward": ["load", 0], "prompt": prompt,
                             "prompt_per_line": per_line, "top_k": top_k}},
    }
    for i, color in enumerate(COLORS):
        graph[f"img{i}"] = {"class_type": "EmptyImage",
                            "inputs": {"width": 72 + 8 * i, "height": 64, "batch_size": 1, "color": color}}
    # different sizes cannot be batched: ImageBatch rescales the second image to the first's size
    graph["batch1"] = {"class_type": "ImageBatch", "inputs": {"image1": ["img0", 0], "image2": ["img1", 0]}}
    graph["batch2"] = {"class_type": "ImageBatch", "inputs": {"image1": ["batch1", 0], "image2": ["img2", 0]}}
    return graph


def _images(comfy) -> torch.Tensor:
    return comfy.node_outputs("batch2")[0][0]


@pytest.mark.parametrize("family", list(NAMES))
def test_loader_node_scores_equal_the_registry_model(comfy, pack, reward_models, family):
    backbone = NAMES["clip"] if family == "laion_aesthetic" else "none"
    ui = comfy.run(_graph(family, NAMES[family], backbone=backbone))
    images = _images(comfy)
    best, scores, mean, report = comfy.node_outputs("score")
    scores = torch.tensor(scores)
    kw = {"backbone_path": reward_models / NAMES["clip"]} if family == "laion_aesthetic" else {}
    reference = pack.core_rewards.load_reward(family, reward_models / NAMES[family],
                                              fallback_tokenizer_dir=BUNDLED_TOKENIZER, **kw)
    expected = reference(images.movedim(-1, 1), "a red square")
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-5)
    assert len(set(scores.tolist())) == 3, "different images should score differently"
    order = torch.argsort(expected, descending=True)
    assert torch.equal(best[0], images[order]), "best_images must be sorted by score, best first"
    assert mean[0] == pytest.approx(float(expected.mean()), abs=1e-5)
    assert f"image {int(order[0])}: " in ui["score"]["text"][0] and "mean" in report[0]


def test_reward_is_held_by_comfyui_memory_manager(comfy):
    import comfy.model_management as mm

    comfy.run(_graph("image_reward", NAMES["image_reward"], prompt="a cat"))
    reward = comfy.node_outputs("load")[0][0]
    loaded = [m.model for m in mm.current_loaded_models]
    assert all(p in loaded for p in reward.patchers)
    mm.unload_all_models()  # offloading must leave a usable reward behind
    assert reward.score(_images(comfy), ["a cat"] * 3).isfinite().all()


def test_gradient_through_a_loaded_reward_inside_inference_mode(comfy):
    comfy.run(_graph("clip", NAMES["clip"]))
    reward = comfy.node_outputs("load")[0][0]
    images = _images(comfy).movedim(-1, 1)
    with torch.inference_mode():  # as inside a node's execute
        with reward.ready(grad=True) as model, torch.enable_grad():
            x = images.clone().requires_grad_(True)
            model(x, "a red square").sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_combine_node_is_the_weighted_sum_of_score_nodes(comfy):
    graph = _graph("image_reward", NAMES["image_reward"])
    graph["load_clip"] = {"class_type": "PromptOptim_LoadRewardModel",
                          "inputs": {"family": "clip", "weights": NAMES["clip"], "clip_backbone": "none",
                                     "open_clip_architecture": "", "dtype": "auto"}}
    graph["combine"] = {"class_type": "PromptOptim_CombineRewards",
                        "inputs": {"reward_1": ["load", 0], "weight_1": 0.7, "reward_2": ["load_clip", 0],
                                   "weight_2": 0.3, "weight_3": 1.0, "weight_4": 1.0}}
    for name, source in (("score_ir", "load"), ("score_clip", "load_clip"), ("score", "combine")):
        graph[name] = dict(graph["score"], inputs=dict(graph["score"]["inputs"], reward=[source, 0]))
    comfy.run(graph)
    ir, clip, combined = (torch.tensor(comfy.node_outputs(n)[1]) for n in ("score_ir", "score_clip", "score"))
    torch.testing.assert_close(combined, 0.7 * ir + 0.3 * clip, rtol=0, atol=1e-6)


def test_prompt_per_line_gives_each_image_its_prompt(comfy):
    prompts = "a red square\na blue square\na green square"
    comfy.run(_graph("clip", NAMES["clip"], prompt=prompts, per_line=True))
    per_line = torch.tensor(comfy.node_outputs("score")[1])
    for i, prompt in enumerate(prompts.splitlines()):
        comfy.run(_graph("clip", NAMES["clip"], prompt=prompt))
        assert float(torch.tensor(comfy.node_outputs("score")[1])[i]) == pytest.approx(float(per_line[i]), abs=1e-6)


def test_top_k_keeps_the_best(comfy):
    comfy.run(_graph("image_reward", NAMES["image_reward"], top_k=1))
    best, scores = comfy.node_outputs("score")[:2]
    assert best[0].shape[0] == 1
    assert torch.equal(best[0][0], _images(comfy)[int(torch.tensor(scores).argmax())])


def test_errors_name_the_node_and_input(comfy):
    from devtools.inprocess import GraphError

    with pytest.raises(GraphError, match=r"\[Load Reward Model\] input 'clip_backbone'"):
        comfy.run(_graph("laion_aesthetic", NAMES["laion_aesthetic"]))
    with pytest.raises(GraphError, match=r"input 'weights': ImageReward: folder '.*prompt_optim_test_clip' lacks ImageReward.pt"):
        comfy.run(_graph("image_reward", NAMES["clip"]))
    with pytest.raises(GraphError, match=r"\[Score Images\] input 'prompt': the prompt is empty"):
        comfy.run(_graph("clip", NAMES["clip"], prompt="  "))
    with pytest.raises(GraphError, match=r"input 'prompt': got 2 prompts for 3 images"):
        comfy.run(_graph("clip", NAMES["clip"], prompt="a\nb", per_line=True))


def test_damaged_reward_files_are_named(comfy, base_dir):
    """A truncated weights file (an interrupted download), alone or inside a Hugging Face folder: the error
    names the node, the input and the file, not only the parser's complaint."""
    import safetensors.torch

    from devtools.inprocess import GraphError
    from devtools.weights import damaged_copy

    rewards = base_dir / "models" / "rewards"
    head = rewards / "prompt_optim_damaged_head.safetensors"
    safetensors.torch.save_file({"weight": torch.zeros(1, 64), "bias": torch.zeros(1)}, str(head))
    head.write_bytes(head.read_bytes()[: head.stat().st_size // 2])
    graph = _graph("laion_aesthetic", head.name, backbone=NAMES["clip"])
    with pytest.raises(GraphError) as error:
        comfy.run(graph)
    message = error.value.message["exception_message"]
    assert message.startswith("[Load Reward Model] input 'weights': ") and str(head) in message
    assert "damaged or incomplete" in message

    folder = damaged_copy(rewards / NAMES["clip"], "prompt_optim_damaged_clip")
    with pytest.raises(GraphError) as error:
        comfy.run(_graph("clip", folder.name))
    message = error.value.message["exception_message"]
    assert message.startswith("[Load Reward Model] input 'weights': ") and str(folder) in message


def test_score_node_reads_the_prompts_plain_words(comfy):
    comfy.run(_graph("clip", NAMES["clip"], prompt="a red square"))
    plain = comfy.node_outputs("score")[1]
    comfy.run(_graph("clip", NAMES["clip"], prompt="a (red:1.3) square embedding:some_token"))
    assert comfy.node_outputs("score")[1] == plain


def test_rewards_folder_is_registered_and_merged(comfy, pack, base_dir):
    import folder_paths

    paths = folder_paths.get_folder_paths("rewards")
    assert str(base_dir / "models" / "rewards") == paths[0]
    folder_paths.add_model_folder_path("rewards", "/elsewhere/rewards")  # as extra_model_paths.yaml would
    module = pack.reward_nodes.reward_folder.REWARDS
    module.register()
    assert folder_paths.get_folder_paths("rewards")[:2] == [str(base_dir / "models" / "rewards"), "/elsewhere/rewards"]
    assert set(NAMES.values()) <= set(module.list_entries())


def test_hpsv2_loads_through_the_node_with_an_open_clip_architecture(comfy, pack, base_dir, tmp_path):
    """HPS v2 is a bare open_clip state dict plus an architecture name; a tiny registered one stands in
    for ViT-H-14 (the full model is 1B parameters)."""
    open_clip = pytest.importorskip("open_clip")
    import json

    from test_open_clip_rewards import TINY, TINY_CONFIG

    (tmp_path / f"{TINY}.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(tmp_path)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY, pretrained=None)
    hps = base_dir / "models" / "rewards" / "HPS_v2_tiny_compressed.pt"
    torch.save({"state_dict": model.state_dict()}, hps)
    graph = _graph("hpsv2", hps.name)
    graph["load"]["inputs"]["open_clip_architecture"] = TINY
    comfy.run(graph)
    scores = torch.tensor(comfy.node_outputs("score")[1])
    reference = pack.core_rewards.load_reward("hpsv2", hps, architecture=TINY)
    torch.testing.assert_close(scores, reference(_images(comfy).movedim(-1, 1), "a red square"), rtol=0, atol=1e-5)
    graph["load"]["inputs"]["open_clip_architecture"] = "ViT-B-32"  # a real architecture that does not fit
    from devtools.inprocess import GraphError

    with pytest.raises(GraphError, match=r"input 'weights': .*does not match the model"):
        comfy.run(graph)
    graph["load"]["inputs"]["open_clip_architecture"] = ""
    with pytest.raises(GraphError, match=r"input 'open_clip_architecture': .*give its open_clip architecture name"):
        comfy.run(dict(graph, load=dict(graph["load"], inputs=dict(graph["load"]["inputs"], family="clip"))))


def test_reward_loads_together_with_the_diffusion_model(comfy, sd1_checkpoint):
    import comfy.model_management as mm

    comfy.run(_graph("clip", NAMES["clip"]))
    reward = comfy.node_outputs("load")[0][0]
    model, _, vae = comfy.load_checkpoint(sd1_checkpoint.name)
    mm.unload_all_models()
    with reward.ready(together_with=[model, vae.patcher]):
        loaded = [m.model for m in mm.current_loaded_models]
        assert model in loaded and vae.patcher in loaded and reward.patchers[0] in loaded
