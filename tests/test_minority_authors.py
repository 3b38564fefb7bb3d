"""The pack's MinorityPrompt nodes reproduce the authors' released code (soobin-um/MinorityPrompt @ e6df875).

tests/fixtures/minority_authors/make_fixture.py ran their SD1.5 BaseDDIM and SDXL "ddim" solver
(--prompt_opt --dynamic_pr, init word "cool", 4 DDIM steps, the first 2 optimized) in an isolated
environment on small models whose weights are a pure function of their key
(tests/fixtures/authors_sd/fill_rule.py), with ComfyUI's initial noise and the pack's re-noise draws
fed in, and recorded the input ids, the objective of every inner iteration, the token after every
optimized step, and the latents of every step. Here the same weights are mapped into ComfyUI
single-file checkpoints (devtools/diffusers_layout.py) and a real graph runs in ComfyUI's executor:
CheckpointLoaderSimple -> MinorityPrompt Text Encode / CLIPTextEncode (negative) -> MinorityPrompt
Guider (node defaults for every setting the fixture does not need) -> SamplerCustomAdvanced ("ddim").

Their schedule is reproduced through settings, not by changing the pack: their code prepends 1.0 to
alphas_cumprod, so alpha(t) is alpha_bar[t - 1] while the UNet is fed t (main step and re-noise
branch; latent_sdxl.py does the same). A small test node gives the model a ModelSamplingDiscrete whose
table at index t is their shifted alpha_bar (ComfyUI's own extension point, as ModelSamplingDiscrete
does) and outputs the sigmas of their timesteps 751, 501, 251, 1 with a final 0. ComfyUI's ddim/euler
step is then their deterministic DDIM step, the fed timesteps are theirs, and the pack's default
re-noise level s = T - t_next is their `1000 - (t - skip + 1)` (498, 748). Their sampler returns
decode(z0t) of the last step, which is what a final sigma of 0 gives.
Text encoders run in float32 (ComfyUI's --fp32-text-enc; on the CPU ComfyUI would round them to fp16).
SDXL's size conditioning is what ComfyUI gives when no node sets one: the latent's size x 8 (224) for
original and target size, crop 0 (comfy.samplers.encode_model_conds); the fixture passes the same
original_size / target_size to their sample().

SDXL: with transformers 4.30.2 their CLIP-G pooled output is taken at argmax(input_ids), i.e. at the
placeholder (id 49408 > EOS 49407) whenever the placeholder is in the prompt; ComfyUI pools at the EOS.
The pack matches the fixture run with EOS pooling and is known to differ from the as-released run
(xfail, strict: when the pack follows their pooling, swap the two).
"""
from __future__ import annotations

import base64
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURE = Path(__file__).parent / "fixtures" / "minority_authors"
# The fixture recorded float32 draws of torch's vectorized normal sampler (AVX2 and AVX-512 give the same
# bits): the fill rule's weights, ComfyUI's seeded noise and the pack's re-noise draws. Under the portable kernels
# (ATEN_CPU_CAPABILITY=default, or a CPU without AVX2) torch draws other float32 values for the same seeds,
# so ComfyUI's own images differ there and these numbers cannot be reproduced; the tests say so instead of
# failing on a checksum.
pytestmark = pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() == "DEFAULT", reason=(
    "the fixture's seeded float32 draws (weights, noise) come from torch's vectorized sampler; "
    "the portable kernels draw other values"))
FILL_RULE = Path(__file__).parent / "fixtures" / "authors_sd" / "fill_rule.py"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
SETTINGS = EXPECTED["settings"]
SCHEDULE_NODE = "PromptOptimTest_AuthorsSchedule"
GUIDER = "PromptOptim_MinorityGuider"
SCALE = {"sd15": 0.18215, "sdxl": 0.13025}  # ComfyUI's latent formats: LATENT outputs are z / scale

