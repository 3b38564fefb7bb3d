"""The pack's DATE guider reproduces the authors' released code (aailab-kaist/DATE @ d7dcd1e), SD1.5, CLIP reward.

tests/fixtures/date_authors/make_fixture.py ran their StableDiffusionDATECLIPPipeline (their vendored
diffusers 0.16, in an isolated environment) on models whose every weight is the shared fill rule's
function of its key, and recorded per update step the reward, the gradient norm, the embedding's distance
from the prompt's own and the latent, plus the final latent and image. Here the same weights, in ComfyUI's
single-file layout (tests/fixtures/date_authors/comfy_assets.py), go through a real graph in ComfyUI's
executor: checkpoint loader, text encodes, Load Reward Model, DATE Guider, SamplerCustomAdvanced.

Settings: what the fixture needs (rho, cfg, schedule every step, 3 steps, reward) is set; everything else,
the update rule included, is the DATE Guider's default, so the defaults must be the authors' released
command (cumulative rule, one gradient step, no prior, full-size decode). The sigmas are theirs: DDIM's
ddim_uniform timesteps 667, 334, 1 and, as their loop ends at t = 0 (alpha_bar[0], not 1), the last level
sigma_min instead of 0 (BasicScheduler -> FlipSigmas -> SetFirstSigma(sigma_min) -> FlipSigmas).
Sampler ddim (Euler in k-diffusion coordinates = deterministic DDIM). Latents are compared in diffusers
coordinates: z = x / sqrt(1 + sigma^2), and for the output latent z = samples * 0.18215 / sqrt(1 + sigma_min^2).
"""
import math
import sys
from pathlib import Path

import pytest
import torch

from devtools.base_dir import link_models

FIXTURE = Path(__file__).parent / "fixtures" / "date_authors"
# The fixture recorded float32 draws of torch's vectorized normal sampler (AVX2 and AVX-512 give the same
# bits): the fill rule's weights, ComfyUI's seeded noise. Under the portable kernels
# (ATEN_CPU_CAPABILITY=default, or a CPU without AVX2) torch draws other float32 values for the same seeds,
# so ComfyUI's own images differ there and these numbers cannot be reproduced; the tests say so instead of
# failing on a checksum.
pytestmark = pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() == "DEFAULT", reason=(
    "the fixture's seeded float32 draws (weights, noise) come from torch's vectorized sampler; "
    "the portable kernels draw other values"))
NODE = "PromptOptim_DATEGuider"


