"""The ComfyUI adapters, run inside a real ComfyUI (in this process) on the small SD1.x checkpoint."""
import math
import re

import pytest
import torch

from devtools.weights import changed_keys, snapshot

PROMPT = "a red circle on a blue background"
TOLERANCE = 1e-2  # float32 central differences agree to ~1e-4 here; a wrong gradient is off by O(1)


def test_the_loaded_pack_and_the_tests_share_one_core(pack):
    """One import identity: the nodes ComfyUI loaded use the very core modules the tests import."""
    import core.rewards
    import core.shared.conditioning
    import core.shared.prediction

    assert pack.prediction is core.shared.prediction and pack.core_rewards is core.rewards
    assert pack.comfy_denoiser.PredictionType is core.shared.prediction.PredictionType
    assert pack.comfy_denoiser.TextConditioning is core.shared.conditioning.TextConditioning
    assert pack.comfy_reward.__name__.endswith("prompt-optim.nodes.comfy.reward")  # nodes: ComfyUI's package


def gradient_check_graph(ckpt_name, prompt=PROMPT, loader=None):
    loader = loader or {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}}
    return {
        "1": loader,
        "2": {"class_type": "PromptOptim_GradientCheck",
              "inputs": {"model": ["1", 0], "clip": ["1", 1], "prompt": prompt, "noise_level": 0.5, "seed": 3}},
    }


def test_gradients_match_finite_differences_inside_a_node(comfy, sd1_checkpoint):
    """(i) a learnable token through the SD1.x CLIP, (ii) the conditioning through the denoiser's x0,
    both computed by our node during a real graph execution (ComfyUI runs nodes in inference mode)."""
    ui = comfy.run(gradient_check_graph(sd1_checkpoint.name))
    out = comfy.node_outputs("2")
    token_error, cond_error = out[3][0], out[4][0]
    report = ui["2"]["text"][0]
    assert "family: SD1.x" in report
    assert token_error < TOLERANCE, report
    assert cond_error < TOLERANCE, report
    # Non-trivial derivatives: an all-zero gradient would also "agree" with a flat function.
    derivatives = [float(d) for d in re.findall(r"autograd (\S+),", report)]
    assert len(derivatives) == 2 and all(abs(d) > 1e-6 for d in derivatives), report


def _plain_graph(ckpt_name, model_src, clip_src, ids):
    a, b, c, d, e = ids
    return {
        a: {"class_type": "CLIPTextEncode", "inputs": {"clip": clip_src, "text": PROMPT}},
        b: {"class_type": "CLIPTextEncode", "inputs": {"clip": clip_src, "text": "blurry"}},
        c: {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        d: {"class_type": "KSampler", "inputs": {"model": model_src, "positive": [a, 0], "negative": [b, 0],
                                                  "latent_image": [c, 0], "seed": 7, "steps": 3, "cfg": 7.5,
                                                  "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        e: {"class_type": "SaveLatent", "inputs": {"samples": [d, 0], "filename_prefix": "unchanged_check"}},
    }


def test_users_model_and_clip_are_unchanged(comfy, sd1_checkpoint):
    loader = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sd1_checkpoint.name}}}
    comfy.run({**loader, **_plain_graph(sd1_checkpoint.name, ["1", 0], ["1", 1], ["3", "4", "5", "6", "9"])})
    cond_before = comfy.node_outputs("3")[0][0][0][0].clone()
    latent_before = comfy.node_outputs("6")[0][0]["samples"].clone()
    model, clip = comfy.node_outputs("1")[0][0], comfy.node_outputs("1")[1][0]
    model_bits, clip_bits = snapshot(model.model), snapshot(clip.cond_stage_model)
    tensors = {("model", k): v for k, v in model.model.state_dict(keep_vars=True).items()}
    tensors.update({("clip", k): v for k, v in clip.cond_stage_model.state_dict(keep_vars=True).items()})

    # Same loader (cached: the very same objects), our node first, then a plain encode + sample.
    graph = {**loader, **gradient_check_graph(sd1_checkpoint.name)}
    graph.update(_plain_graph(sd1_checkpoint.name, ["2", 0], ["2", 1], ["13", "14", "15", "16", "19"]))
    comfy.run(graph)
    assert comfy.node_outputs("2")[0][0] is model and comfy.node_outputs("2")[1][0] is clip
    assert torch.equal(comfy.node_outputs("13")[0][0][0][0], cond_before)
    assert torch.equal(comfy.node_outputs("16")[0][0]["samples"], latent_before)

    after = {("model", k): v for k, v in model.model.state_dict(keep_vars=True).items()}
    after.update({("clip", k): v for k, v in clip.cond_stage_model.state_dict(keep_vars=True).items()})
    assert after.keys() == tensors.keys()
    # bit-exact (NaN-safe: SD1 checkpoints leave clip_l's text_projection as uninitialized memory)
    assert changed_keys(model.model, model_bits) == [] and changed_keys(clip.cond_stage_model, clip_bits) == []
    # The original tensors are back in place (not our autograd copies) ...
    assert [k for k, v in after.items() if v is not tensors[k]] == []
    # ... and no CLIP layer keeps our out-of-place forward.
    assert not any("forward" in m.__dict__ for m in clip.cond_stage_model.modules())


