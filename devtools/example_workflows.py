"""Regenerate the example workflows that are written by code (run after changing a node's inputs):

    python -m devtools.example_workflows
"""
from __future__ import annotations

from devtools.comfy_path import PACK_ROOT
from devtools.standard_models import CLIP_L14, IMAGE_REWARD, PROMPTIST, SD15, model_entries
from devtools.workflow_builder import UIWorkflow

# The templates name the files ComfyUI users have (devtools/standard_models.py: SD1.5, CLIP ViT-L/14,
# ImageReward v1.0, Promptist) with the frontend's download metadata; the demo and the tests run the
# embedded stand-ins in their place (the lab's models, trained on shapes: lab/README.md). Prompts are
# captions of the lab world, which any SD1.x model also draws. Sizes are SD1.5's 512; the demo runs the
# lab model at its own 64 px (devtools/run_workflows.py).
CKPT = SD15
SIDE = 512
NEGATIVE = ""
REWARD_OUT = [("reward", "REWARD_MODEL")]
PROMPT = "a red circle on the left, white background"


def checkpoint(wf: UIWorkflow, pos, size) -> int:
    return wf.node("CheckpointLoaderSimple", [CKPT], outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
                   pos=pos, size=size, models=model_entries(CKPT))


def reward_loader(wf: UIWorkflow, family: str, weights: str, pos, size, title: str | None = None) -> int:
    """Load Reward Model on a reward folder; its files go in the workflow's model list (a folder is no file)."""
    wf.add_models(model_entries(weights))
    return wf.node("PromptOptim_LoadRewardModel", [family, weights, "none", "", "auto"], outputs=REWARD_OUT,
                   pos=pos, size=size, title=title)


def txt2img(wf: UIWorkflow, prompt: str, batch: int, seed: int = 42):
    """Checkpoint -> prompts -> KSampler -> VAE decode; returns the decode node id."""
    ckpt = checkpoint(wf, (40, 200), (320, 100))
    pos = wf.node("CLIPTextEncode", [prompt], inputs=[("clip", "CLIP", ckpt, 1)],
                  outputs=[("CONDITIONING", "CONDITIONING")], pos=(400, 60), size=(400, 160), title="Positive prompt")
    neg = wf.node("CLIPTextEncode", [NEGATIVE], inputs=[("clip", "CLIP", ckpt, 1)],
                  outputs=[("CONDITIONING", "CONDITIONING")], pos=(400, 280), size=(400, 160), title="Negative prompt")
    latent = wf.node("EmptyLatentImage", [SIDE, SIDE, batch], outputs=[("LATENT", "LATENT")], pos=(400, 500),
                     size=(320, 110))
    sampler = wf.node("KSampler", [seed, "fixed", 12, 7.5, "euler", "normal", 1.0],
                      inputs=[("model", "MODEL", ckpt, 0), ("positive", "CONDITIONING", pos, 0),
                              ("negative", "CONDITIONING", neg, 0), ("latent_image", "LATENT", latent, 0)],
                      outputs=[("LATENT", "LATENT")], pos=(840, 200), size=(320, 270))
    return wf.node("VAEDecode", [], inputs=[("samples", "LATENT", sampler, 0), ("vae", "VAE", ckpt, 2)],
                   outputs=[("IMAGE", "IMAGE")], pos=(1200, 200), size=(210, 50))


def score_generated_images() -> UIWorkflow:
    """Generate 4 images, score them with 0.7 x ImageReward + 0.3 x CLIP, save them best first."""
    wf = UIWorkflow()
    decode = txt2img(wf, PROMPT, batch=4)
    image_reward = reward_loader(wf, "image_reward", IMAGE_REWARD, (840, 520), (360, 160))
    clip = reward_loader(wf, "clip", CLIP_L14, (840, 720), (360, 160))
    combined = wf.node("PromptOptim_CombineRewards", [0.7, 0.3, 1.0, 1.0],
                       inputs=[("reward_1", "REWARD_MODEL", image_reward, 0), ("reward_2", "REWARD_MODEL", clip, 0)],
                       outputs=REWARD_OUT, pos=(1240, 560), size=(300, 200))
    score = wf.node("PromptOptim_ScoreImages", [PROMPT, False, 0],
                    inputs=[("images", "IMAGE", decode, 0), ("reward", "REWARD_MODEL", combined, 0)],
                    outputs=[("best_images", "IMAGE"), ("scores", "FLOAT"), ("mean_score", "FLOAT"),
                             ("report", "STRING")], pos=(1580, 200), size=(400, 360))
    wf.node("SaveImage", ["prompt_optim/scored"], inputs=[("images", "IMAGE", score, 0)], pos=(2020, 200),
            size=(400, 420))
    return wf