def _assets():
    import importlib.util

    spec = importlib.util.spec_from_file_location("date_authors_comfy_assets", FIXTURE / "comfy_assets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


assets = _assets()

# Stated tolerances. Both sides compute in float32 on the CPU with different kernels (SDPA vs explicit
# attention, GEMM blocking, alpha_bar from a float64 vs a float32 cumprod); DATE then normalizes the reward's
# gradient (|g| ~ 2e-2 .. 5e-5 here), so relative errors in g reach the embedding and, amplified by CFG 7.5
# over 3 steps, the latents. The fixture decodes with SD's KL VAE (smooth: SiLU, GroupNorm), through which
# float32 gradients carry ~6e-6 relative error; the authors' own code agrees with itself between 1 and 2
# threads to <= 3.5e-6 in every recorded quantity. Measured here (ours vs theirs, 2-core AMD, 2 threads):
# grad norm 6.3e-6, latents 1.7e-6, distance 6.6e-7, reward 4.2e-7, final latent 1.8e-6: >= 100x below
# these bounds. The paper rule (the seeded bug) misses the distance by 3e3 x its bound.
TOLERANCES = {
    "initial latent": 1e-6,  # relative to max |z|: the same noise, the same sigma_0
    "embedding token norms": 1e-5,  # relative: ComfyUI's CLIP vs transformers 4.28's, same fp16 weights
    "sigmas": 1e-6,  # relative
    "reward": 1e-5,  # absolute, cosine similarity in [-1, 1]
    "grad norm": 1e-3,  # relative to each step's largest
    "distance": 1e-4,  # absolute, ||c - c_original||_F with rho 0.5 per step
    "latent": 1e-4,  # relative to the step's max |z|
    "final latent": 1e-4,  # relative to max |z|
}


def node_default(comfy, node: str, name: str):
    spec = comfy.nodes.NODE_CLASS_MAPPINGS[node].INPUT_TYPES()["required"][name]
    return spec[1]["default"]


@pytest.fixture(scope="module")
def authors() -> dict:
    return assets.expected()


@pytest.fixture(scope="module")
def date_models(base_dir) -> tuple[str, str]:
    checkpoint, reward = assets.checkpoint_path(), assets.reward_path()
    link_models(base_dir, checkpoints=[checkpoint], rewards=[reward])
    return checkpoint.name, reward.name


@pytest.fixture
def recorder(comfy, monkeypatch):
    """Each update step's starting state x, sigma list and embeddings before/after (read only)."""
    nodes_module = sys.modules[comfy.nodes.NODE_CLASS_MAPPINGS[NODE].__module__]
    step_cls = sys.modules[nodes_module.date_guider.__module__].DateStep
    original = step_cls.optimize
    records = []

    def optimize(self, at):
        before = self._current.detach().clone()
        out = original(self, at)
        records.append({"step": at.step, "sigma": at.sigma, "sigmas": list(at.sigmas),
                        "x": at.x.detach().float().cpu().clone(), "before": before.float().cpu(),
                        "after": self._current.detach().float().cpu().clone()})
        return out

    monkeypatch.setattr(step_cls, "optimize", optimize)
    return records


def date_graph(comfy, ckpt: str, reward: str, authors: dict, *, batch: int, rule: str | None = None,
               steps_run: int | None = None, decode: bool = False) -> dict:
    s = authors["settings"]
    guider = {"model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0], "vae": ["ckpt", 2],
              "reward": ["rw", 0], "cfg": s["guidance_scale"], "rho": s["lr_upt_prompt"],
              "schedule": "every_k_steps", "schedule_value": str(s["skip_freq"])}
    for name in ("rule", "iterations", "prior_weight", "decode_scale"):  # the node's defaults
        guider[name] = node_default(comfy, NODE, name)
    if rule is not None:
        guider["rule"] = rule
    graph = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": "PromptOptim_TextEncodeKeepText", "inputs": {"clip": ["ckpt", 1], "text": s["prompt"]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": s["negative_prompt"]}},
        "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": s["width"], "height": s["height"],
                                                              "batch_size": batch}},
        "rw": {"class_type": "PromptOptim_LoadRewardModel",
               "inputs": {"family": "clip", "weights": reward, "clip_backbone": "none", "open_clip_architecture": "",
                          "dtype": "auto"}},
        "guider": {"class_type": NODE, "inputs": guider},
        "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": s["seed"]}},
        "ks": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddim"}},
        "sig": {"class_type": "BasicScheduler", "inputs": {"model": ["ckpt", 0], "scheduler": "ddim_uniform",
                                                           "steps": s["steps"], "denoise": 1.0}},
        # their loop ends at alpha_bar[0]: the last sigma is sigma_min, not 0
        "flip": {"class_type": "FlipSigmas", "inputs": {"sigmas": ["sig", 0]}},
        "smin": {"class_type": "SamplingPercentToSigma",
                 "inputs": {"model": ["ckpt", 0], "sampling_percent": 1.0, "return_actual_sigma": True}},
        "last": {"class_type": "SetFirstSigma", "inputs": {"sigmas": ["flip", 0], "sigma": ["smin", 0]}},
        "sigmas": {"class_type": "FlipSigmas", "inputs": {"sigmas": ["last", 0]}},
        "sca": {"class_type": "SamplerCustomAdvanced",
                "inputs": {"noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["ks", 0],
                           "sigmas": ["sigmas", 0], "latent_image": ["lat", 0]}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sca", 0], "filename_prefix": "date_authors"}},
    }
    if steps_run is not None:  # only the first steps_run steps of the same schedule
        graph["split"] = {"class_type": "SplitSigmas", "inputs": {"sigmas": ["sigmas", 0], "step": steps_run}}
        graph["sca"]["inputs"]["sigmas"] = ["split", 0]
    if decode:
        graph["dec"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sca", 0], "vae": ["ckpt", 2]}}
        graph["show"] = {"class_type": "PreviewImage", "inputs": {"images": ["dec", 0]}}
    return graph


def _t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _rel(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours.double() - theirs).abs().max() / theirs.abs().max())


