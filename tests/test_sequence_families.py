"""The methods and the Gradient Check on the SD3, SD3.5-style and Flux.1 test models
(devtools/family_checkpoints.py), through ComfyUI's real executor. DATE and IPGO read the encoded sequence
(DATE moves it, IPGO wraps it); MinorityPrompt re-runs every encoder the model reads (CLIP-L/G, T5) with its
placeholder; the token and the denoiser gradients are checked against finite differences first."""
import re

import pytest
import torch

from devtools.reward_models import NAMES
from test_family_checkpoints import SIZE

TOLERANCE = 1e-2  # as for SD1.x / SDXL (tests/test_comfy_adapters.py)
PROMPT = "a red cube on a table"


def _sd3_loader(sd3_checkpoint):
    return {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sd3_checkpoint.name}}}, \
        ["ckpt", 0], ["ckpt", 1], ["ckpt", 2]


def _flux_loader(flux_files, reduced_t5_loader):
    return {"unet": {"class_type": "UNETLoader", "inputs": {"unet_name": flux_files.unet, "weight_dtype": "default"}},
            "te": {"class_type": reduced_t5_loader,
                   "inputs": {"type": "flux", "t5_name": flux_files.t5, "clip_l_name": flux_files.clip_l}},
            "vae": {"class_type": "VAELoader", "inputs": {"vae_name": flux_files.vae}}}, \
        ["unet", 0], ["te", 0], ["vae", 0]


@pytest.fixture(params=["sd3", "sd35", "flux"])
def family(request, sd3_checkpoint, sd35_unet, flux_files, reduced_t5_loader):
    """(name, loader nodes, model, clip, vae sources, cfg): SD3 with its two CLIPs at cfg 4; the SD3.5-style
    MMDiT-X with the SD3 file's text encoders and VAE; Flux.1-dev with the reduced T5 at cfg 1, where the
    sampler computes no unconditional prediction."""
    if request.param == "sd3":
        return ("SD3", *_sd3_loader(sd3_checkpoint), 4.0)
    if request.param == "sd35":
        loaders, _, clip, vae = _sd3_loader(sd3_checkpoint)
        loaders["unet"] = {"class_type": "UNETLoader",
                           "inputs": {"unet_name": sd35_unet.name, "weight_dtype": "default"}}
        return ("SD3", loaders, ["unet", 0], clip, vae, 4.0)
    return ("Flux.1", *_flux_loader(flux_files, reduced_t5_loader), 1.0)


def test_gradients_match_finite_differences_inside_the_node(comfy, family):
    name, loaders, model, clip, _, _ = family
    graph = {**loaders, "check": {"class_type": "PromptOptim_GradientCheck",
                                  "inputs": {"model": model, "clip": clip, "prompt": PROMPT, "noise_level": 0.5,
                                             "seed": 3}}}
    ui = comfy.run(graph)
    report = ui["check"]["text"][0]
    out = comfy.node_outputs("check")
    parts = "g, l" if name == "SD3" else "l, t5xxl"  # the SD3 test checkpoint has no T5; Flux's T5 is the reduced one
    assert f"family: {name}" in report and f"token through the text encoder ({parts})" in report
    assert out[3][0] < TOLERANCE and out[4][0] < TOLERANCE, report
    derivatives = [float(d) for d in re.findall(r"autograd (\S+),", report)]
    assert len(derivatives) == 2 and all(abs(d) > 1e-6 for d in derivatives), report


def common_nodes(clip) -> dict:
    """The empty negative, a 64 px SD3/Flux latent and the test CLIP reward: nodes "neg", "lat", "rw"."""
    return {"neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": ""}},
            "lat": {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
            "rw": {"class_type": "PromptOptim_LoadRewardModel",
                   "inputs": {"family": "clip", "weights": NAMES["clip"], "clip_backbone": "none",
                              "open_clip_architecture": "", "dtype": "auto"}}}


def date_options(rule: str, iterations: int) -> dict:
    return {"class_type": "PromptOptim_DATEOptions",
            "inputs": {"rule": rule, "schedule": "every_k_steps", "schedule_value": "1", "iterations": iterations,
                       "prior_weight": 0.0, "decode_scale": "1.0"}}


