"""The small SD3 and Flux test models (devtools/family_checkpoints.py) through ComfyUI's real executor:
detected as SD3 / Flux, sampled by plain graphs, conditioning shaped as ComfyUI's real encoders make it."""
import pytest
import torch

SIZE = 64  # px; latent 8 x 8, 16 channels


def _sd3_graph(ckpt: str, prompt: str, seed: int = 0, clip=None) -> dict:
    clip = clip or ["1", 1]
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": clip}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": clip}},
        "4": {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "seed": seed, "steps": 2, "cfg": 4.0,
                                                   "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "family_sd3"}},
    }


def _flux_graph(files, loader: str, prompt: str, seed: int = 0) -> dict:
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": files.unet, "weight_dtype": "default"}},
        "2": {"class_type": loader, "inputs": {"type": "flux", "t5_name": files.t5, "clip_l_name": files.clip_l}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": files.vae}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["2", 0]}},
        "5": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["4", 0], "guidance": 3.5}},
        "6": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["4", 0]}},
        "7": {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "8": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["5", 0], "negative": ["6", 0],
                                                   "latent_image": ["7", 0], "seed": seed, "steps": 2, "cfg": 1.0,
                                                   "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["3", 0]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "family_flux"}},
    }


def _run(comfy, graph: dict, encode: str, sampler: str, decode: str):
    """(conditioning, latent, image) of one run."""
    comfy.run(graph)
    cond = comfy.node_outputs(encode)[0][0]
    latent = comfy.node_outputs(sampler)[0][0]["samples"]
    image = comfy.node_outputs(decode)[0][0]
    return cond, latent, image


def _assert_image(image: torch.Tensor):
    assert image.shape == (1, SIZE, SIZE, 3)
    assert torch.isfinite(image).all()
    assert image.std() > 1e-3, "constant image"


def test_sd3_checkpoint_is_detected_as_sd3(comfy, sd3_checkpoint):
    model, clip, vae = comfy.load_checkpoint(sd3_checkpoint.name)
    assert type(model.model.model_config).__name__ == "SD3"
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

    diffusion = model.model.diffusion_model
    assert isinstance(diffusion, MMDiT) and len(diffusion.joint_blocks) == 2 and diffusion.hidden_size == 128
    # CLIP-L and CLIP-G, no T5 (the checkpoint has none)
    assert clip.cond_stage_model.clip_l is not None and clip.cond_stage_model.clip_g is not None
    assert clip.cond_stage_model.t5xxl is None
    assert vae.latent_channels == 16