def _abs(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours.double() - theirs).abs().max())


def step_deviations(guider, records, authors, samples: slice) -> dict[str, list[float]]:
    """Per quantity, one deviation per recorded step (ours vs theirs, samples `samples` of the fixture)."""
    steps = authors["steps"]
    updates = guider.last_run.updates
    reference = guider.last_run.reference.float()
    assert [r["step"] for r in records] == [u[0] for u in updates] == list(range(len(records)))
    out = {k: [] for k in ("latent", "reward", "grad norm", "distance")}
    for record, (step, sigma, iterations), theirs in zip(records, updates, steps):
        assert len(iterations) == 1, "one gradient step per update (their num_upt_prompt)"
        z = record["x"].double() / math.sqrt(1 + record["sigma"] ** 2)  # k-diffusion x -> diffusers z
        out["latent"].append(_rel(z, _t(theirs["latent"])[samples]))
        out["reward"].append(_abs(iterations[0].rewards, _t(theirs["reward"])[samples]))
        grad = _t(theirs["grad_norm"])[samples]
        out["grad norm"].append(float((iterations[0].grad_norms.double() - grad).abs().max() / grad.abs().max()))
        distance = (record["after"] - reference).flatten(1).norm(dim=1)
        out["distance"].append(_abs(distance, _t(theirs["distance_after"])[samples]))
    return out