# Tolerances, as max |ours - theirs| / max |theirs| over a quantity (scalars: relative error).
# Both sides compute in float32 with different kernels and formula orders (diffusers vs ComfyUI UNet and
# CLIP, alpha-based vs sigma-based DDIM, float32 vs float64 sums of J); single operations differ by ~1e-7
# relative, and the differences pass through the text encoder, two UNet calls, a backward pass and Adam
# (whose first steps are ~lr * sign(g) per element, so they do not shrink) and then through CFG (x7.5)
# and later steps. Measured on this machine (2-core AMD, 1 thread): SD1.5 objectives 1.4e-7, re-noise
# sigma 6.9e-8, token 6.9e-7, token distance 5.9e-8, latents <= 2.5e-6; SDXL of the same order. The
# tolerances sit >= 40x above that and 2 to 6 orders of magnitude below what the seeded changes of the
# method move (test_sd15_seeded_changes_break_the_equivalence: norm "squared" moves the objectives by ~3e2,
# between_steps "original" the latents by ~5e-2; anneal_level "this_step" re-noises at another timestep).
TOLERANCE = {"objectives": 1e-5, "renoise_sigma": 1e-5, "token": 1e-4, "token_distance": 1e-4,
             "z_in": 1e-4, "z0t": 1e-4, "final": 1e-4}


def tensor(d: dict) -> torch.Tensor:
    raw = np.frombuffer(base64.b64decode(d["float32_le_base64"]), dtype="<f4").copy()
    return torch.from_numpy(raw).reshape(d["shape"])


def deviation(ours, theirs) -> float:
    ours = torch.as_tensor(ours, dtype=torch.float64).cpu()
    theirs = torch.as_tensor(theirs, dtype=torch.float64).cpu().reshape(ours.shape)
    scale = float(theirs.abs().max())
    return float((ours - theirs).abs().max()) / max(scale, 1e-30)


# -- their schedule through ComfyUI's model_sampling --------------------------------------------------
def authors_model_sampling(record: dict):
    """A ModelSamplingDiscrete (eps) whose sigma at index t is that of their shifted alpha_bar[t]."""
    import comfy.model_sampling

    shifted = tensor(record["schedule"]["alphas_cumprod_shifted"]).double()  # 1001 entries, [0] = 1.0
    table = shifted[:1000].clone()
    sigmas = ((1 - table) / table) ** 0.5  # as ModelSamplingDiscrete._register_schedule computes them
    sigmas[0] = sigmas[1] / 2  # index 0 (alpha_bar 1, sigma 0) is never used; keep log-sigmas increasing

    class AuthorsSampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
        pass

    ms = AuthorsSampling()
    ms.set_sigmas(sigmas)
    return ms


class StepLog:
    """A post-CFG hook: the sampler state and the CFG x0 of every step, as the sampler sees them."""

    rows: list[dict] = []  # class-level: ComfyUI may deep-copy the hook with the model options

    def __call__(self, args):
        sigma = args["sigma"].reshape(-1)[0].detach().cpu().float()
        x = args["input"].detach().cpu().float()
        StepLog.rows.append({"sigma": float(sigma), "z": x / (sigma ** 2 + 1.0) ** 0.5,  # EPS.calculate_input
                          "x0": args["denoised"].detach().cpu().float()})
        return args["denoised"]


LOG = StepLog()


