"""Measure each method's claim in the lab world, through ComfyUI's executor, on the lab model and reward.

    python -m lab.measure [--scale full|ci] [--only MinorityPrompt DATE IPGO 'GFlowNet rewriter'] [--out benchmarks/lab_results.md]
                          [--grid benchmarks/lab_grid.png]

Same prompts, seeds, sampler and schedule for the baseline and every method arm; the images are judged
by the world's attribute extractor (not by the reward any method optimized):
- MinorityPrompt (prompts name shape and color only): the true log-probability of the generated
  attribute combination should fall and the share of rare values among the unnamed attributes rise,
  while the named attributes stay (accuracy within a margin of the baseline); the Denoising Likelihood
  node's estimate should fall too. Ablations: no annealing (fixed re-noise level), lambda = 0 (only the
  stop-gradient term of the split), the whole encoder output optimized instead of the token (the paper:
  the prompt's meaning suffers, so named accuracy should fall).
- DATE (prompts name all five attributes, combinations drawn uniformly so rare ones are common):
  the extractor's caption-match accuracy should rise. Arms: updates at 10% of the steps, at every step.
- IPGO (same kind of prompts): the lab reward and the extractor's accuracy should rise with the learned
  tokens vs the raw prompt: prompt-wise at the training seed and at an unseen seed, batch-wise on
  prompts not seen in training. 15 epochs, learning rate 0.01 (the paper: 50 epochs at 1e-3 on SD1.5).
- GFlowNet rewriter (prompts naming shape and color; policies trained by lab/rewriter.py): the FL-DB
  policy's rewrites should reach a reward comparable to the reward-maximizing policy's while their texts
  and images are more diverse. Every rewrite of a prompt is drawn with the same seed, so the images
  differ only by what the rewrites say; the reward is the lab reward against the ORIGINAL prompt.
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lab.world import ATTRIBUTES, Scene, extract

RARE = {a: {v for v, p in d.items() if p <= 0.2} for a, d in ATTRIBUTES.items()}  # values drawn at most 1 in 5


@dataclass
class Scale:
    prompts: int
    seeds: int
    batch: int
    steps: int
    rewriter_prompts: int  # GFlowNet rewriter: prompts, and rewrites of each
    rewrites: int


SCALES = {"full": Scale(prompts=4, seeds=2, batch=4, steps=20, rewriter_prompts=12, rewrites=16),
          "ci": Scale(prompts=2, seeds=1, batch=4, steps=12, rewriter_prompts=4, rewrites=8)}
CFG = 5.0
MINORITY_PROMPTS = ["a red circle", "a blue square", "a green circle", "a red square", "a blue circle",
                    "a green square"]


def named(prompt: str) -> dict[str, str]:
    words = set(prompt.replace(",", " ").split())
    return {a: v for a, d in ATTRIBUTES.items() for v in d if v in words}


# -- graphs -------------------------------------------------------------------------------------------
def sampling_graph(ckpt: str, prompt: str, guider: dict, seed: int, batch: int, steps: int,
                   encode: str = "CLIPTextEncode") -> dict:
    """Prompt -> guider -> SamplerCustomAdvanced (euler, normal) -> decode; the guider node is 'guider'."""
    positive = {"clip": ["ckpt", 1], "text": prompt}
    if encode == "PromptOptim_MinorityEncode":
        positive.update(position="end", init="word", init_word="cool", init_seed=0)
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": encode, "inputs": positive},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": ""}},
        "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": batch}},
        "guider": guider,
        "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
        "ks": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "sig": {"class_type": "BasicScheduler",
                "inputs": {"model": ["ckpt", 0], "scheduler": "normal", "steps": steps, "denoise": 1.0}},
        "sca": {"class_type": "SamplerCustomAdvanced",
                "inputs": {"noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["ks", 0],
                           "sigmas": ["sig", 0], "latent_image": ["lat", 0]}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["sca", 0], "vae": ["ckpt", 2]}},
        "out": {"class_type": "PreviewImage", "inputs": {"images": ["dec", 0]}},
    }


def plain_guider() -> dict:
    return {"class_type": "CFGGuider", "inputs": {"model": ["ckpt", 0], "positive": ["pos", 0],
                                                  "negative": ["neg", 0], "cfg": CFG}}


def minority_guider(**overrides) -> dict:
    settings = dict(iterations=10, lr=0.01, optimize_fraction=0.1, every_n_steps=1, sg_lambda=1.0, norm="plain",
                    anneal=True, fixed_level=0.75, between_steps="keep", token_per_image=True, diversity=0.0,
                    gradient_checkpointing=False, measure_gain=False)
    settings.update(overrides)
    return {"class_type": "PromptOptim_MinorityGuider",
            "inputs": {"model": ["ckpt", 0], "cfg": CFG, "positive": ["pos", 0], "negative": ["neg", 0], **settings}}


def date_guider(reward_name: str, **overrides) -> dict:
    settings = dict(rho=0.5, rule="cumulative", schedule="percent_of_steps", schedule_value="10", iterations=1,
                    prior_weight=0.0, decode_scale="1.0")
    settings.update(overrides)
    return {"class_type": "PromptOptim_DATEGuider",
            "inputs": {"model": ["ckpt", 0], "cfg": CFG, "positive": ["pos", 0], "negative": ["neg", 0],
                       "vae": ["ckpt", 2], "reward": ["rw", 0], **settings}}


def reward_node(reward_name: str) -> dict:
    return {"class_type": "PromptOptim_LoadRewardModel",
            "inputs": {"family": "clip", "weights": reward_name, "clip_backbone": "none",
                       "open_clip_architecture": "", "dtype": "auto"}}


# -- statistics ----------------------------------------------------------------------------------------
@dataclass
class Arm:
    name: str
    found: list[dict] = field(default_factory=list)  # extracted attributes per image
    wanted: list[dict] = field(default_factory=list)  # named attributes per image
    likelihood: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)  # the optimized reward (IPGO, rewriter)
    groups: list[tuple[str, list[str], list[dict]]] = field(default_factory=list)  # rewriter: prompt, rewrites, found
    images: list[np.ndarray] = field(default_factory=list)
    seconds: float = 0.0

    def named_accuracy(self) -> tuple[float, float]:
        hits = [float(f[a] == v) for f, w in zip(self.found, self.wanted) for a, v in w.items()]
        return _mean_se(hits)

    def all_named_right(self) -> tuple[float, float]:
        return _mean_se([float(all(f[a] == v for a, v in w.items())) for f, w in zip(self.found, self.wanted)])

    def log_prob(self) -> tuple[float, float]:
        """True log-probability of the drawn attribute combination (images where a shape was found)."""
        return _mean_se([Scene(**f).log_prob() for f in self.found if f["shape"] is not None])

    def rare_share(self) -> tuple[float, float]:
        """Share of rare values among the attributes the prompt did not name."""
        return _mean_se([float(f[a] in RARE[a]) for f, w in zip(self.found, self.wanted) if f["shape"] is not None
                         for a in ATTRIBUTES if a not in w])


def _mean_se(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")


def run_arm(comfy, name: str, graphs: list[tuple[str, dict]], likelihood: bool = False) -> Arm:
    arm = Arm(name)
    start = time.time()
    for prompt, graph in graphs:
        if likelihood:
            graph["lik"] = {"class_type": "PromptOptim_DenoisingLikelihood",
                            "inputs": {"model": ["ckpt", 0], "positive": ["pos", 0], "samples": ["sca", 0],
                                       "evaluation_seed": 0, "levels": 20}}
        comfy.run(graph)
        images = (comfy.node_outputs("dec")[0][0].numpy() * 255).round().astype(np.uint8)
        for image in images:
            arm.found.append(extract(image))
            arm.wanted.append(named(prompt))
            arm.images.append(image)
        if likelihood:
            arm.likelihood.extend(float(v) for v in comfy.node_outputs("lik")[0])  # an output list
    arm.seconds = time.time() - start
    return arm


def minority_experiment(comfy, ckpt: str, scale: Scale, ablations: bool = True) -> list[Arm]:
    prompts = MINORITY_PROMPTS[:scale.prompts]
    seeds = range(scale.seeds)

    def graphs(guider):
        return [(p, sampling_graph(ckpt, p, guider, 1000 + 10 * i + s, scale.batch, scale.steps,
                                   encode="PromptOptim_MinorityEncode"))
                for i, p in enumerate(prompts) for s in seeds]

    fraction = 0.1 if scale.steps >= 20 else 0.2  # the paper's first 10% (at least 2 steps)
    arms = [run_arm(comfy, "baseline", graphs(plain_guider()), likelihood=True),
            run_arm(comfy, "MinorityPrompt", graphs(minority_guider(optimize_fraction=fraction)), likelihood=True)]
    if ablations:
        arms += [run_arm(comfy, "no annealing", graphs(minority_guider(optimize_fraction=fraction, anneal=False))),
                 run_arm(comfy, "lambda 0", graphs(minority_guider(optimize_fraction=fraction, sg_lambda=0.0))),
                 run_arm(comfy, "whole embedding", graphs(minority_guider(optimize_fraction=fraction,
                                                                          optimize="whole_embedding")))]
    return arms


def date_prompts(count: int, seed: int = 5) -> list[str]:
    rng = np.random.default_rng(seed)  # uniform over values: rare combinations as often as common ones
    return [Scene(*(str(rng.choice(list(d))) for d in ATTRIBUTES.values())).caption() for _ in range(count)]


def date_experiment(comfy, ckpt: str, reward_name: str, scale: Scale, ablations: bool = True) -> list[Arm]:
    prompts = date_prompts(scale.prompts)

    def graphs(guider):
        out = []
        for i, p in enumerate(prompts):
            for s in range(scale.seeds):
                g = sampling_graph(ckpt, p, guider, 2000 + 10 * i + s, scale.batch, scale.steps,
                                   encode="PromptOptim_TextEncodeKeepText")
                g["rw"] = reward_node(reward_name)
                out.append((p, g))
        return out

    arms = [run_arm(comfy, "baseline", graphs(plain_guider())),
            run_arm(comfy, "DATE 10% of steps", graphs(date_guider(reward_name)))]
    if ablations:
        arms.append(run_arm(comfy, "DATE every step", graphs(date_guider(reward_name, schedule="every_k_steps",
                                                                          schedule_value="1"))))
    return arms


IPGO_SETTINGS = dict(epochs=15, learning_rate=0.01, lr_step=10, lr_gamma=0.9, prefix_tokens=10, suffix_tokens=10,
                     rank=300, rotation=False, conformity_weight=0.001, last_steps=2, clip_norm=1.0, init_seed=0)


def ipgo_graph(ckpt: str, reward_name: str, train_prompts: list[str], eval_prompts: list[str],
               seeds: list[tuple[int, int]], steps: int, accumulation: int) -> dict:
    """IPGO Optimize on train_prompts (seed of the first pair), then every eval prompt sampled raw and with the
    learned tokens (IPGO Encode with Learned Tokens) for every (seed, batch) pair, all scored by the reward."""
    graph = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
             "rw": reward_node(reward_name),
             "ipgo": {"class_type": "PromptOptim_IPGOOptimize", "inputs": {
                 "model": ["ckpt", 0], "clip": ["ckpt", 1], "vae": ["ckpt", 2], "reward": ["rw", 0],
                 "prompts": "\n".join(train_prompts), "negative": "", "sampling_seed": seeds[0][0], "steps": steps,
                 "cfg": CFG, "sampler_name": "euler", "scheduler": "normal", "width": 64, "height": 64,
                 "accumulation": accumulation, **IPGO_SETTINGS}},
             "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": ""}}}
    for i, prompt in enumerate(eval_prompts):
        graph[f"raw{i}"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": prompt}}
        graph[f"app{i}"] = {"class_type": "PromptOptim_IPGOApply", "inputs": {
            "clip": ["ckpt", 1], "tokens": ["ipgo", 0], "text": prompt, "negative": ""}}
        for j, (seed, batch) in enumerate(seeds):
            graph[f"lat{i}_{j}"] = {"class_type": "EmptyLatentImage",
                                    "inputs": {"width": 64, "height": 64, "batch_size": batch}}
            for arm, pos, neg in (("raw", [f"raw{i}", 0], ["neg", 0]), ("ipgo", [f"app{i}", 0], [f"app{i}", 1])):
                key = f"{arm}{i}_{j}"
                graph[f"ks_{key}"] = {"class_type": "KSampler", "inputs": {
                    "model": ["ckpt", 0], "positive": pos, "negative": neg, "latent_image": [f"lat{i}_{j}", 0],
                    "seed": seed, "steps": steps, "cfg": CFG, "sampler_name": "euler", "scheduler": "normal",
                    "denoise": 1.0}}
                graph[f"dec_{key}"] = {"class_type": "VAEDecode",
                                       "inputs": {"samples": [f"ks_{key}", 0], "vae": ["ckpt", 2]}}
                graph[f"score_{key}"] = {"class_type": "PromptOptim_ScoreImages", "inputs": {
                    "images": [f"dec_{key}", 0], "reward": ["rw", 0], "prompt": prompt, "prompt_per_line": False,
                    "top_k": 0}}
                graph[f"out_{key}"] = {"class_type": "PreviewImage", "inputs": {"images": [f"dec_{key}", 0]}}
    return graph


def ipgo_experiment(comfy, ckpt: str, reward_name: str, scale: Scale) -> list[Arm]:
    """Prompt-wise: tokens learned per prompt at one seed, evaluated at that seed (the images it optimized)
    and at an unseen seed. Batch-wise: tokens learned on several prompts, evaluated on unseen prompts."""
    prompts = date_prompts(scale.prompts + 2, seed=11)
    trained, unseen = prompts[:scale.prompts], prompts[scale.prompts:]
    arms = {name: Arm(name) for name in ("prompt-wise, training seed: raw", "prompt-wise, training seed: IPGO",
                                         "prompt-wise, unseen seed: raw", "prompt-wise, unseen seed: IPGO",
                                         "batch-wise, unseen prompts: raw", "batch-wise, unseen prompts: IPGO")}
    start = time.time()
    # one optimization per prompt serves both seeds: the training seed (batch 1, its noise) and an unseen one
    for i, p in enumerate(trained):
        graph = ipgo_graph(ckpt, reward_name, [p], [p], [(3000 + i, 1), (3500 + i, scale.batch)], scale.steps, 4)
        comfy.run(graph)
        for j, label in ((0, "training seed"), (1, "unseen seed")):
            _collect(comfy, arms, f"prompt-wise, {label}", p, f"0_{j}")
    prompt_wise_seconds = time.time() - start
    graph = ipgo_graph(ckpt, reward_name, trained, unseen, [(4000, scale.batch)], scale.steps, len(trained))
    comfy.run(graph)
    for i, p in enumerate(unseen):
        _collect(comfy, arms, "batch-wise, unseen prompts", p, f"{i}_0")
    for name, arm in arms.items():  # the time of the whole group (optimization + evaluation)
        arm.seconds = prompt_wise_seconds if name.startswith("prompt") else time.time() - start - prompt_wise_seconds
    return list(arms.values())


def _collect(comfy, arms: dict[str, Arm], group: str, prompt: str, key: str):
    for arm_kind in ("raw", "ipgo"):
        arm = arms[f"{group}: {'raw' if arm_kind == 'raw' else 'IPGO'}"]
        images = (comfy.node_outputs(f"dec_{arm_kind}{key}")[0][0].numpy() * 255).round().astype(np.uint8)
        arm.rewards.extend(float(v) for v in comfy.node_outputs(f"score_{arm_kind}{key}")[1])
        for image in images:
            arm.found.append(extract(image))
            arm.wanted.append(named(prompt))
            arm.images.append(image)


def same_noise_latent(graph: dict, count: int, width: int = 64, height: int = 64) -> list:
    """A latent of `count` rows that all draw the seed's first noise (LatentBatch keeps each row's batch_index,
    0 here, and the sampler draws noise per index): one batched run then gives each row the noise a batch-1
    run with that seed would. Adds nodes lat, lat2..latN; returns the link to the last."""
    graph["lat"] = {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}}
    for k in range(2, count + 1):
        graph[f"lat{k}"] = {"class_type": "LatentBatch",
                            "inputs": {"samples1": ["lat" if k == 2 else f"lat{k - 1}", 0], "samples2": ["lat", 0]}}
    return ["lat" if count == 1 else f"lat{count}", 0]


def rewriter_graph(ckpt: str, reward_name: str, prompt: str, policy: str | None, count: int, seed: int,
                   steps: int) -> dict:
    """prompt -> GFlowNet Rewriter (text, one rewrite per line) -> CLIP Text Encode, One Image per Line ->
    KSampler: all rewrites in one batch, every row drawing the same noise (the seed's, as a batch-1 run would)
    -> decode -> scored against the original prompt. policy None: the prompt itself, one image."""
    from lab.rewriter import MAX_NEW, MIN_NEW, TEMPLATE

    graph = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
             "rw": reward_node(reward_name),
             "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": ""}}}
    if policy is None:
        graph["pos"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": prompt}}
        latent = same_noise_latent(graph, 1)
    else:
        graph["rewriter"] = {"class_type": "PromptOptim_GFlowNetRewriter", "inputs": {
            "policy": policy, "prompt": prompt, "count": count, "mode": "sampling", "seed": seed, "temperature": 1.0,
            "top_p": 1.0, "min_new_tokens": MIN_NEW, "max_new_tokens": MAX_NEW, "diversity_penalty": 1.0,
            "template": TEMPLATE, "dtype": "fp32"}}
        graph["pos"] = {"class_type": "PromptOptim_TextEncodeBatch", "inputs": {"clip": ["ckpt", 1],
                                                                               "text": ["rewriter", 1]}}
        latent = same_noise_latent(graph, count)
    graph.update({
        "ks": {"class_type": "KSampler", "inputs": {
            "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": latent,
            "seed": seed, "steps": steps, "cfg": CFG, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["ckpt", 2]}},
        "score": {"class_type": "PromptOptim_ScoreImages", "inputs": {
            "images": ["dec", 0], "reward": ["rw", 0], "prompt": prompt, "prompt_per_line": False, "top_k": 0}},
        "out": {"class_type": "PreviewImage", "inputs": {"images": ["dec", 0]}}})
    return graph


def rewriter_experiment(comfy, ckpt: str, reward_name: str, scale: Scale) -> list[Arm]:
    import json

    from lab.checkpoint import REWRITERS_DIR
    from lab.rewriter import NAMES, PROMPTS

    prompts = PROMPTS[:scale.rewriter_prompts]
    objective = json.loads((REWRITERS_DIR / "training.json").read_text())["settings"]["gfn_objective"]
    arms = []
    for label, policy in (("prompt as written", None), ("reference policy p_ref", NAMES["reference"]),
                          (f"GFlowNet ({objective})", NAMES["gfn"]), ("reward maximization", NAMES["reward_max"])):
        arm, start = Arm(label), time.time()
        for i, prompt in enumerate(prompts):
            comfy.run(rewriter_graph(ckpt, reward_name, prompt, policy, scale.rewrites, 5000 + i, scale.steps))
            images = [(t.numpy() * 255).round().astype(np.uint8) for t in comfy.node_outputs("dec")[0][0]]
            rewrites = list(comfy.node_outputs("rewriter")[0]) if policy else [prompt]
            if policy and comfy.node_outputs("pos")[1][0] != len(rewrites):
                raise RuntimeError(f"{len(rewrites)} rewrites were encoded as {comfy.node_outputs('pos')[1][0]} rows")
            scores = [float(v) for v in comfy.node_outputs("score")[1]]
            if not len(images) == len(rewrites) == len(scores):
                raise RuntimeError(f"{len(rewrites)} rewrites gave {len(images)} images and {len(scores)} scores")
            found = [extract(image) for image in images]
            arm.found += found
            arm.wanted += [named(prompt)] * len(found)
            arm.images += images
            arm.rewards += scores
            arm.groups.append((prompt, rewrites, found))
        arm.seconds = time.time() - start
        arms.append(arm)
    return arms


def attribute_diversity(found: list[dict]) -> float:
    """Mean share of the five attributes on which two images of the set differ, over pairs (0: all alike)."""
    pairs = [(a, b) for i, a in enumerate(found) for b in found[i + 1:]]
    return float(np.mean([np.mean([a[k] != b[k] for k in ATTRIBUTES]) for a, b in pairs])) if pairs else 0.0


def rewriter_diversity(arm: Arm) -> dict[str, tuple[float, float]]:
    """Per prompt, then mean ± se over prompts: distinct rewrites, text and image (attribute) diversity."""
    from core.gfn_rewriter.rewards import text_diversity

    return {"distinct": _mean_se([len(set(r)) / len(r) for _, r, _ in arm.groups]),
            "text": _mean_se([text_diversity(r) for _, r, _ in arm.groups]),
            "image": _mean_se([attribute_diversity(f) for _, _, f in arm.groups])}


def rewriter_verdict(arms: list[Arm], reward_margin: float = 0.05) -> dict[str, bool]:
    """GFlowNet vs reward maximization: comparable reward (at most `reward_margin` below), more diverse."""
    gfn, rmax = next(a for a in arms if a.name.startswith("GFlowNet")), next(a for a in arms if a.name.startswith("reward"))
    g, r = rewriter_diversity(gfn), rewriter_diversity(rmax)
    return {f"reward comparable (GFlowNet at most {reward_margin} below)":
                _mean_se(gfn.rewards)[0] >= _mean_se(rmax.rewards)[0] - reward_margin,
            "rewrites more diverse": g["text"][0] > r["text"][0],
            "images more diverse": g["image"][0] > r["image"][0]}


def rewriter_table(arms: list[Arm]) -> list[str]:
    lines = ["| arm | images | lab reward vs prompt ↑ | prompt's shape+color kept ↑ | distinct rewrites | "
             "text diversity ↑ | image diversity ↑ | s |", "|---|---|---|---|---|---|---|---|"]
    for arm in arms:
        d = rewriter_diversity(arm)
        lines.append(f"| {arm.name} | {len(arm.found)} | {_fmt(_mean_se(arm.rewards))} | {_fmt(arm.all_named_right())} | "
                     f"{_fmt(d['distinct'])} | {_fmt(d['text'])} | {_fmt(d['image'])} | {arm.seconds:.0f} |")
    lines.append("")
    lines.append("Claim (GFlowNet vs reward maximization): " + "; ".join(
        f"{k}: {'holds' if v else 'does NOT hold'}" for k, v in rewriter_verdict(arms).items()))
    return lines


# -- report --------------------------------------------------------------------------------------------
def _fmt(pair: tuple[float, float], digits: int = 3) -> str:
    mean, se = pair
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def minority_table(arms: list[Arm]) -> list[str]:
    base = arms[0]
    lines = ["| arm | images | log p(attributes) ↓ | rare share (unnamed) ↑ | named accuracy | likelihood estimate ↓ | s |",
             "|---|---|---|---|---|---|---|"]
    for arm in arms:
        lik = _fmt(_mean_se(arm.likelihood), 4) if arm.likelihood else "—"
        lines.append(f"| {arm.name} | {len(arm.found)} | {_fmt(arm.log_prob())} | {_fmt(arm.rare_share())} | "
                     f"{_fmt(arm.named_accuracy())} | {lik} | {arm.seconds:.0f} |")
    method = arms[1]
    verdict = minority_verdict(base, method)
    lines.append("")
    lines.append("Claim (MinorityPrompt vs baseline): " + "; ".join(f"{k}: {'holds' if v else 'does NOT hold'}"
                                                                  for k, v in verdict.items()))
    return lines


def minority_verdict(base: Arm, method: Arm, accuracy_margin: float = 0.1) -> dict[str, bool]:
    out = {"log p falls": method.log_prob()[0] < base.log_prob()[0],
           "rare share rises": method.rare_share()[0] > base.rare_share()[0],
           f"named accuracy within {accuracy_margin} of baseline":
               method.named_accuracy()[0] >= base.named_accuracy()[0] - accuracy_margin}
    if base.likelihood and method.likelihood:
        out["likelihood estimate falls"] = float(np.mean(method.likelihood)) < float(np.mean(base.likelihood))
    return out


def date_table(arms: list[Arm]) -> list[str]:
    lines = ["| arm | images | named-attribute accuracy ↑ | all five right ↑ | s |", "|---|---|---|---|---|"]
    for arm in arms:
        lines.append(f"| {arm.name} | {len(arm.found)} | {_fmt(arm.named_accuracy())} | "
                     f"{_fmt(arm.all_named_right())} | {arm.seconds:.0f} |")
    lines.append("")
    lines.append("Claim (DATE vs baseline, extractor accuracy rises): " + "; ".join(
        f"{a.name}: {'holds' if a.named_accuracy()[0] > arms[0].named_accuracy()[0] else 'does NOT hold'}"
        for a in arms[1:]))
    return lines


def ipgo_table(arms: list[Arm]) -> list[str]:
    lines = ["| arm | images | lab reward ↑ | named-attribute accuracy ↑ | all five right ↑ | s (group) |",
             "|---|---|---|---|---|---|"]
    for arm in arms:
        lines.append(f"| {arm.name} | {len(arm.found)} | {_fmt(_mean_se(arm.rewards))} | "
                     f"{_fmt(arm.named_accuracy())} | {_fmt(arm.all_named_right())} | {arm.seconds:.0f} |")
    lines.append("")
    lines.append("Claim (IPGO vs raw prompt, same seeds): " + "; ".join(
        f"{group}: {'; '.join(f'{k} {v}' for k, v in verdict.items())}"
        for group, verdict in ipgo_verdict(arms).items()))
    return lines


def ipgo_verdict(arms: list[Arm]) -> dict[str, dict[str, str]]:
    out = {}
    for raw, tuned in zip(arms[0::2], arms[1::2]):
        group = raw.name.rsplit(":", 1)[0]
        out[group] = {"reward": "rises" if _mean_se(tuned.rewards)[0] > _mean_se(raw.rewards)[0] else "does NOT rise",
                      "accuracy": "rises" if tuned.named_accuracy()[0] > raw.named_accuracy()[0] else
                      "does NOT rise"}
    return out


def grid(arms_by_experiment: dict[str, list[Arm]], per_row: int = 8):
    from PIL import Image

    rows = [(f"{exp}: {arm.name}", arm.images[:per_row]) for exp, arms in arms_by_experiment.items() for arm in arms]
    canvas = Image.new("RGB", (per_row * 64, len(rows) * 64), (128, 128, 128))
    for r, (_, images) in enumerate(rows):
        for c, image in enumerate(images):
            canvas.paste(Image.fromarray(image), (c * 64, r * 64))
    return canvas, [label for label, _ in rows]


TABLES = {"MinorityPrompt": minority_table, "DATE": date_table, "IPGO": ipgo_table,
          "GFlowNet rewriter": rewriter_table}


def start_comfy():
    from devtools.base_dir import make_base_dir
    from devtools.inprocess import InProcessComfy
    from lab.checkpoint import lab_checkpoint_path, lab_reward_folder, lab_rewriter_folders

    ckpt, reward = lab_checkpoint_path(), lab_reward_folder()
    base = make_base_dir(Path(tempfile.mkdtemp(prefix="lab_measure_")), checkpoints=[ckpt], rewards=[reward],
                         prompt_rewriters=lab_rewriter_folders())
    return InProcessComfy(base), ckpt.name, reward.name


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=list(SCALES), default="full")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--grid", type=Path, default=None)
    ap.add_argument("--only", nargs="+", choices=list(TABLES), default=list(TABLES))
    args = ap.parse_args()
    scale = SCALES[args.scale]
    comfy, ckpt, reward = start_comfy()
    started = time.time()
    experiments = {}
    for name in args.only:
        experiments[name] = (minority_experiment(comfy, ckpt, scale) if name == "MinorityPrompt" else
                             date_experiment(comfy, ckpt, reward, scale) if name == "DATE" else
                             ipgo_experiment(comfy, ckpt, reward, scale) if name == "IPGO" else
                             rewriter_experiment(comfy, ckpt, reward, scale))
    lines = [f"Scale `{args.scale}`: {scale.prompts} prompts x {scale.seeds} seeds x {scale.batch} images, "
             f"euler / normal, {scale.steps} steps, cfg {CFG}, 64 px (rewriter: {scale.rewriter_prompts} prompts x "
             f"{scale.rewrites} rewrites, one image each); ± = standard error; "
             f"{time.time() - started:.0f} s in all."]
    for name, arms in experiments.items():
        lines += ["", f"### {name}", ""] + TABLES[name](arms)
    print("\n".join(lines))
    if args.out:
        import torch

        from benchmarks import harness

        harness.write_report(args.out, "Fidelity lab: each method against its paper's claim", "lab.measure", lines,
                             cuda=torch.cuda.is_available(), wall_s=time.time() - started)
    if args.grid:
        image, labels = grid(experiments)
        image.save(args.grid)
        print("grid rows:", labels)


if __name__ == "__main__":
    main()
