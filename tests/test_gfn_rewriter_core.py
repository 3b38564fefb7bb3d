"""The GFlowNet rewriter's core on a tiny random GPT-2 with an offline word-level tokenizer (no ComfyUI)."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch
from scipy.stats import chisquare

from core.gfn_rewriter import objectives, trajectories
from core.gfn_rewriter.objectives import FlowHead, LinearSchedule
from core.gfn_rewriter.policy_folder import PolicyFolderError, check_policy_folder, load_policy
from core.gfn_rewriter.rewards import TargetWords
from core.gfn_rewriter.rewrite import RewriteSettings, rewrite
from core.gfn_rewriter.trainer import PrioritizedReplay, Trainer, TrainConfig
from devtools.prompt_rewriters import BAD, NAMES, STYLE, prompt_rewriters_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["a cat", "a dog on a river", "the old house"]


@pytest.fixture(scope="module")
def folders():
    return prompt_rewriters_dir()


@pytest.fixture(scope="module")
def policy(folders):
    return load_policy(folders / NAMES["policy"])


def test_fl_db_loss_equals_a_hand_computed_value():
    # row 0: three actions; row 1: two actions then padding (whose entries must not count)
    log_flow = torch.tensor([[0.5, 1.0, -0.2], [0.3, 0.7, 9.0]])
    log_pf = torch.tensor([[-1.0, -2.0, -0.5], [-0.4, -1.5, 9.0]])
    steps = torch.tensor([[-1.2, -1.8, -0.7], [-0.5, -1.0, 9.0]])
    terminal = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    # row 0: d0 = .5 - 1 - 1 + 1.2 = -.3; d1 = 1 - 2 + .2 + 1.8 = 1.0; d2 = -.2 - .5 - 0 + .7 - 2 = -2.0
    # row 1: d0 = .3 - .4 - .7 + .5 = -.3; d1 = .7 - 1.5 - 0 + 1 + 1 = 1.2
    expected = torch.tensor([0.09 + 1.0 + 4.0, 0.09 + 1.44])
    torch.testing.assert_close(objectives.fl_db(log_flow, log_pf, steps, terminal, mask), expected)
    # the deltas telescope: with zero step rewards, sum(delta) is the TB residual with log Z = log F(s_0)
    zero = torch.zeros_like(steps)
    deltas_sum = log_flow[:, 0] + (log_pf * mask).sum(1) - terminal
    torch.testing.assert_close(objectives.tb(log_flow[:, 0], log_pf, terminal, mask), deltas_sum.square())
    assert objectives.fl_db(log_flow, log_pf, zero, terminal, mask).shape == (2,)


@pytest.mark.claim
def test_prioritized_sampling_frequencies_follow_exp_log_reward():
    buffer = PrioritizedReplay(capacity=10)
    log_rewards = [0.0, 1.0, -1.0, 2.0, 0.5]
    for i, lr in enumerate(log_rewards):
        traj = trajectories.Trajectories(torch.tensor([i]), torch.tensor([[i + 1, 0]]), torch.tensor([[True, True]]))
        buffer.add(traj, torch.tensor([0.0]), torch.tensor([lr]))
    expected = torch.tensor(log_rewards, dtype=torch.float64).exp()
    expected = expected / expected.sum()
    torch.testing.assert_close(buffer.probabilities(), expected)
    draws = 20_000
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(len(log_rewards))
    for _ in range(draws):
        counts[buffer.sample(generator).prompt_ids[0]] += 1
    # chi-square goodness of fit: reject at p < 0.001 only (a correct sampler fails 1 run in 1000)
    p_value = chisquare(counts.numpy(), (expected * draws).numpy()).pvalue
    assert p_value > 1e-3, (counts.tolist(), (expected * draws).tolist(), p_value)
    # full buffer: the lowest-priority group leaves; a newcomer below all is dropped
    buffer.capacity = 5
    low = trajectories.Trajectories(torch.tensor([9]), torch.tensor([[3, 0]]), torch.tensor([[True, True]]))
    assert not buffer.add(low, torch.tensor([0.0]), torch.tensor([-5.0]))
    assert buffer.add(low, torch.tensor([0.0]), torch.tensor([5.0]))
    assert sorted(g.priority for g in buffer.groups) == [0.0, 0.5, 1.0, 2.0, 5.0]


def test_flow_reactivation_changes_only_the_last_layer():
    torch.manual_seed(0)
    head = FlowHead(32, 64)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    head.reactivate(torch.Generator().manual_seed(1))
    after = head.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"out.weight", "out.bias"}
    # the authors' re-initialization: N(0, 1) weights and bias (their randn_like)
    assert 0.7 < float(after["out.weight"].std()) < 1.3 and after["out.weight"].abs().max() > 1.5
    # the same seed gives the same layer (every DDP rank draws identical weights)
    other = FlowHead(32, 64)
    other.reactivate(torch.Generator().manual_seed(1))
    assert torch.equal(other.out.weight, head.out.weight)
    other.reactivate(torch.Generator().manual_seed(1), init="linear_default")  # nn.Linear's init, as an option
    bound = 1 / 64 ** 0.5
    assert other.out.weight.abs().max() <= bound and other.out.weight.std() > bound / 4


def test_flow_head_inputs_follow_the_settings(policy):
    """The prompt summary (the authors' sum without the last prompt token, or the mean) and whether the flow
    loss reaches the policy's states (detached by default, as the authors)."""
    model, tok = policy
    prompt = trajectories.encode_prompt(tok, "a cat")
    traj = trajectories.sample(model, prompt, 2, tok.eos_token_id, 4, 2, generator=torch.Generator().manual_seed(0))
    last = model(torch.tensor([prompt]), output_hidden_states=True).hidden_states[-1][0].detach()
    authors = trajectories.score(model, traj, tok.eos_token_id, 2, prompt_summary="sum_without_last")
    torch.testing.assert_close(authors.prompt_hidden[0], last[:-1].sum(0), rtol=1e-5, atol=1e-5)
    mean = trajectories.score(model, traj, tok.eos_token_id, 2, prompt_summary="mean")
    torch.testing.assert_close(mean.prompt_hidden[0], last.mean(0), rtol=1e-5, atol=1e-5)
    assert not authors.state_hidden.requires_grad
    attached = trajectories.score(model, traj, tok.eos_token_id, 2, detach_hidden=False)
    assert attached.state_hidden.requires_grad and attached.prompt_hidden.requires_grad
    with pytest.raises(ValueError, match="prompt_summary"):
        trajectories.score(model, traj, tok.eos_token_id, 2, prompt_summary="max")


def test_temperature_schedules_follow_the_settings():
    reward = LinearSchedule(2.0, 1.0, 500)
    assert [reward(s) for s in (0, 250, 500, 10_000)] == [2.0, 1.5, 1.0, 1.0]
    explore = LinearSchedule(2.0, 0.5, 5000)
    assert explore(1000) == pytest.approx(1.7) and explore(5000) == 0.5
    assert LinearSchedule(3.0, 1.0, 0)(0) == 1.0
    trainer_defaults = TrainConfig()  # the authors' released trainer (PAG main.py, README command)
    assert trainer_defaults.reward_temperature == (2.0, 1.0, 500)
    assert trainer_defaults.exploration_temperature == (2.0, 0.5, 5000)
    assert (trainer_defaults.objective, trainer_defaults.beta, trainer_defaults.gamma, trainer_defaults.policy_lr,
            trainer_defaults.flow_lr, trainer_defaults.flow_reset_period, trainer_defaults.flow_reset_init,
            trainer_defaults.prompt_summary, trainer_defaults.dropout, trainer_defaults.samples_per_step) == \
        ("fl_db", 0.05, 1.0, 1e-5, 1e-4, 2000, "normal", "sum_without_last", True, 16)


def test_bad_policy_folders_get_one_clear_message(folders):
    check_policy_folder(folders / NAMES["policy"])
    with pytest.raises(PolicyFolderError, match=r"missing_tokenizer' has no tokenizer files"):
        load_policy(folders / BAD["missing_tokenizer"])
    with pytest.raises(PolicyFolderError, match=r"not_causal_lm' holds a GPT2Model .*not a causal language model"):
        load_policy(folders / BAD["not_causal_lm"])
    with pytest.raises(PolicyFolderError, match="is not a folder"):
        load_policy(folders / "nowhere")


def test_seeded_rewrites_repeat_and_beam_search_gives_distinct_rewrites(policy):
    model, tok = policy
    settings = RewriteSettings(count=4, mode="sampling", seed=7, min_new_tokens=3, max_new_tokens=8, temperature=1.0,
                               top_p=0.95)
    first = rewrite(model, tok, "a cat", settings)
    assert first == rewrite(model, tok, "a cat", settings)
    assert rewrite(model, tok, "a cat", RewriteSettings(**{**vars(settings), "count": 2})) == first[:2]
    assert first != rewrite(model, tok, "a cat", RewriteSettings(**{**vars(settings), "seed": 8}))
    assert all(3 <= len(r.split()) <= 8 for r in first), first
    beams = rewrite(model, tok, "a cat", RewriteSettings(count=4, mode="diverse_beam_search", min_new_tokens=3,
                                                          max_new_tokens=6))
    assert len(beams) == 4 and len(set(beams)) == 4, beams


TOY = dict(samples_per_step=16, flow_lr=1e-2, beta=0.02, reward_temperature=(1.0, 1.0, 0),
           exploration_temperature=(1.0, 1.0, 0), min_new_tokens=4, max_new_tokens=8, flow_reset_period=0,
           flow_hidden=256, prompt_summary="mean", dropout=False)
TOY_SEEDS = (0, 1, 2)


def _toy_trainer(folders, objective: str, lr: float, seed: int) -> Trainer:
    model, tok = load_policy(folders / NAMES["policy"])
    reference, _ = load_policy(folders / NAMES["policy"])
    config = TrainConfig(objective=objective, policy_lr=lr, seed=seed, **TOY)
    return Trainer(config, model, reference, tok, TargetWords(STYLE), PROMPTS)


def _toy_run(folders, seed: int, steps: int = 300) -> dict:
    """One seed: a GFlowNet (trajectory balance) and REINFORCE, each trained `steps` steps from the same start."""
    gfn = _toy_trainer(folders, "tb", 3e-3, seed)
    initial = gfn.evaluate()
    rmax = _toy_trainer(folders, "reward_max", 1e-3, seed)
    for _ in range(steps):
        gfn.train_step()
        rmax.train_step()
    return {"initial": initial, "gfn": gfn.evaluate(), "rmax": rmax.evaluate()}


@pytest.mark.slow
@pytest.mark.claim
def test_toy_training_raises_reward_and_keeps_diversity_unlike_reward_maximization(folders):
    """The central claim on a text-only reward (share of style words), over three seeds: the GFlowNet's mean
    reward rises while its samples stay diverse; REINFORCE, trained as long, reaches at least that reward and
    has collapsed to few rewrites. Margins are one-sided bounds: the mean over seeds minus three standard
    errors. The GFlowNet here is trained with trajectory balance: FL-DB (the paper's objective) does not
    raise this toy's reward reliably (docs/testing.md), so a single FL-DB trajectory cannot carry the claim.
    Compared at equal steps, not at the first evaluation that matches the reward: just before it collapses,
    REINFORCE passes through rewards of 0.98-0.99 at diversities from 0.17 to 0.47 depending on the seed."""
    start, threads = time.time(), torch.get_num_threads()
    # one thread unless the session sets a count (tiny matrices: faster); scripts/test_claims_everywhere.sh
    # runs this at one and at two threads
    torch.set_num_threads(int(os.environ.get("PROMPT_OPTIM_TORCH_THREADS", 1)))
    try:
        runs = [_toy_run(folders, seed) for seed in TOY_SEEDS]
    finally:
        torch.set_num_threads(threads)
    for seed, r in zip(TOY_SEEDS, runs):
        print(f"\nseed {seed}: GFlowNet (TB) reward {r['initial']['reward']:.3f} -> {r['gfn']['reward']:.3f}, "
              f"diversity {r['initial']['diversity']:.3f} -> {r['gfn']['diversity']:.3f}; REINFORCE: reward "
              f"{r['rmax']['reward']:.3f}, diversity {r['rmax']['diversity']:.3f}")
    print(f"({time.time() - start:.0f} s)")

    def lower_bound(values: list[float]) -> float:
        v = torch.tensor(values, dtype=torch.float64)
        return float(v.mean() - 3 * v.std() / len(v) ** 0.5)

    assert lower_bound([r["gfn"]["reward"] - r["initial"]["reward"] for r in runs]) > 0.2
    assert lower_bound([r["rmax"]["reward"] - r["gfn"]["reward"] for r in runs]) > -0.05, "comparable reward"
    assert lower_bound([r["gfn"]["diversity"] - r["rmax"]["diversity"] for r in runs]) > 0.1


def _train_command(folders, tmp_path, steps: int) -> list[str]:
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "core.gfn_rewriter.train", "--policy", str(folders / NAMES["policy"]), "--out", str(tmp_path / "run"),
            "--prompts", str(tmp_path / "prompts.txt"), "--reward", "target_words", "--target-words", ",".join(STYLE),
            "--steps", str(steps), "--save-every", "2", "--samples-per-step", "4", "--min-new-tokens", "2",
            "--max-new-tokens", "6", "--flow-reset-period", "3", "--flow-hidden", "16"]