def test_sd3_plain_graph_samples_and_text_matters(comfy, sd3_checkpoint):
    name = sd3_checkpoint.name
    cond, latent, image = _run(comfy, _sd3_graph(name, "a red cube on a table"), "2", "5", "6")
    # ComfyUI's SD3 encoder without T5: CLIP-L (768) and CLIP-G (1280) side by side, zero-padded to 4096
    assert len(cond) == 1
    tokens, extra = cond[0]
    assert tokens.shape == (1, 77, 4096) and extra["pooled_output"].shape == (1, 2048)
    assert torch.count_nonzero(tokens[..., 2048:]) == 0 and torch.count_nonzero(tokens[..., :2048]) > 0
    assert latent.shape == (1, 16, SIZE // 8, SIZE // 8) and torch.isfinite(latent).all()
    _assert_image(image)
    _, other, _ = _run(comfy, _sd3_graph(name, "a dog running in the snow"), "2", "5", "6")
    assert (other - latent).abs().max() > 1e-3, "the prompt did not change the sample"


def test_sd3_with_reduced_t5_concatenates_t5_along_the_sequence(comfy, sd3_checkpoint, flux_files,
                                                               reduced_t5_loader):
    graph = _sd3_graph(sd3_checkpoint.name, "a red cube on a table", clip=["8", 0])
    graph["8"] = {"class_type": reduced_t5_loader,
                  "inputs": {"type": "sd3", "t5_name": flux_files.t5, "ckpt_name": sd3_checkpoint.name}}
    cond, latent, image = _run(comfy, graph, "2", "5", "6")
    tokens, extra = cond[0]
    # CLIP-L/G's 77 tokens padded to 4096, then T5's 77 (SD3's T5 tokenizer pads to 77)
    assert tokens.shape == (1, 77 + 77, 4096) and extra["pooled_output"].shape == (1, 2048)
    assert torch.count_nonzero(tokens[:, :77, 2048:]) == 0 and torch.count_nonzero(tokens[:, 77:, 2048:]) > 0
    clip = comfy.node_outputs("8")[0][0]
    t5 = clip.cond_stage_model.t5xxl.transformer
    assert len(t5.encoder.block) == 24 and t5.shared.weight.shape == (32128, 4096)
    # every weight of ComfyUI's T5 came from the file (a missing one would be uninitialized memory)
    from safetensors.torch import load_file

    stored = load_file(str(flux_files.t5_path))
    loaded = t5.state_dict()
    assert loaded.keys() == stored.keys()
    assert all(torch.equal(loaded[k].to(stored[k].dtype), stored[k]) for k in stored)
    assert latent.shape == (1, 16, SIZE // 8, SIZE // 8)
    _assert_image(image)


def test_sd35_unet_is_detected_as_sd3_and_samples(comfy, sd3_checkpoint, sd35_unet):
    graph = _sd3_graph(sd3_checkpoint.name, "a red cube on a table")
    graph["8"] = {"class_type": "UNETLoader", "inputs": {"unet_name": sd35_unet.name, "weight_dtype": "default"}}
    graph["5"]["inputs"]["model"] = ["8", 0]
    _, latent, image = _run(comfy, graph, "2", "5", "6")
    model = comfy.node_outputs("8")[0][0]
    assert type(model.model.model_config).__name__ == "SD3"
    blocks = model.model.diffusion_model.joint_blocks
    assert len(blocks) == 2 and blocks[0].x_block.x_block_self_attn and not blocks[1].x_block.x_block_self_attn
    assert type(blocks[0].x_block.attn.ln_q).__name__ == "RMSNorm"
    assert latent.shape == (1, 16, SIZE // 8, SIZE // 8) and torch.isfinite(latent).all()
    _assert_image(image)


def test_flux_graph_samples_with_reduced_t5_and_text_matters(comfy, flux_files, reduced_t5_loader):
    cond, latent, image = _run(comfy, _flux_graph(flux_files, reduced_t5_loader, "a red cube on a table"),
                               "5", "8", "9")
    model = comfy.node_outputs("1")[0][0]
    assert type(model.model.model_config).__name__ == "Flux"
    flux = model.model.diffusion_model
    assert flux.hidden_size == 3072 and len(flux.double_blocks) == 1 and len(flux.single_blocks) == 1
    assert flux.params.guidance_embed
    # ComfyUI's Flux encoder: T5's sequence (min. 256 tokens), CLIP-L's pooled output; FluxGuidance adds guidance
    tokens, extra = cond[0]
    assert tokens.shape == (1, 256, 4096) and extra["pooled_output"].shape == (1, 768)
    assert extra["guidance"] == 3.5
    assert latent.shape == (1, 16, SIZE // 8, SIZE // 8) and torch.isfinite(latent).all()
    _assert_image(image)
    _, other, _ = _run(comfy, _flux_graph(flux_files, reduced_t5_loader, "a dog running in the snow"), "5", "8", "9")
    assert (other - latent).abs().max() > 1e-3, "the prompt did not change the sample"


def test_comfy_loaders_cannot_build_the_reduced_t5(comfy, flux_files):
    """What the test-only loader works around: DualCLIPLoader builds T5 from the fixed T5-XXL config, and the
    reduced file's shapes do not fit it (so the tests build that CLIP in-process)."""
    with torch.inference_mode(), pytest.raises(RuntimeError, match="size mismatch"):
        comfy.nodes.DualCLIPLoader().load_clip(flux_files.clip_l, flux_files.t5, "flux")


def test_files_hold_a_pure_function_of_seed_key_and_shape(flux_files):
    """The VAE file (the smallest) equals a fresh build, and another seed gives other weights."""
    from safetensors.torch import load_file

    from devtools.family_checkpoints import asset_path, build_state_dict

    stored = load_file(str(asset_path("flux_vae")))
    fresh = build_state_dict("flux_vae")
    assert stored.keys() == fresh.keys()
    assert all(torch.equal(stored[k], fresh[k]) for k in stored)
    other = build_state_dict("flux_vae", seed=1)
    assert not torch.equal(other["taesd_decoder.1.weight"], fresh["taesd_decoder.1.weight"])