@pytest.mark.parametrize("prompt, loader, input_name, words", [
    ("   ", None, "prompt", "empty"),
    (PROMPT, {"class_type": "UNETLoader", "inputs": {"unet_name": "IP2P", "weight_dtype": "default"}},
     "model", "not supported"),
])
def test_bad_input_names_node_and_input(comfy, sd1_checkpoint, ip2p_unet, prompt, loader, input_name, words):
    from devtools.inprocess import GraphError

    graph = gradient_check_graph(sd1_checkpoint.name, prompt)
    if loader:
        loader["inputs"]["unet_name"] = ip2p_unet.name
        graph["1"] = loader
        graph["0"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sd1_checkpoint.name}}
        graph["2"]["inputs"]["clip"] = ["0", 1]
    with pytest.raises(GraphError) as error:
        comfy.run(graph)
    message = error.value.message["exception_message"]
    assert "[Gradient Check]" in message and f"input '{input_name}'" in message
    assert words in message


@pytest.fixture(scope="module")
def sd1(comfy, sd1_checkpoint):
    model, clip, vae = comfy.load_checkpoint(sd1_checkpoint.name)
    return model, clip


def _plain(clip, text):
    with torch.inference_mode():
        return clip.encode_from_tokens(clip.tokenize(text))


def test_spliced_word_embedding_reproduces_the_word(pack, sd1):
    _, clip = sd1
    encoder = pack.comfy_text_encoder.ComfyTextEncoder(clip)
    Learnable = pack.text_encoder.LearnableTokens
    with torch.inference_mode():
        cat = encoder.word_embeddings("l", "cat")
        a = encoder.word_embeddings("l", "a")
        at_end = encoder.encode("a photo of a", Learnable({"l": cat}, "end")).cross_attn
        at_start = encoder.encode("photo of a cat", Learnable({"l": a}, "start")).cross_attn
    reference = _plain(clip, "a photo of a cat")
    assert cat.shape == (1, 768)
    torch.testing.assert_close(at_end, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(at_start, reference, atol=1e-5, rtol=1e-5)


def test_end_token_changes_only_later_positions_and_gets_gradient(pack, sd1):
    _, clip = sd1
    encoder = pack.comfy_text_encoder.ComfyTextEncoder(clip)
    vocab_before = encoder.vocabulary("l")
    token = torch.randn(1, 768, generator=torch.Generator().manual_seed(0)) * 0.05
    with torch.inference_mode(False):
        token.requires_grad_(True)
        with encoder:
            out = encoder.encode("a photo of a", pack.text_encoder.LearnableTokens({"l": token}))
        out.cross_attn.square().sum().backward()
    plain = _plain(clip, "a photo of a")
    # BOS + 4 prompt tokens come before the placeholder: CLIP is causal, so they are unchanged.
    torch.testing.assert_close(out.cross_attn[:, :5], plain[:, :5], atol=1e-5, rtol=1e-5)
    assert (out.cross_attn[:, 5] - plain[:, 5]).abs().max() > 1e-3
    assert token.grad is not None and token.grad.abs().sum() > 0
    assert torch.equal(encoder.vocabulary("l"), vocab_before)


def test_full_window_end_token_opens_a_window_start_token_is_refused(pack, sd1):
    _, clip = sd1
    encoder = pack.comfy_text_encoder.ComfyTextEncoder(clip)
    vector = torch.ones(1, 768)
    plain = clip.tokenize("cat " * 75)["l"]
    chunks = encoder.tokens("cat " * 75, pack.text_encoder.LearnableTokens({"l": vector}))["l"]
    assert chunks[0] == plain[0] and len(chunks) == 2 and len(chunks[1]) == 77  # the vector entry holds 1 row
    start, entry, end = chunks[1][:3]
    assert start[0] == 49406 and entry[0] is vector and end[0] == 49407
    with pytest.raises(ValueError, match="no room"):
        encoder.tokens("cat " * 75, pack.text_encoder.LearnableTokens({"l": vector}, "start"))
    with pytest.raises(ValueError, match="768-wide"):
        encoder.tokens("cat", pack.text_encoder.LearnableTokens({"l": torch.zeros(1, 1024)}))


def test_denoiser_x0_equals_the_models_own_apply_model(pack, sd1):
    model, clip = sd1
    cond = None
    with torch.inference_mode():
        cond = clip.encode_from_tokens(clip.tokenize(PROMPT))
    latent = torch.zeros(1, 4, 8, 8)
    gen = torch.Generator().manual_seed(1)
    with torch.inference_mode(False), torch.enable_grad():
        with pack.comfy_denoiser.prepared_denoiser(model, [[cond, {}]], latent) as (denoiser, scope):
            sigma = denoiser.sigma_at(0.6)
            x = denoiser.renoise(torch.randn(latent.shape, generator=gen), sigma, torch.randn(latent.shape, generator=gen))
            c = cond.clone()
            ours = denoiser.predict_x0(x, sigma, pack.conditioning.TextConditioning(c))
            assert scope.extra_bytes == 0 and scope.aliased_bytes > 0  # shared, not copied
            reference = model.model.apply_model(x, torch.tensor([sigma]), c_crossattn=c)
    assert denoiser.prediction is pack.prediction.PredictionType.EPS
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    assert abs(denoiser.fraction_of(sigma) - 0.6) < 2e-3
    assert denoiser.sigma_at(1.0) == pytest.approx(float(model.model.model_sampling.sigma_max))


def test_sdxl_gradients_through_both_encoders_and_pooled_output(comfy, sdxl_checkpoint):
    """SDXL: one learnable vector per encoder (768 + 1280), the pooled output in the objective.

    Last in this file: loading the 2 GB SDXL makes ComfyUI's memory manager reshuffle the SD1 models,
    which the unchanged-model test above must not see (see the issue notes)."""
    ui = comfy.run(gradient_check_graph(sdxl_checkpoint.name))
    out = comfy.node_outputs("2")
    report = ui["2"]["text"][0]
    assert "family: SDXL" in report
    assert out[3][0] < TOLERANCE, report
    # The 10-block random SDXL UNet curves more: its finite difference carries ~6e-3 truncation error.
    assert out[4][0] < 2 * TOLERANCE, report


@pytest.mark.parametrize("typed, words", [
    ("a (red:1.3) circle", "a red circle"),
    ("((blue)) square, (yellow background:0.8)", "blue square, yellow background"),
    ("a red circle embedding:chain_tok", "a red circle"),
    ("embedding:style, a cat", "a cat"),
    ("a cat, embedding:style.safetensors, red", "a cat, red"),
    ("a \\(tiny\\) cat", "a (tiny) cat"),  # escaped parentheses are literal text in ComfyUI
    ("no syntax at all", "no syntax at all"),
])
def test_rewards_read_the_prompts_plain_words(pack, typed, words):
    import importlib

    plain_words = importlib.import_module(f"{pack.package}.nodes.conditioning.prompt_words").plain_words
    assert plain_words(typed) == words


def _saved_tensors(run):
    """run() under a hook that records the shape and bytes of every tensor autograd saves for backward."""
    saved = []

    def pack_hook(t):
        saved.append((tuple(t.shape), t.numel() * t.element_size()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack_hook, lambda t: t):
        out = run()
    return out, saved


@pytest.mark.parametrize("kind", ["linear", "conv2d"])
def test_cast_layers_keep_no_weight_copy_for_backward(pack, kind):
    """ComfyUI's manual_cast layers (fp16 weights, fp32 compute): the cast weight is not kept for backward, and
    the input's gradient is the one autograd computes through the cast copy."""
    import importlib

    import comfy.ops

    from core.shared.autograd_weights import autograd_ready

    recast = importlib.import_module(f"{pack.package}.nodes.comfy.recast")
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():  # as ComfyUI loads weights
        if kind == "linear":
            layer, shape = comfy.ops.manual_cast.Linear(64, 96, dtype=torch.float16), (3, 5, 64)
        else:
            layer, shape = comfy.ops.manual_cast.Conv2d(8, 16, 3, padding=1, dtype=torch.float16), (2, 8, 9, 9)
        layer.weight = torch.nn.Parameter(torch.randn(layer.weight.shape, generator=gen).half(), requires_grad=False)
        layer.bias = torch.nn.Parameter(torch.randn(layer.bias.shape, generator=gen).half(), requires_grad=False)
    x = torch.randn(shape, generator=gen)
    weight_numel = layer.weight.numel()  # the saved cast may be a view of it (Linear keeps its transpose)

    def gradient(scope):
        with torch.inference_mode(False), scope:
            leaf = x.clone().requires_grad_(True)
            out, saved = _saved_tensors(lambda: layer(leaf))
            out.square().sum().backward()
        return leaf.grad, [math.prod(s) for s, _ in saved]

    plain_grad, plain_saved = gradient(autograd_ready(layer))
    recast_grad, recast_saved = gradient(recast.differentiable(layer))
    assert weight_numel in plain_saved, "the default path keeps the cast weight (the cost this removes)"
    assert weight_numel not in recast_saved
    torch.testing.assert_close(recast_grad, plain_grad, rtol=1e-6, atol=1e-6)
    assert "forward_comfy_cast_weights" not in layer.__dict__ and layer.weight.is_inference()


def test_text_encoder_keeps_no_cast_weights_for_backward(pack, sd1):
    """On the CPU ComfyUI keeps CLIP-L in fp16 and computes in fp32: a differentiable encode keeps activations
    only, not the ~0.3 GiB of fp32 casts of its Linear weights."""
    _, clip = sd1
    encoder = pack.comfy_text_encoder.ComfyTextEncoder(clip)
    clip.load_model()
    linears = [m for m in clip.cond_stage_model.modules() if isinstance(m, torch.nn.Linear)]
    assert any(m.weight.dtype == torch.float16 for m in linears), "this test needs ComfyUI's cast path"
    cast_bytes = sum(m.weight.numel() * 4 for m in linears)
    token = torch.randn(1, 768, generator=torch.Generator().manual_seed(0)) * 0.05
    with torch.inference_mode(False):
        token.requires_grad_(True)
        with encoder:
            out, saved = _saved_tensors(lambda: encoder.encode(
                "a photo of a", pack.text_encoder.LearnableTokens({"l": token})))
            out.cross_attn.square().sum().backward()
    total = sum(n for _, n in saved)
    assert total < 0.25 * cast_bytes, f"saved {total / 2**20:.0f} MiB vs {cast_bytes / 2**20:.0f} MiB of casts"
    assert token.grad is not None and token.grad.abs().sum() > 0