DATE_PROMPT = "a small yellow triangle on the right, black background"
SCORE_OUT = [("best_images", "IMAGE"), ("scores", "FLOAT"), ("mean_score", "FLOAT"), ("report", "STRING")]


def date_side_by_side() -> UIWorkflow:
    """Same seed twice: the fixed prompt embedding (KSampler) vs DATE raising a CLIP reward; both branches
    scored by the optimized CLIP reward and by ImageReward, which DATE did not see."""
    wf = UIWorkflow()
    ckpt = checkpoint(wf, (40, 300), (320, 100))
    pos = wf.node("PromptOptim_TextEncodeKeepText", [DATE_PROMPT], inputs=[("clip", "CLIP", ckpt, 1)],
                  outputs=[("CONDITIONING", "CONDITIONING")], pos=(400, 60), size=(400, 160),
                  title="Positive prompt (text kept for the reward)")
    neg = wf.node("CLIPTextEncode", [NEGATIVE], inputs=[("clip", "CLIP", ckpt, 1)],
                  outputs=[("CONDITIONING", "CONDITIONING")], pos=(400, 280), size=(400, 160), title="Negative prompt")
    latent = wf.node("EmptyLatentImage", [SIDE, SIDE, 2], outputs=[("LATENT", "LATENT")], pos=(400, 500),
                     size=(320, 110))
    clip_reward = reward_loader(wf, "clip", CLIP_L14, (400, 660), (360, 160), title="Reward DATE raises (CLIP)")
    judge = reward_loader(wf, "image_reward", IMAGE_REWARD, (400, 860), (360, 160), title="Second reward (ImageReward)")
    conds = [("positive", "CONDITIONING", pos, 0), ("negative", "CONDITIONING", neg, 0),
             ("latent_image", "LATENT", latent, 0)]
    sampling = [42, "fixed", 12, 7.5, "euler", "normal"]
    plain = wf.node("KSampler", [*sampling, 1.0], inputs=[("model", "MODEL", ckpt, 0), *conds],
                    outputs=[("LATENT", "LATENT")], pos=(840, 40), size=(320, 270), title="Fixed embedding")
    options = wf.node("PromptOptim_DATEOptions", ["cumulative", "every_k_steps", "3", 1, 0.0, "1.0", ""],
                      outputs=[("options", "DATE_OPTIONS")], pos=(840, 740), size=(340, 260),
                      title="DATE Options (every 3rd step: 12 steps here, paper 10% of 50)")
    date = wf.node("PromptOptim_DATESamplerV2", [*sampling, 1.0, 0.5],
                   inputs=[("model", "MODEL", ckpt, 0), *conds, ("vae", "VAE", ckpt, 2),
                           ("reward", "REWARD_MODEL", clip_reward, 0), ("options", "DATE_OPTIONS", options, 0)],
                   outputs=[("LATENT", "LATENT"), ("report", "STRING")], pos=(840, 360), size=(340, 330),
                   title="DATE (same seed)")
    for row, (sampler, name) in enumerate([(plain, "fixed_embedding"), (date, "date")]):
        y = 40 + row * 620
        decode = wf.node("VAEDecode", [], inputs=[("samples", "LATENT", sampler, 0), ("vae", "VAE", ckpt, 2)],
                         outputs=[("IMAGE", "IMAGE")], pos=(1220, y), size=(210, 50))
        for col, (reward, what) in enumerate([(clip_reward, "CLIP (optimized)"), (judge, "ImageReward (held out)")]):
            wf.node("PromptOptim_ScoreImages", [DATE_PROMPT, False, 0],
                    inputs=[("images", "IMAGE", decode, 0), ("reward", "REWARD_MODEL", reward, 0)],
                    outputs=SCORE_OUT, pos=(1470 + col * 420, y), size=(400, 280), title=f"{name}: {what}")
        wf.node("SaveImage", [f"prompt_optim/{name}"], inputs=[("images", "IMAGE", decode, 0)],
                pos=(2330, y), size=(400, 420))
    return wf


MINORITY_PROMPT = "a red circle"
LIKELIHOOD_OUT = [("log_likelihood", "FLOAT"), ("mean", "FLOAT"), ("report", "STRING")]