class AuthorsSchedule:
    """Test node: (model with their alpha_bar table + the step log, their sigmas with a final 0)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "family": (["sd15", "sdxl"],)}}

    RETURN_TYPES = ("MODEL", "SIGMAS")
    FUNCTION = "patch"
    CATEGORY = "testing"

    def patch(self, model, family):
        record = expected_record(family)
        ms = authors_model_sampling(record)
        m = model.clone()
        m.add_object_patch("model_sampling", ms)
        m.set_model_sampler_post_cfg_function(LOG)
        timesteps = record["schedule"]["timesteps"]
        sigmas = torch.cat([ms.sigmas[torch.tensor(timesteps)], torch.zeros(1)])
        return (m, sigmas)


def expected_record(family: str, variant: str = "pooled_at_eos") -> dict:
    return EXPECTED["sd15"] if family == "sd15" else EXPECTED["sdxl"][variant]


@pytest.fixture(scope="module")
def schedule_node(comfy):
    import nodes

    nodes.NODE_CLASS_MAPPINGS[SCHEDULE_NODE] = AuthorsSchedule
    yield SCHEDULE_NODE
    nodes.NODE_CLASS_MAPPINGS.pop(SCHEDULE_NODE, None)


@pytest.fixture(scope="module")
def authors_checkpoints(base_dir):
    from devtools.base_dir import link_models
    from devtools.diffusers_layout import fixture_checkpoint_path

    paths = {}

    def get(family):
        if family not in paths:
            paths[family] = fixture_checkpoint_path(family, FIXTURE / f"keys_{family}.json", FILL_RULE)
            link_models(base_dir, checkpoints=[paths[family]])
        return paths[family].name
    return get


# -- the pack's run -------------------------------------------------------------------------------------
def guider_defaults(comfy) -> dict:
    """Every setting input of the guider node at the default a fresh node has (required and optional)."""
    inputs = comfy.nodes.NODE_CLASS_MAPPINGS[GUIDER].INPUT_TYPES()
    out = {}
    for section in ("required", "optional"):
        for name, spec in inputs.get(section, {}).items():
            if name in ("model", "positive", "negative"):
                continue
            options = spec[1] if len(spec) > 1 else {}
            if "default" in options:
                out[name] = options["default"]
            elif isinstance(spec[0], list):
                out[name] = spec[0][0]
    return out


def authors_graph(comfy, ckpt: str, family: str, **overrides) -> dict:
    record = expected_record(family)
    side = 8 * SETTINGS["latent"][-1]
    guider = dict(guider_defaults(comfy))
    # only what the fixture needs; norm, between_steps, anneal_level, sg_lambda ... stay the node defaults
    guider.update(cfg=record["cfg"], iterations=record["iterations"], lr=SETTINGS["lr"],
                  optimize_fraction=SETTINGS["t_lo"])
    guider.update(overrides)
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "sched": {"class_type": SCHEDULE_NODE, "inputs": {"model": ["ckpt", 0], "family": family}},
        "pos": {"class_type": "PromptOptim_MinorityEncode",
                "inputs": {"clip": ["ckpt", 1], "text": SETTINGS["prompt"], "position": "end", "init": "word",
                           "init_word": SETTINGS["init_word"], "init_seed": 0}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": SETTINGS["null_prompt"]}},
        "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": side, "height": side, "batch_size": 1}},
        "guider": {"class_type": GUIDER, "inputs": {"model": ["sched", 0], "positive": ["pos", 0],
                                                    "negative": ["neg", 0], **guider}},
        "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": SETTINGS["seed"]}},
        "ks": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddim"}},
        "sca": {"class_type": "SamplerCustomAdvanced",
                "inputs": {"noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["ks", 0],
                           "sigmas": ["sched", 1], "latent_image": ["lat", 0]}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sca", 0], "filename_prefix": "minority_authors"}},
    }


def run_pack(comfy, ckpt: str, family: str, **overrides) -> dict:
    from comfy.cli_args import args

    LOG.rows.clear()
    fp32 = args.fp32_text_enc
    args.fp32_text_enc = True  # as `--fp32-text-enc`: the CLIP is loaded in float32 like theirs
    start = time.time()
    try:
        with torch.inference_mode(False):
            comfy.run(authors_graph(comfy, ckpt, family, **overrides))
    finally:
        args.fp32_text_enc = fp32
    seconds = time.time() - start
    guider = comfy.node_outputs("guider")[0][0]
    latent = comfy.node_outputs("sca")[0][0]["samples"].detach().cpu().float()
    return {"seconds": seconds, "steps": list(guider.last_run.steps), "log": list(LOG.rows),
            "final": latent * SCALE[family], "clip": comfy.node_outputs("ckpt")[1][0],
            "model": comfy.node_outputs("sched")[0][0]}


def deviations(run: dict, record: dict, start_rows: dict) -> dict:
    """max deviation per quantity between the pack's run and the authors' record."""
    dev = {k: 0.0 for k in TOLERANCE}
    assert [s[0] for s in run["steps"]] == [o["step"] for o in record["optimized"]] == [0, 1]
    ms = run["model"].get_model_object("model_sampling")
    for (step, sigma, result), theirs in zip(run["steps"], record["optimized"]):
        assert len(result.objectives) == len(theirs["objectives"]) == record["iterations"]
        dev["objectives"] = max(dev["objectives"], max(abs(a - b) / abs(b) for a, b in
                                                       zip(result.objectives, theirs["objectives"])))
        a_mg = theirs["alpha_renoise"]
        sigma_s = math.sqrt((1 - a_mg) / a_mg)
        dev["renoise_sigma"] = max(dev["renoise_sigma"], abs(result.renoise_sigma - sigma_s) / sigma_s)
        # the re-noised prediction is fed their timestep 1000 - (t - skip + 1)
        assert int(ms.timestep(torch.tensor([result.renoise_sigma]))) == theirs["t_renoise"]
        for key, row in result.tokens.items():
            want = tensor(theirs["tokens"][key])
            dev["token"] = max(dev["token"], deviation(row.reshape(-1), want))
            distance = float((row.reshape(-1).double().cpu() - start_rows[key].double()).norm())
            dev["token_distance"] = max(dev["token_distance"],
                                        abs(distance - theirs["token_distance"][key][-1]) / theirs["token_distance"][key][-1])
    log, steps = run["log"], record["steps"]
    assert len(log) == len(steps) == SETTINGS["steps"], "one CFG prediction per step"
    z_in = [tensor(record["z_T"])] + [tensor(s["z_next"]) for s in steps[:-1]]
    for row, theirs, z in zip(log, steps, z_in):
        dev["z_in"] = max(dev["z_in"], deviation(row["z"], z))
        dev["z0t"] = max(dev["z0t"], deviation(row["x0"], tensor(theirs["z0t"])))
    dev["final"] = deviation(run["final"], tensor(record["final"]))
    return dev


def start_rows(clip, record: dict) -> dict:
    """The init word's input embedding per encoder, from the loaded CLIP (the token's starting point)."""
    word = record["input_ids"]["init_word"][0]
    rows = {}
    for key in clip.tokenize("").keys():
        table = getattr(clip.cond_stage_model, f"clip_{key}").transformer.get_input_embeddings().weight
        rows[key] = table[word].detach().cpu().float().clone()
    return rows


def check_input_ids(pack, clip, record: dict) -> None:
    """ComfyUI's tokens are theirs, and the pack's placeholder sits where their tokenizer puts '*_0'."""
    encoder = pack.comfy_text_encoder.ComfyTextEncoder(clip)
    ids = record["input_ids"]
    keys = sorted(clip.tokenize("").keys())
    per_key = (lambda v, k: v) if set(keys) == {"l"} else (lambda v, k: v[k])
    learnable = pack.text_encoder.LearnableTokens({k: torch.zeros(1, w) for k, w in encoder.token_widths.items()})
    spliced = encoder.tokens(SETTINGS["prompt"], learnable)
    for key in keys:
        placeholder = ids["placeholder"][key][0]
        assert [t for t, _ in clip.tokenize(SETTINGS["prompt"])[key][0]] == per_key(ids["prompt"], key)
        assert [t for t, _ in clip.tokenize(SETTINGS["null_prompt"])[key][0]] == per_key(ids["null"], key)
        ours = [t if isinstance(t, int) else placeholder for t, _ in spliced[key][0]]
        assert ours == per_key(ids["prompt_with_placeholder"], key)


def assert_within(dev: dict) -> None:
    over = {k: v for k, v in dev.items() if v > TOLERANCE[k]}
    assert not over, f"deviations over tolerance {over}; all: {dev}"


@pytest.fixture(scope="module")
def sd15_run(comfy, schedule_node, authors_checkpoints):
    return run_pack(comfy, authors_checkpoints("sd15"), "sd15")


@pytest.fixture(scope="module")
def sdxl_run(comfy, schedule_node, authors_checkpoints):
    return run_pack(comfy, authors_checkpoints("sdxl"), "sdxl")


# -- tests ------------------------------------------------------------------------------------------------
def test_authors_fixture_records_their_schedule():
    """What the fixture says about their code, checked on its own numbers (no ComfyUI needed)."""
    for record in (EXPECTED["sd15"], *EXPECTED["sdxl"].values()):
        sched = record["schedule"]
        assert sched["timesteps"] == [751, 501, 251, 1] and sched["skip"] == 250
        shifted = tensor(sched["alphas_cumprod_shifted"])
        assert shifted[0] == 1.0 and shifted.shape == (1001,)
        for o in record["optimized"]:
            assert o["t_renoise"] == 1000 - (o["t"] - sched["skip"] + 1)  # --dynamic_pr
            assert o["alpha_t"] == pytest.approx(float(shifted[o["t"]]), rel=1e-6)
            assert o["alpha_renoise"] == pytest.approx(float(shifted[o["t_renoise"]]), rel=1e-6)
        # the objective moves between iterations and the token moves every iteration
        assert all(len(set(o["objectives"])) == len(o["objectives"]) for o in record["optimized"])
        assert all(min(d) > 0.05 for o in record["optimized"] for d in o["token_distance"].values())


def test_sd15_minority_matches_the_authors_code(sd15_run, pack):
    record = EXPECTED["sd15"]
    check_input_ids(pack, sd15_run["clip"], record)
    dev = deviations(sd15_run, record, start_rows(sd15_run["clip"], record))
    print(f"\nSD1.5 deviations {dev}; pack run {sd15_run['seconds']:.1f} s")
    assert_within(dev)


@pytest.mark.parametrize("override, fails", [
    ({"anneal_level": "this_step"}, "t_renoise"),  # the paper's text s = T - t (the pack's old default)
    ({"norm": "squared"}, "objectives"),  # the paper's squared norms
    ({"between_steps": "original"}, "final"),  # the paper's text: the plain prompt after the optimized steps
])
def test_sd15_seeded_changes_break_the_equivalence(comfy, schedule_node, authors_checkpoints, pack,
                                                   override, fails):
    """The equivalence can fail: each of the paper-text variants moves a compared quantity far outside its
    tolerance (so reverting a node default back to them fails test_sd15_minority_matches_the_authors_code)."""
    assert guider_defaults(comfy)[next(iter(override))] != next(iter(override.values())), "not the default"
    run = run_pack(comfy, authors_checkpoints("sd15"), "sd15", **override)
    record = EXPECTED["sd15"]
    if fails == "t_renoise":  # deviations() stops at the first step: the re-noise is fed another timestep
        ms = run["model"].get_model_object("model_sampling")
        ours = [int(ms.timestep(torch.tensor([r.renoise_sigma]))) for _, _, r in run["steps"]]
        theirs = [o["t_renoise"] for o in record["optimized"]]
        print(f"\n{override}: re-noise timesteps {ours} vs theirs {theirs}")
        assert len(ours) == len(theirs) and all(a != b for a, b in zip(ours, theirs)), (ours, theirs)
        return
    dev = deviations(run, record, start_rows(run["clip"], record))
    print(f"\n{override}: deviations {dev}; pack run {run['seconds']:.1f} s")
    assert dev[fails] > 100 * TOLERANCE[fails], dev


@pytest.mark.slow
def test_sdxl_minority_matches_the_authors_code_with_eos_pooling(sdxl_run, pack):
    record = EXPECTED["sdxl"]["pooled_at_eos"]
    check_input_ids(pack, sdxl_run["clip"], record)
    dev = deviations(sdxl_run, record, start_rows(sdxl_run["clip"], record))
    print(f"\nSDXL deviations {dev}; pack run {sdxl_run['seconds']:.1f} s")
    for (step, _, result), theirs in zip(sdxl_run["steps"], record["optimized"]):
        print(f"step {step}: objectives ours {result.objectives} theirs {theirs['objectives']}; "
              f"re-noise sigma ours {result.renoise_sigma}")
    assert_within(dev)


@pytest.mark.xfail(strict=True, reason="their SDXL code (transformers 4.30.2) pools CLIP-G at argmax(input_ids) = "
                                       "the placeholder; ComfyUI and the pack pool at the EOS token")
def test_sdxl_minority_matches_the_authors_code_as_released(sdxl_run):
    record = EXPECTED["sdxl"]["as_released"]
    dev = deviations(sdxl_run, record, start_rows(sdxl_run["clip"], record))
    print(f"\nSDXL as released: deviations {dev}")
    assert_within(dev)
