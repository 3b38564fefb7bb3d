"""The lab's trained models (lab/): the expanded SD1.x checkpoint is exactly the trained model, ComfyUI
draws recognizable lab pictures with it, and the lab reward prefers matching captions."""
import numpy as np
import pytest
import torch

from lab.world import ATTRIBUTES, Scene, draw, extract

LAB_PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow circle",
               "a small blue circle on the left, black background", "a large red square in the center",
               "a green square on the right", "a red triangle, white background"]


def _requested(prompt: str) -> dict[str, str]:
    words = set(prompt.replace(",", " ").split())
    return {a: v for a, d in ATTRIBUTES.items() for v in d if v in words}


@pytest.fixture(scope="module")
def lab_loaded(comfy, lab_checkpoint):
    import comfy.sd

    from lab.checkpoint import LDM_FILE
    from lab.preview import load_compact

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(lab_checkpoint), output_vae=True,
                                                                output_clip=True)
    return (model, clip, vae), load_compact(LDM_FILE, "cpu")


def test_comfyui_loads_the_lab_checkpoint_as_sd1_with_a_taesd(lab_loaded):
    (model, clip, vae), _ = lab_loaded
    assert type(model.model.model_config).__name__ == "SD15"
    assert type(vae.first_stage_model).__name__ == "TAESD"
    assert model.model.diffusion_model.model_channels == 320


@pytest.mark.claim
def test_expanded_checkpoint_computes_what_was_trained(lab_loaded):
    """Narrow trained modules vs ComfyUI's modules built from the expanded file (fp16 storage: small error)."""
    (model, clip, vae), (unet, text, taesd) = lab_loaded
    from lab.train import Tokenizer

    prompts = [LAB_PROMPTS[4], "a circle", ""]
    with torch.no_grad():
        trained_states = text(Tokenizer()(prompts))
        comfy_states = torch.cat([clip.encode_from_tokens(clip.tokenize(p)) for p in prompts])
        assert (trained_states - comfy_states).abs().max() < 2e-2 * trained_states.abs().mean()

        gen = torch.Generator().manual_seed(0)
        x, t = torch.randn(3, 4, 8, 8, generator=gen), torch.tensor([20.0, 500.0, 980.0])
        narrow = unet(x, t, context=trained_states)
        wide = model.model.diffusion_model.float()(x, t, context=trained_states)
        assert (narrow - wide).abs().max() < 1e-2 * narrow.abs().mean(), (narrow - wide).abs().max()

        z = torch.randn(2, 4, 8, 8, generator=gen)
        mine = taesd.taesd_decoder(z).clamp(0, 1).permute(0, 2, 3, 1)
        theirs = vae.decode(z / taesd.vae_scale.item())  # ComfyUI's raw latents are z / vae_scale
        assert (mine - theirs).abs().max() < 1e-2


@pytest.mark.slow
@pytest.mark.claim
def test_lab_model_follows_the_prompt_in_comfyui(comfy, lab_checkpoint):
    """The baseline the methods are measured against: plain KSampler, 64 px, euler, 20 steps, cfg 5. Each
    prompt is sampled twice from the same noise: with the prompt and with an empty prompt (the control: how
    often the model draws the named attributes anyway). The model must follow the prompt clearly more often
    than the control, and draw the prompted shape and color together in most images (issue 8's bar for the
    demo model; benchmarks/lab_training.md has the numbers)."""
    graph = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": lab_checkpoint.name}},
             "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": ""}}}
    for i, prompt in enumerate(LAB_PROMPTS):
        graph[f"pos{i}"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": prompt}}
        graph[f"lat{i}"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}}
        for arm, positive in (("cond", f"pos{i}"), ("ctrl", "neg")):
            graph[f"ks_{arm}{i}"] = {"class_type": "KSampler", "inputs": {
                "model": ["ckpt", 0], "positive": [positive, 0], "negative": ["neg", 0], "latent_image": [f"lat{i}", 0],
                "seed": 100 + i, "steps": 20, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
                "denoise": 1.0}}
            graph[f"dec_{arm}{i}"] = {"class_type": "VAEDecode",
                                      "inputs": {"samples": [f"ks_{arm}{i}", 0], "vae": ["ckpt", 2]}}
            graph[f"out_{arm}{i}"] = {"class_type": "PreviewImage", "inputs": {"images": [f"dec_{arm}{i}", 0]}}
    comfy.run(graph)
    hits = {arm: {a: [] for a in ATTRIBUTES} | {"shape+color": []} for arm in ("cond", "ctrl")}
    for i, prompt in enumerate(LAB_PROMPTS):
        wanted = _requested(prompt)
        for arm in hits:
            for image in comfy.node_outputs(f"dec_{arm}{i}")[0][0]:
                found = extract(image.numpy())
                for a, v in wanted.items():
                    hits[arm][a].append(found[a] == v)
                hits[arm]["shape+color"].append(found["shape"] == wanted["shape"] and found["color"] == wanted["color"])
    rate = {arm: {k: float(np.mean(v)) for k, v in h.items() if v} for arm, h in hits.items()}
    print("lab baseline, share of images with the named value (prompt vs empty prompt, same noise):",
          {k: (round(rate["cond"][k], 2), round(rate["ctrl"][k], 2)) for k in rate["cond"]})
    assert rate["cond"]["color"] >= rate["ctrl"]["color"] + 0.25, rate
    assert rate["cond"]["shape+color"] > 0.5 and rate["cond"]["shape+color"] >= rate["ctrl"]["shape+color"] + 0.3, rate
    named = [np.mean(hits[arm][a]) for arm in ("cond", "ctrl") for a in ATTRIBUTES if hits[arm][a]]
    assert sum(named[:len(named) // 2]) > sum(named[len(named) // 2:]), rate


@pytest.mark.claim
def test_lab_reward_prefers_the_true_caption_to_a_one_word_change(pack, lab_reward):
    """On drawn scenes: the full true caption vs the same caption with one attribute changed."""
    reward = pack.core_rewards.load_reward("clip", lab_reward)
    rng = np.random.default_rng(7)
    wins, trials = 0, 0
    for _ in range(24):
        truth = Scene(*(str(rng.choice(list(d))) for d in ATTRIBUTES.values()))
        attribute = str(rng.choice(list(ATTRIBUTES)))
        other = str(rng.choice([v for v in ATTRIBUTES[attribute] if v != getattr(truth, attribute)]))
        wrong = Scene(**{**truth.__dict__, attribute: other})
        image = torch.from_numpy(np.array(draw(truth, rng))).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            scores = reward(image.repeat(2, 1, 1, 1), [truth.caption(), wrong.caption()])
        wins += bool(scores[0] > scores[1])
        trials += 1
    print(f"lab reward: true caption preferred in {wins}/{trials}")
    assert wins / trials >= 0.8, (wins, trials)