def test_resumed_training_with_dropout_continues_exactly(folders, tmp_path):
    """Dropout (on by default, as the authors train) draws from torch's global generator; a checkpoint keeps
    it, so a run resumed after step 1 reaches the same weights at step 3 as the run that never stopped."""
    from core.gfn_rewriter import checkpoint

    def trainer(folder):
        model, tok = load_policy(folder)
        reference, _ = load_policy(folders / NAMES["policy"])
        config = TrainConfig(samples_per_step=4, min_new_tokens=2, max_new_tokens=5, policy_lr=1e-3, seed=3)
        assert config.dropout and model.config.resid_pdrop > 0  # the case this test is about
        return Trainer(config, model, reference, tok, TargetWords(STYLE), PROMPTS)

    straight = trainer(folders / NAMES["policy"])
    straight.train_step()
    checkpoint.save(straight, tmp_path / "run")
    straight.train_step(), straight.train_step()
    resumed = trainer(tmp_path / "run" / "policy")
    checkpoint.load(resumed, tmp_path / "run")
    resumed.train_step(), resumed.train_step()
    for (name, a), b in zip(straight.policy.named_parameters(), resumed.policy.parameters()):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_two_process_ddp_training_on_cpu_saves_and_resumes(folders, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    for steps in (4, 6):  # the second run resumes from the first one's checkpoint
        run = subprocess.run(_train_command(folders, tmp_path, steps), cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=240)
        assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "run"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3, 4, 5, 6]
    assert all(m["world_size"] == 2 for m in lines)
    assert all(0.0 <= m["dormant_share"] <= 1.0 and 0.0 <= m["reward"] <= 1.0 for m in lines)
    assert lines[2].get("flow_reactivated") == 1.0 and lines[5].get("flow_reactivated") == 1.0
    assert {"buffer_size", "diversity", "reward_temperature", "exploration_temperature"} <= set(lines[-1])
    assert (out / "rank0.pt").is_file() and (out / "rank1.pt").is_file()
    state = torch.load(out / "trainer.pt", weights_only=True)
    assert state["step"] == 6
    model, tok = load_policy(out / "policy")  # the trained policy is a rewriter folder the node loads
    original, _ = load_policy(folders / NAMES["policy"])
    assert not torch.equal(model.transformer.h[0].mlp.c_fc.weight, original.transformer.h[0].mlp.c_fc.weight)