def minority_side_by_side() -> UIWorkflow:
    """Same seed twice: plain KSampler vs MinorityPrompt at its defaults (the authors' code), each image's likelihood
    estimated under the model and the original prompt (MinorityPrompt should lower it)."""
    wf = UIWorkflow()
    ckpt = checkpoint(wf, (40, 300), (320, 100))
    pos = wf.node("PromptOptim_MinorityEncode", [MINORITY_PROMPT, "end", "word", "cool", 0],
                  inputs=[("clip", "CLIP", ckpt, 1)], outputs=[("CONDITIONING", "CONDITIONING")], pos=(400, 40),
                  size=(400, 260), title="Positive prompt (+ placeholder for MinorityPrompt)")
    neg = wf.node("CLIPTextEncode", [NEGATIVE], inputs=[("clip", "CLIP", ckpt, 1)],
                  outputs=[("CONDITIONING", "CONDITIONING")], pos=(400, 340), size=(400, 160), title="Negative prompt")
    latent = wf.node("EmptyLatentImage", [SIDE, SIDE, 2], outputs=[("LATENT", "LATENT")], pos=(400, 540),
                     size=(320, 110))
    conds = [("positive", "CONDITIONING", pos, 0), ("negative", "CONDITIONING", neg, 0),
             ("latent_image", "LATENT", latent, 0)]
    sampling = [42, "fixed", 12, 7.5, "euler", "normal"]
    plain = wf.node("KSampler", [*sampling, 1.0], inputs=[("model", "MODEL", ckpt, 0), *conds],
                    outputs=[("LATENT", "LATENT")], pos=(840, 40), size=(320, 270), title="Plain sampling")
    minority = wf.node("PromptOptim_MinoritySamplerV2", [*sampling, 1.0, 10, 0.01],  # K and lr: the defaults
                       inputs=[("model", "MODEL", ckpt, 0), *conds],
                       outputs=[("LATENT", "LATENT"), ("token", "MINORITY_TOKEN"), ("report", "STRING")],
                       pos=(840, 360), size=(340, 340), title="MinorityPrompt (same seed)")
    for row, (sampler, name) in enumerate([(plain, "plain"), (minority, "minority")]):
        y = 40 + row * 620
        wf.node("PromptOptim_DenoisingLikelihood", [0, 20],
                inputs=[("model", "MODEL", ckpt, 0), ("positive", "CONDITIONING", pos, 0),
                        ("samples", "LATENT", sampler, 0)],
                outputs=LIKELIHOOD_OUT, pos=(1220, y + 120), size=(360, 240), title=f"{name}: likelihood")
        decode = wf.node("VAEDecode", [], inputs=[("samples", "LATENT", sampler, 0), ("vae", "VAE", ckpt, 2)],
                         outputs=[("IMAGE", "IMAGE")], pos=(1220, y), size=(210, 50))
        wf.node("SaveImage", [f"prompt_optim/{name}"], inputs=[("images", "IMAGE", decode, 0)],
                pos=(1620, y), size=(400, 420))
    return wf