def test_date_guider_reproduces_the_authors_code(comfy, date_models, authors, recorder):
    from comfy.sample import prepare_noise

    ckpt, reward = date_models
    s = authors["settings"]
    comfy.run(date_graph(comfy, ckpt, reward, authors, batch=s["batch"], decode=True))
    guider = comfy.node_outputs("guider")[0][0]
    samples = comfy.node_outputs("sca")[0][0]["samples"]
    clip = comfy.node_outputs("ckpt")[1][0]
    positive = comfy.node_outputs("pos")[0][0][0][0]
    negative = comfy.node_outputs("neg")[0][0][0][0]
    deviations = {}

    # the inputs: defaults that must be the authors' command, tokens, embeddings, noise, sigmas
    assert guider.method.settings.rule == "cumulative", f"the node's default rule is {guider.method.settings.rule!r}"
    assert ((guider.method.settings.iterations, guider.method.settings.prior_weight)
            == (s["num_upt_prompt"], s["weight_prior"]))
    assert guider.method.reward_prompt == s["prompt"]
    assert [t for t, _ in clip.tokenize(s["prompt"])["l"][0]] == authors["input_ids"]
    assert [t for t, _ in clip.tokenize(s["negative_prompt"])["l"][0]] == authors["uncond_input_ids"]
    backbone = guider.method.reward.reward.backbone
    tokens = backbone.tokenizer([s["prompt"]], padding="max_length", max_length=77, return_tensors="pt")
    n = len(authors["reward_text_inputs"]["input_ids"][0])  # theirs: padding=True (to the longest)
    assert tokens["input_ids"][0, :n].tolist() == authors["reward_text_inputs"]["input_ids"][0]
    assert tokens["attention_mask"][0].tolist() == [1] * n + [0] * (77 - n)
    emb = authors["embedding"]
    deviations["embedding token norms"] = max(_rel(positive[0].norm(dim=-1), _t(emb["token_norms"])),
                                              _rel(negative[0].norm(dim=-1), _t(emb["uncond_token_norms"])))
    noise = prepare_noise(torch.zeros(s["batch"], 4, s["height"] // 8, s["width"] // 8), s["seed"])
    assert float(noise.double().sum()) == pytest.approx(authors["noise"]["sum"], rel=1e-9, abs=1e-6)
    theirs_sigmas = [math.sqrt((1 - a) / a) for a in authors["alphas_cumprod"]]
    deviations["sigmas"] = _rel(_t(recorder[0]["sigmas"]), _t(theirs_sigmas))
    deviations["initial latent"] = _rel(recorder[0]["x"].double() / math.sqrt(1 + recorder[0]["sigma"] ** 2),
                                        _t(authors["steps"][0]["latent"]))

    # the DATE loop
    assert len(recorder) == s["steps"] and len(guider.last_run.updates) == s["steps"]
    per_step = step_deviations(guider, recorder, authors, slice(None))
    deviations.update({k: max(v) for k, v in per_step.items()})
    sigma_min = recorder[0]["sigmas"][-1]
    final = samples.double() * 0.18215 / math.sqrt(1 + sigma_min ** 2)  # ComfyUI's latent -> diffusers z
    deviations["final latent"] = _rel(final, _t(authors["final_latent"]))
    image = comfy.node_outputs("dec")[0][0].movedim(-1, 1)
    pooled = torch.nn.functional.avg_pool2d(image.float(), 8)
    image_deviation = _abs(pooled, _t(authors["final_image_pooled"]))

    report = {k: f"{v:.2e}" for k, v in deviations.items()} | {"per step": per_step,
                                                                "final image (pooled, abs)": f"{image_deviation:.2e}"}
    print("DATE vs the authors' code:", report)
    too_far = {k: (v, TOLERANCES[k]) for k, v in deviations.items() if not v <= TOLERANCES[k]}
    assert not too_far, f"outside tolerance (deviation, tolerance): {too_far}; all: {report}"
    # the final image: ComfyUI decodes x = z / sqrt(alpha_bar[0]), their pipeline decodes z (the latents
    # differ by the factor 1.000425 there), so only a loose bound; see the report
    assert image_deviation < 5e-3, image_deviation
    # the fixture is not degenerate: the updates move the embedding, each sample by its own gradient
    theirs = authors["steps"]
    assert theirs[-1]["distance_after"][0] > 2 * s["lr_upt_prompt"]
    assert abs(theirs[0]["grad_norm"][0] - theirs[0]["grad_norm"][1]) > 0.1 * theirs[0]["grad_norm"][0]


def test_paper_rule_misses_the_authors_code(comfy, date_models, authors, recorder):
    """The seeded bug: with rule = paper (c = c_original + rho g/|g|) the second update lands at distance rho
    from the prompt's embedding instead of adding up, and the state after it moves away from theirs.
    The first two steps of the same schedule (SplitSigmas) and the first sample suffice."""
    ckpt, reward = date_models
    comfy.run(date_graph(comfy, ckpt, reward, authors, batch=1, rule="paper", steps_run=2))
    guider = comfy.node_outputs("guider")[0][0]
    samples = comfy.node_outputs("sca")[0][0]["samples"]
    per_step = step_deviations(guider, recorder, authors, slice(0, 1))
    # the first update is the same under both rules, and the run starts from the fixture's first sample
    assert per_step["distance"][0] <= TOLERANCES["distance"] and per_step["latent"][0] <= TOLERANCES["latent"]
    assert per_step["reward"][1] <= TOLERANCES["reward"]  # measured before the second update
    # ... the second is not: it is ~3e3 x the tolerance away
    assert per_step["distance"][1] > 100 * TOLERANCES["distance"], per_step
    sigma = recorder[-1]["sigmas"][-1]
    after_two = samples.double() * 0.18215 / math.sqrt(1 + sigma ** 2)  # the state the third step starts from
    deviation = _rel(after_two, _t(authors["steps"][2]["latent"])[0:1])
    print("paper rule vs the authors' code:", per_step, f"latent after step 2: {deviation:.2e}")
    assert deviation > 10 * TOLERANCES["latent"], deviation