def _tiny_pipeline_folder(folder):
    diffusers = pytest.importorskip("diffusers")
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from devtools.comfy_path import comfyui_root

    torch.manual_seed(0)
    vocab = comfyui_root() / "comfy" / "sd1_tokenizer"
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=77, eos_token_id=49407))
    unet = diffusers.UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                                          block_out_channels=(32, 64), cross_attention_dim=32, norm_num_groups=8,
                                          down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    vae = diffusers.AutoencoderKL(block_out_channels=(16, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8)
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text, unet=unet, scheduler=diffusers.DDPMScheduler(),
                                             tokenizer=CLIPTokenizer(str(vocab / "vocab.json"), str(vocab / "merges.txt"),
                                                                     model_max_length=77),
                                             safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


def test_image_reward_on_a_tiny_diffusers_pipeline_and_pack_rewards(tmp_path, reward_models):
    """c = aes(img(y)) - aes(img(x)) + min(20 (CLIP(img(y), x) - 0.28), 0), the images rendered by diffusers."""
    from core.gfn_rewriter.rewards import DiffusersRenderer, ImageReward, load_pipeline
    from core.rewards import load_reward
    from devtools.reward_models import NAMES as REWARDS

    pipe = load_pipeline(_tiny_pipeline_folder(tmp_path / "pipe"))
    render = DiffusersRenderer(pipe, steps=2, size=32)
    aesthetic = load_reward("laion_aesthetic", reward_models / REWARDS["laion_aesthetic"],
                            backbone_path=reward_models / REWARDS["clip"])
    clip = load_reward("clip", reward_models / REWARDS["clip"])
    reward = ImageReward(render, aesthetic, clip, threshold=0.28, clip_weight=20.0)
    prompts, rewrites = ["a cat", "a cat"], ["a cat, detailed painting", "a cat at night"]
    parts = reward.parts(prompts, rewrites)
    images = render(rewrites)
    assert images.shape == (2, 3, 32, 32) and torch.equal(render(rewrites), images)  # same seed, same images
    # the authors' defaults: x is the templated text (img(x) and CLIP), rewrites get their own noise
    x = "a cat Rephrase:\n"
    plain = render([x])
    gain = aesthetic(images, rewrites) - aesthetic(plain, [x])
    relevance = (20 * (clip(images, [x, x]).clamp_min(0) - 0.28)).clamp_max(0)
    torch.testing.assert_close(parts["task"], gain + relevance, atol=1e-5, rtol=0)
    assert parts["task"][0] != parts["task"][1]
    same = render(["a cat at night", "a cat at night"])  # one draw per batch: each row its own noise slice
    assert not torch.equal(same[0], same[1])
    # the options: the paper's bare prompt, and the same noise for every rewrite
    per_prompt = DiffusersRenderer(pipe, steps=2, size=32, noise="per_prompt")
    same = per_prompt(["a cat at night", "a cat at night"])
    assert torch.equal(same[0], same[1])
    paper = ImageReward(per_prompt, aesthetic, clip, threshold=0.28, clip_weight=20.0, plain_text="prompt")
    images = per_prompt(rewrites)
    gain = aesthetic(images, rewrites) - aesthetic(per_prompt(["a cat"]), ["a cat"])
    relevance = (20 * (clip(images, prompts).clamp_min(0) - 0.28)).clamp_max(0)
    torch.testing.assert_close(paper(prompts, rewrites), gain + relevance, atol=1e-5, rtol=0)


# --- published GPT-2 rewriters (Promptist, MagicPrompt): pytorch_model.bin + vocab.json/merges.txt folders ---

PUBLISHED = ("promptist", "magicprompt")


@pytest.mark.parametrize("layout", PUBLISHED)
def test_published_layout_loads_as_transformers_own_gpt2_does(folders, layout):
    """Logits equal GPT2LMHeadModel.from_pretrained on the same pytorch_model.bin; the head stays tied."""
    from transformers import GPT2LMHeadModel

    folder = folders / NAMES[layout]
    assert not (folder / "model.safetensors").exists() and (folder / "pytorch_model.bin").is_file()
    assert (folder / "tokenizer.json").is_file() == (layout == "promptist")
    file_keys = set(torch.load(folder / "pytorch_model.bin", weights_only=True))
    assert {"lm_head.weight", "transformer.h.0.attn.bias", "transformer.h.1.attn.masked_bias"} <= file_keys
    model, tok = load_policy(folder)
    reference = GPT2LMHeadModel.from_pretrained(str(folder), local_files_only=True, use_safetensors=False).eval()
    ids = torch.tensor([tok("a red cat on the river Rephrase:").input_ids])
    assert ids.shape[1] > 3 and tok.eos_token_id == len(tok) - 1 == 300
    assert torch.equal(model(ids).logits, reference(ids).logits)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert tok.decode(tok("a red cat, sharp").input_ids) == "a red cat, sharp"


def _copy_without(src, dst, *names):
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*names) if names else None)
    return dst