IPGO_PROMPT = "a green square in the center"
IPGO_LIST = ["a red circle", "a blue square on the left", "a yellow triangle, black background"]
IPGO_NEW_PROMPT = "a green circle on the right"
IPGO_OUT = [("tokens", "IPGO_TOKENS"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
            ("best_images", "IMAGE"), ("reward_curve", "IMAGE"), ("report", "STRING")]


def _ipgo_optimize(wf, ckpt, reward, prompts: str, epochs: int, accumulation: int, title: str):
    """The optimizer at the authors' token settings but few epochs on a small image (the demo runs on CPUs)."""
    options = wf.node("PromptOptim_IPGOOptions",
                      ["euler", "normal", 0.01, 10, 0.9, accumulation, 10, 10, 300, False, 0.001, 2, 1.0, 0],
                      outputs=[("options", "IPGO_OPTIONS")], pos=(400, 520), size=(560, 390),
                      title="IPGO Options (12 Euler steps and lr 0.01 for a short CPU run)")
    return wf.node("PromptOptim_IPGOOptimizeV2", [prompts, "", 0, 12, 7.5, SIDE, SIDE, epochs],
                   inputs=[("model", "MODEL", ckpt, 0), ("clip", "CLIP", ckpt, 1), ("vae", "VAE", ckpt, 2),
                           ("reward", "REWARD_MODEL", reward, 0), ("options", "IPGO_OPTIONS", options, 0)],
                   outputs=IPGO_OUT, pos=(400, 40), size=(560, 440), title=title)


def _ipgo_compare(wf, ckpt, tokens, judge, prompt: str):
    """Same seed and sampler as the optimizer: the prompt with the learned tokens vs the raw prompt, scored
    by a reward the optimizer did not see."""
    apply = wf.node("PromptOptim_IPGOApply", [prompt, ""],
                    inputs=[("clip", "CLIP", ckpt, 1), ("tokens", "IPGO_TOKENS", tokens, 0)],
                    outputs=[("positive", "CONDITIONING"), ("negative", "CONDITIONING")], pos=(1020, 40),
                    size=(360, 200), title="Prompt + learned tokens")
    raw_pos = wf.node("CLIPTextEncode", [prompt], inputs=[("clip", "CLIP", ckpt, 1)],
                      outputs=[("CONDITIONING", "CONDITIONING")], pos=(1020, 640), size=(360, 120),
                      title="Raw prompt")
    raw_neg = wf.node("CLIPTextEncode", [""], inputs=[("clip", "CLIP", ckpt, 1)],
                      outputs=[("CONDITIONING", "CONDITIONING")], pos=(1020, 800), size=(360, 100),
                      title="Empty negative")
    latent = wf.node("EmptyLatentImage", [SIDE, SIDE, 1], outputs=[("LATENT", "LATENT")], pos=(1020, 300),
                     size=(320, 110))
    sampling = [0, "fixed", 12, 7.5, "euler", "normal", 1.0]
    rows = [("ipgo", (apply, 0), (apply, 1)), ("raw", (raw_pos, 0), (raw_neg, 0))]
    for row, (name, pos, neg) in enumerate(rows):
        y = 40 + row * 560
        sampler = wf.node("KSampler", sampling,
                          inputs=[("model", "MODEL", ckpt, 0), ("positive", "CONDITIONING", *pos),
                                  ("negative", "CONDITIONING", *neg), ("latent_image", "LATENT", latent, 0)],
                          outputs=[("LATENT", "LATENT")], pos=(1420, y), size=(320, 270), title=f"{name} (same seed)")
        decode = wf.node("VAEDecode", [], inputs=[("samples", "LATENT", sampler, 0), ("vae", "VAE", ckpt, 2)],
                         outputs=[("IMAGE", "IMAGE")], pos=(1780, y), size=(210, 50))
        wf.node("PromptOptim_ScoreImages", [prompt, False, 0],
                inputs=[("images", "IMAGE", decode, 0), ("reward", "REWARD_MODEL", judge, 0)],
                outputs=SCORE_OUT, pos=(1780, y + 100), size=(400, 280), title=f"{name}: held-out reward")
        wf.node("SaveImage", [f"prompt_optim/ipgo_{name}"], inputs=[("images", "IMAGE", decode, 0)],
                pos=(2220, y), size=(400, 420))


def _ipgo_common():
    wf = UIWorkflow()
    ckpt = checkpoint(wf, (40, 300), (320, 100))
    reward = reward_loader(wf, "clip", CLIP_L14, (40, 460), (320, 160), title="Reward IPGO raises (CLIP)")
    judge = reward_loader(wf, "image_reward", IMAGE_REWARD, (40, 680), (320, 160), title="Second reward (ImageReward)")
    return wf, ckpt, reward, judge


def _ipgo_outputs(wf, optimize, name: str):
    wf.node("PreviewImage", [], inputs=[("images", "IMAGE", optimize, 4)], pos=(400, 940), size=(400, 300),
            title="Reward per epoch")
    wf.node("PreviewImage", [], inputs=[("images", "IMAGE", optimize, 3)], pos=(1020, 940), size=(400, 300),
            title="Kept epoch's images")
    wf.node("PromptOptim_SaveIPGOTokens", [name], inputs=[("tokens", "IPGO_TOKENS", optimize, 0)],
            outputs=[("file", "STRING")], pos=(1460, 1120), size=(320, 100))


def ipgo_prompt_wise() -> UIWorkflow:
    """IPGO on one prompt, then the learned tokens vs the raw prompt with the same seed."""
    wf, ckpt, reward, judge = _ipgo_common()
    optimize = _ipgo_optimize(wf, ckpt, reward, IPGO_PROMPT, epochs=3, accumulation=4,
                              title="IPGO prompt-wise (paper: 50 epochs, lr 0.001, 512x512, 50 LMS steps)")
    _ipgo_compare(wf, ckpt, optimize, judge, IPGO_PROMPT)
    _ipgo_outputs(wf, optimize, "ipgo_prompt_wise")
    return wf


def ipgo_batch_wise() -> UIWorkflow:
    """IPGO on a list of prompts (batch-wise), applied to a prompt it never saw."""
    wf, ckpt, reward, judge = _ipgo_common()
    optimize = _ipgo_optimize(wf, ckpt, reward, "\n".join(IPGO_LIST), epochs=2, accumulation=2,
                              title="IPGO batch-wise (paper: 20 epochs, lr_step 15, lr_gamma 0.95, accumulation 4)")
    _ipgo_compare(wf, ckpt, optimize, judge, IPGO_NEW_PROMPT)
    _ipgo_outputs(wf, optimize, "ipgo_batch_wise")
    return wf


REWRITER_PROMPT = "a red circle"
REWRITES = 4


def gfn_rewriter_batch() -> UIWorkflow:
    """One prompt -> 4 rewrites (Promptist as published; the demo runs the lab's GFlowNet policy in its place,
    with its own preset and lengths; diverse beam search as the authors evaluate) -> one generation each (same
    seed) -> one batch, scored against the original prompt and saved best first."""
    wf = UIWorkflow()
    ckpt = checkpoint(wf, (40, 300), (320, 100))
    options = wf.node("PromptOptim_RewriterOptions",
                      [1.0, 1.0, 15, 75, 1.0, "{prompt} Rephrase:\n", "fp32", -1.0, False],
                      outputs=[("options", "REWRITER_OPTIONS")], pos=(40, 820), size=(430, 360),
                      title="Prompt Rewriter Options (paper: 15-75 new tokens)")
    rewriter = wf.node("PromptOptim_GFlowNetRewriterV2",
                       [PROMPTIST, REWRITER_PROMPT, REWRITES, "diverse_beam_search", 0, "fixed", "promptist"],
                       inputs=[("options", "REWRITER_OPTIONS", options, 0)],
                       outputs=[("rewrites", "STRING"), ("text", "STRING")], pos=(40, 460), size=(430, 320),
                       title="Prompt rewriter (Promptist; a GFlowNet policy: preset gflownet)")
    wf.add_models(model_entries(PROMPTIST))  # a folder: listed by file in the workflow's models
    pos = wf.node("CLIPTextEncode", [""], inputs=[("text", "STRING", rewriter, 0), ("clip", "CLIP", ckpt, 1)],
                  outputs=[("CONDITIONING", "CONDITIONING")], pos=(520, 60), size=(400, 160),
                  title="One encoding per rewrite")
    wf.nodes[pos - 1]["inputs"][0]["widget"] = {"name": "text"}  # a widget fed by a link, as the editor saves it
    neg = wf.node("CLIPTextEncode", [NEGATIVE], inputs=[("clip", "CLIP", ckpt, 1)],
                  outputs=[("CONDITIONING", "CONDITIONING")], pos=(520, 280), size=(400, 160), title="Negative prompt")
    latent = wf.node("EmptyLatentImage", [SIDE, SIDE, 1], outputs=[("LATENT", "LATENT")], pos=(520, 500),
                     size=(320, 110))
    sampler = wf.node("KSampler", [42, "fixed", 12, 7.5, "euler", "normal", 1.0],
                      inputs=[("model", "MODEL", ckpt, 0), ("positive", "CONDITIONING", pos, 0),
                              ("negative", "CONDITIONING", neg, 0), ("latent_image", "LATENT", latent, 0)],
                      outputs=[("LATENT", "LATENT")], pos=(960, 200), size=(320, 270), title="Once per rewrite")
    decode = wf.node("VAEDecode", [], inputs=[("samples", "LATENT", sampler, 0), ("vae", "VAE", ckpt, 2)],
                     outputs=[("IMAGE", "IMAGE")], pos=(1320, 200), size=(210, 50))
    batch = wf.node("RebatchImages", [REWRITES], inputs=[("images", "IMAGE", decode, 0)],
                    outputs=[("IMAGE", "IMAGE")], pos=(1320, 300), size=(240, 80), title="List -> one batch")
    reward = reward_loader(wf, "clip", CLIP_L14, (960, 560), (360, 160))
    score = wf.node("PromptOptim_ScoreImages", [REWRITER_PROMPT, False, 0],
                    inputs=[("images", "IMAGE", batch, 0), ("reward", "REWARD_MODEL", reward, 0)],
                    outputs=SCORE_OUT, pos=(1600, 200), size=(400, 360), title="Scored against the original prompt")
    wf.node("SaveImage", ["prompt_optim/gfn_rewriter"], inputs=[("images", "IMAGE", score, 0)], pos=(2040, 200),
            size=(400, 420))
    return wf


WORKFLOWS = {"score_generated_images": score_generated_images, "date_side_by_side": date_side_by_side,
             "minority_side_by_side": minority_side_by_side, "ipgo_prompt_wise": ipgo_prompt_wise,
             "ipgo_batch_wise": ipgo_batch_wise, "gfn_rewriter_batch": gfn_rewriter_batch}


def main():
    for name, build in WORKFLOWS.items():
        path = PACK_ROOT / "workflows" / f"{name}.json"
        build().save(path)
        print(path)


if __name__ == "__main__":
    main()