def minority_options(measure_gain: bool) -> dict:
    return {"class_type": "PromptOptim_MinorityOptions",
            "inputs": {"optimize_fraction": 0.5, "every_n_steps": 1, "sg_lambda": 1.0, "norm": "plain", "anneal": True,
                       "fixed_level": 0.75, "between_steps": "keep", "token_per_image": True, "diversity": 0.0,
                       "gradient_checkpointing": False, "measure_gain": measure_gain}}


def ipgo_options() -> dict:
    return {"class_type": "PromptOptim_IPGOOptions",
            "inputs": {"sampler_name": "euler", "scheduler": "simple", "learning_rate": 0.05, "lr_step": 10,
                       "lr_gamma": 0.9, "accumulation": 4, "prefix_tokens": 2, "suffix_tokens": 1, "rank": 8,
                       "rotation": False, "conformity_weight": 0.001, "last_steps": 1, "clip_norm": 1.0,
                       "init_seed": 0}}


def _sampled_by_the_guider(graph: dict, name: str, model, steps: int) -> dict:
    """`graph` (with nodes "guider", "pos", "lat") sampled by SamplerCustomAdvanced, euler, simple sigmas; Flux's
    positive through FluxGuidance."""
    graph.update({
        "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 5}},
        "ks": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "sig": {"class_type": "BasicScheduler",
                "inputs": {"model": model, "scheduler": "simple", "steps": steps, "denoise": 1.0}},
        "sca": {"class_type": "SamplerCustomAdvanced",
                "inputs": {"noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["ks", 0],
                           "sigmas": ["sig", 0], "latent_image": ["lat", 0]}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sca", 0], "filename_prefix": "sequence"}}})
    if name == "Flux.1":
        graph["guid"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": ["pos", 0], "guidance": 3.5}}
        graph["guider"]["inputs"]["positive"] = ["guid", 0]
    return graph


def _date_graph(family, rho=0.5, steps=3) -> dict:
    """DATE Guider (every step, two gradient steps per update, the paper rule) -> SamplerCustomAdvanced."""
    name, loaders, model, clip, vae, cfg = family
    graph = {**loaders,
             **common_nodes(clip),
             "pos": {"class_type": "PromptOptim_TextEncodeKeepText", "inputs": {"clip": clip, "text": PROMPT}},
             "opts": date_options("paper", 2),
             "guider": {"class_type": "PromptOptim_DATEGuiderV2",
                        "inputs": {"model": model, "positive": ["pos", 0], "negative": ["neg", 0], "cfg": cfg,
                                   "vae": vae, "reward": ["rw", 0], "rho": rho, "options": ["opts", 0]}}}
    return _sampled_by_the_guider(graph, name, model, steps)


def test_date_updates_the_text_sequence_and_raises_the_reward(comfy, family):
    """Each update moves the whole token sequence (SD3: CLIP-L/G with their padding; Flux: T5's) to distance
    rho from the prompt's (the paper rule); one update raises the reward of the same x0 estimate at the first,
    noisiest step; the pooled vector stays as encoded; the sample differs from a tiny rho's."""
    name = family[0]
    comfy.run(_date_graph(family))
    guider = comfy.node_outputs("guider")[0][0]
    run = guider.last_run
    assert [u[0] for u in run.updates] == [0, 1, 2]
    width = 4096
    assert run.reference.shape[-1] == width and run.reference.shape[-2] == (77 if name == "SD3" else 256)
    distance = (run.final - run.reference).flatten(1).norm(dim=1)
    torch.testing.assert_close(distance, torch.full_like(distance, 0.5), rtol=1e-4, atol=1e-5)
    before, after = run.updates[0][2]
    assert (after.rewards > before.rewards).all(), (before.rewards, after.rewards)
    assert torch.isfinite(comfy.node_outputs("sca")[0][0]["samples"]).all()
    latent = comfy.node_outputs("sca")[0][0]["samples"]
    comfy.run(_date_graph(family, rho=0.001))
    assert (comfy.node_outputs("sca")[0][0]["samples"] - latent).abs().max() > 1e-4, "DATE did not change the sample"


def _ipgo_graph(family, epochs=2) -> dict:
    name, loaders, model, clip, vae, cfg = family
    return {**loaders, **common_nodes(clip), "opts": ipgo_options(),
            "opt": {"class_type": "PromptOptim_IPGOOptimizeV2",
                    "inputs": {"model": model, "clip": clip, "vae": vae, "reward": ["rw", 0], "prompts": PROMPT,
                               "negative": "", "sampling_seed": 3, "steps": 3, "cfg": cfg, "width": SIZE,
                               "height": SIZE, "epochs": epochs, "options": ["opts", 0]}},
            "apply": {"class_type": "PromptOptim_IPGOApply",
                      "inputs": {"clip": clip, "tokens": ["opt", 0], "text": PROMPT, "negative": ""}},
            "preview": {"class_type": "PreviewImage", "inputs": {"images": ["opt", 3]}},
            "applied": {"class_type": "PreviewAny", "inputs": {"source": ["apply", 0]}}}


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd3"], indirect=True)  # Flux and SD3.5: test_sequence_families_http.py
def test_ipgo_wraps_the_whole_sequence_and_learns(comfy, family):
    """IPGO reads the encoded sequence only (no text encoder re-run): the learned tokens (4096 wide) go around
    ComfyUI's whole encoding of the prompt, pooled as encoded; the reward changes with the tokens from epoch to
    epoch, and IPGO Encode with Learned Tokens reproduces the optimizer's conditioning exactly."""
    name, clip_source = family[0], family[3]
    comfy.run(_ipgo_graph(family))
    tokens, positive, negative, _, _, report = (comfy.node_outputs("opt")[i][0] for i in range(6))
    clip = comfy.node_outputs(clip_source[0])[clip_source[1]][0]
    plain = clip.encode_from_tokens_scheduled(clip.tokenize(PROMPT))
    assert tokens.prefix.shape == (2, 4096) and tokens.suffix.shape == (1, 4096) and tokens.info["family"] == name
    length = plain[0][0].shape[1]
    assert positive[0][0].shape == (1, 2 + length + 1, 4096)
    torch.testing.assert_close(positive[0][0][:, 2:2 + length].float(), plain[0][0].float(), rtol=0, atol=0)
    torch.testing.assert_close(positive[0][1]["pooled_output"].float(), plain[0][1]["pooled_output"].float(),
                               rtol=0, atol=0)
    curve = [float(v) for v in report.splitlines()[1].split(": ", 1)[1].split(", ")]
    assert len(curve) == 2 and all(map(torch.isfinite, torch.tensor(curve))) and len(set(curve)) > 1, report
    applied = comfy.node_outputs("apply")[0][0]
    assert torch.equal(applied[0][0], positive[0][0])


def _minority_graph(family, steps=2) -> dict:
    name, loaders, model, clip, vae, cfg = family
    graph = {**loaders,
             "pos": {"class_type": "PromptOptim_MinorityEncode",
                     "inputs": {"clip": clip, "text": PROMPT, "position": "end", "init": "word", "init_word": "cool",
                                "init_seed": 0}},
             **common_nodes(clip),
             "opts": minority_options(True),
             "guider": {"class_type": "PromptOptim_MinorityGuiderV2",
                        "inputs": {"model": model, "positive": ["pos", 0], "negative": ["neg", 0], "cfg": cfg,
                                   "iterations": 2, "lr": 0.01, "options": ["opts", 0]}}}
    return _sampled_by_the_guider(graph, name, model, steps)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["flux"], indirect=True)  # CLIP-L/G alone as in SDXL; SD3.5 runs over HTTP
def test_minority_prompt_optimizes_the_placeholder_in_every_encoder(comfy, family):
    """The placeholder is spliced into each encoder the model reads (Flux: CLIP-L, for the pooled vector, and
    T5's sequence) and optimized by ascent on J."""
    comfy.run(_minority_graph(family))
    run = comfy.node_outputs("guider")[0][0].last_run
    assert [s[0] for s in run.steps] == [0]
    widths = {k: v.shape[-1] for k, v in run.token.vectors.items()}
    assert widths == {"l": 768, "t5xxl": 4096}
    _, _, result = run.steps[0]
    assert all(g > 0 for g in result.predicted_gains), result.predicted_gains
    assert result.after.mean() > result.before.mean(), (result.before, result.after)
    assert torch.isfinite(comfy.node_outputs("sca")[0][0]["samples"]).all()


@pytest.mark.parametrize("family", ["sd3", "flux"], indirect=True)
def test_denoising_likelihood_runs_on_flow_models(comfy, family):
    """MinorityPrompt's companion estimate on the flow-matching families: one finite value per image, and
    another value for another latent (the model's sample vs an empty latent)."""
    _, loaders, model, clip, _, _ = family
    graph = {**loaders,
             "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": PROMPT}},
             "lat": {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
             "ks": {"class_type": "KSampler", "inputs": {"model": model, "positive": ["pos", 0], "negative": ["pos", 0],
                                                         "latent_image": ["lat", 0], "seed": 2, "steps": 3, "cfg": 1.0,
                                                         "sampler_name": "euler", "scheduler": "simple",
                                                         "denoise": 1.0}},
             "like": {"class_type": "PromptOptim_DenoisingLikelihood",
                      "inputs": {"model": model, "positive": ["pos", 0], "samples": ["ks", 0], "evaluation_seed": 0,
                                 "levels": 2}}}
    comfy.run(graph)
    sampled = comfy.node_outputs("like")[0]
    assert len(sampled) == 1 and torch.isfinite(torch.tensor(sampled)).all(), sampled
    graph["lat"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}}
    graph["like"]["inputs"]["samples"] = ["lat", 0]
    comfy.run(graph)
    empty = comfy.node_outputs("like")[0]
    assert empty != sampled and torch.isfinite(torch.tensor(empty)).all(), (sampled, empty)


def test_t5_placeholder_reaches_every_position_clip_only_later_ones(comfy, flux_files, reduced_t5_loader, pack):
    """What the placeholder does to the prompt's own states (issue: T5 is bidirectional): appended at the end,
    it leaves CLIP-L's states of the prompt exactly as they were (causal) but changes every one of T5's. The
    printed relative change is the reduced random T5's, not a measure of meaning on real T5-XXL weights."""
    import importlib

    loaders, _, clip_source, _ = _flux_loader(flux_files, reduced_t5_loader)
    comfy.run({**loaders, "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip_source, "text": PROMPT}},
               "shown": {"class_type": "PreviewAny", "inputs": {"source": ["pos", 0]}}})
    clip = comfy.node_outputs(clip_source[0])[clip_source[1]][0]
    text_encoder = importlib.import_module(f"{pack.package}.nodes.comfy.text_encoder")
    learnable = importlib.import_module(f"{pack.package}.core.shared.text_encoder").LearnableTokens
    with torch.inference_mode(False), text_encoder.ComfyTextEncoder(clip) as encoder:
        vectors = {k: encoder.word_embeddings(k, "cool") for k in encoder.keys}
        tokens = encoder.tokens(PROMPT, learnable(vectors, "end"))
        plain_tokens = encoder.tokens(PROMPT)
        with torch.no_grad():
            t5 = clip.cond_stage_model.t5xxl.encode_token_weights(plain_tokens["t5xxl"])[0]
            t5_with = clip.cond_stage_model.t5xxl.encode_token_weights(tokens["t5xxl"])[0]
            clip_l = clip.cond_stage_model.clip_l.encode_token_weights(plain_tokens["l"])[0]
            clip_l_with = clip.cond_stage_model.clip_l.encode_token_weights(tokens["l"])[0]
    prompt_ids = [e[0] for e in plain_tokens["t5xxl"][0]]
    n = prompt_ids.index(1)  # the prompt's T5 tokens, before its end token
    change = ((t5_with[0, :n] - t5[0, :n]).norm(dim=-1) / t5[0, :n].norm(dim=-1))
    print(f"T5 prompt states changed by the placeholder: relative {change.min():.3g} to {change.max():.3g}")
    assert (change > 1e-3).all(), change
    m = [e[0] for e in plain_tokens["l"][0]].index(49407)  # CLIP-L: start token and the prompt, before EOS
    assert torch.equal(clip_l_with[0, :m], clip_l[0, :m])