def test_published_layout_problems_get_one_clear_message(folders, tmp_path):
    src = folders / NAMES["magicprompt"]
    state = torch.load(src / "pytorch_model.bin", weights_only=True)
    no_weights = _copy_without(src, tmp_path / "no_weights", "pytorch_model.bin")
    with pytest.raises(PolicyFolderError, match=r"no_weights' has no weights: no model.safetensors and no "
                                                r"pytorch_model.bin"):
        load_policy(no_weights)
    no_tokenizer = _copy_without(src, tmp_path / "no_tokenizer", "vocab.json", "merges.txt")
    with pytest.raises(PolicyFolderError, match=r"no_tokenizer' has no tokenizer files"):
        load_policy(no_tokenizer)
    damaged = _copy_without(src, tmp_path / "damaged")
    data = (src / "pytorch_model.bin").read_bytes()
    (damaged / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(PolicyFolderError, match=r"damaged': pytorch_model.bin cannot be read .*damaged or "
                                                r"incomplete"):
        load_policy(damaged)
    odd = _copy_without(src, tmp_path / "odd_keys")
    changed = {k: v for k, v in state.items() if k != "transformer.h.1.mlp.c_fc.weight"}
    changed["transformer.h.0.extra"] = torch.zeros(1)
    torch.save(changed, odd / "pytorch_model.bin")
    with pytest.raises(PolicyFolderError) as error:
        load_policy(odd)
    message = str(error.value)
    assert str(odd / "pytorch_model.bin") in message and "does not match the GPT2LMHeadModel" in message, message
    assert "missing: transformer.h.1.mlp.c_fc.weight (1)" in message and "unexpected: transformer.h.0.extra (1)" in \
        message, message
    untied = _copy_without(src, tmp_path / "untied_head")
    torch.save({**state, "lm_head.weight": state["lm_head.weight"] + 1}, untied / "pytorch_model.bin")
    with pytest.raises(PolicyFolderError, match="lm_head.weight differs from transformer.wte.weight"):
        load_policy(untied)
    base = _copy_without(src, tmp_path / "base_model_keys")  # as gpt2's own file: no prefix, no lm_head
    torch.save({k.removeprefix("transformer."): v for k, v in state.items() if k != "lm_head.weight"},
               base / "pytorch_model.bin")
    ids = torch.tensor([[5, 70, 120, 300]])
    assert torch.equal(load_policy(base)[0](ids).logits, load_policy(src)[0](ids).logits)
    code = _copy_without(src, tmp_path / "pickled_code")
    torch.save({"weights": state, "note": object.__new__(TargetWords)}, code / "pytorch_model.bin")
    with pytest.raises(PolicyFolderError, match="pytorch_model.bin cannot be read"):  # weights_only refuses objects
        load_policy(code)


def test_rewrite_keeps_the_prompt_in_front_for_continuation_models(folders):
    """keep_prompt (the magicprompt preset): the same tokens as without it, decoded after the prompt."""
    from core.gfn_rewriter import templates

    model, tok = load_policy(folders / NAMES["magicprompt"])
    assert templates.resolve("magicprompt", "ignored") == ("{prompt}", True)
    assert templates.resolve("promptist", "ignored") == ("{prompt} Rephrase:", False)
    assert templates.resolve("custom", "{prompt} !") == ("{prompt} !", False)
    assert templates.resolve("gflownet (authors)", "x") == (trajectories.DEFAULT_TEMPLATE, False)
    for mode in ("sampling", "diverse_beam_search"):
        settings = RewriteSettings(count=3, mode=mode, seed=4, min_new_tokens=3, max_new_tokens=8, template="{prompt}")
        alone = rewrite(model, tok, "a cat", settings)
        kept = rewrite(model, tok, "a cat", RewriteSettings(**{**vars(settings), "keep_prompt": True}))
        prompt_ids = tok("a cat").input_ids
        assert len(kept) == 3
        for a, k in zip(alone, kept):
            assert k.startswith("a cat") and k != "a cat", k
            tokens = tok(a).input_ids  # the continuation re-tokenized: decode(prompt + tokens) must read as kept
            assert " ".join(k.split()).endswith(" ".join(a.split())), (k, a)
            assert len(tok(k).input_ids) >= len(prompt_ids) + len(tokens) - 1


def test_trainer_starts_from_a_pytorch_model_bin_folder(folders, tmp_path):
    """The CLI trainer loads a published-layout policy (and its reference) through the same loader and writes a
    safetensors policy folder the node loads."""
    from core.gfn_rewriter import train

    folder = folders / NAMES["promptist"]
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    train.main(["--policy", str(folder), "--out", str(tmp_path / "run"), "--prompts", str(tmp_path / "prompts.txt"),
                "--reward", "target_words", "--target-words", ",".join(STYLE), "--steps", "2",
                "--samples-per-step", "2", "--min-new-tokens", "1", "--max-new-tokens", "4", "--flow-hidden", "16",
                "--policy-lr", "1e-2", "--template", "{prompt} Rephrase:"])
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    trained, tok = load_policy(tmp_path / "run" / "policy")
    assert (tmp_path / "run" / "policy" / "model.safetensors").is_file()
    original, original_tok = load_policy(folder)
    assert len(tok) == len(original_tok) and tok.eos_token_id == original_tok.eos_token_id
    assert trained.lm_head.weight is trained.transformer.wte.weight
    assert not torch.equal(trained.transformer.h[0].mlp.c_fc.weight, original.transformer.h[0].mlp.c_fc.weight)
