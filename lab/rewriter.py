"""A prompt rewriter trained in the lab world: GFlowNet fine-tuning and its reward-maximizing twin.

    python -m lab.rewriter --out lab/weights/rewriters     # about 10 minutes on 2 CPU cores

The paper's setting at a size a CPU trains in minutes:
- Policy: a tiny GPT-2 (2 layers, width 64) with a word-level tokenizer over the world's words, first
  taught by supervised learning to rewrite a caption into a fuller caption of a scene consistent with
  it ("a red circle" -> "a small red circle on the left , black background"). In a quarter of its
  examples one named attribute is swapped, as real rewriters sometimes drift from the prompt. This
  policy is p_ref, the reference of the log-reward and the start of both fine-tunings.
- Task reward c(x, y): the lab reward (a small CLIP) scoring the image the lab model draws from the
  rewrite y against the ORIGINAL prompt x (DDIM, 10 steps, cfg 5, one fixed seed for every rewrite, as
  the authors fix one). The lab has no aesthetic model, so relevance is the whole reward.
- Fine-tuning from p_ref with the pack's trainer (core.gfn_rewriter.trainer): a GFlowNet objective
  (default trajectory balance: the paper's FL-DB did not raise the reward here, see
  benchmarks/lab_training.md; `--gfn-objective fl_db` re-runs it), and reward maximization (policy
  gradient on the same log-reward) stopped at the first evaluation whose reward reaches the GFlowNet's
  final one: the claim compares diversity at comparable reward.

The three policies are Hugging Face folders, the layout the rewriter node loads from
models/prompt_rewriters; `training.json` beside them records the run.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from lab.world import ATTRIBUTES, Scene

TEMPLATE = "{prompt} Rephrase:\n"
GLUE = ["a", "in", "the", "on", "background", ",", "Rephrase", ":"]
WORDS = sorted({v for d in ATTRIBUTES.values() for v in d} | set(GLUE))
NAMES = {"reference": "lab_rewriter_reference", "gfn": "lab_rewriter_gfn", "reward_max": "lab_rewriter_reward_max"}
# the prompts the rewriter is trained and measured on: shape and color named, the rest left open
PROMPTS = [f"a {color} {shape}" for shape in ATTRIBUTES["shape"] for color in ATTRIBUTES["color"]]
DRIFT = 0.25  # share of supervised examples whose rewrite swaps one named attribute
RENDER_SEED, RENDER_STEPS, CFG = 42, 10, 5.0
MIN_NEW, MAX_NEW = 3, 12


def build_tokenizer():
    """Word-level over the world's words (devtools.prompt_rewriters' builder); offline."""
    from devtools.prompt_rewriters import build_tokenizer as word_level

    return word_level(WORDS)


def build_policy(vocab_size: int, seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_positions=32, n_embd=64, n_layer=2, n_head=4, bos_token_id=0,
                        eos_token_id=0, pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


# -- supervised reference ------------------------------------------------------------------------------
def example(rng: np.random.Generator) -> tuple[str, str]:
    """(prompt, rewrite): the prompt names shape and color; the rewrite describes a scene consistent with
    it (open attributes drawn from the world's frequencies, each named with probability 0.6), except
    that with probability DRIFT its shape or color is another one."""
    def draw(attribute):
        dist = ATTRIBUTES[attribute]
        return str(rng.choice(list(dist), p=list(dist.values())))

    scene = Scene(*(draw(a) for a in ATTRIBUTES))
    prompt = scene.caption(("shape", "color"))
    if rng.random() < DRIFT:
        attribute = "shape" if rng.random() < 0.5 else "color"
        other = [v for v in ATTRIBUTES[attribute] if v != getattr(scene, attribute)]
        scene = Scene(**{**scene.__dict__, attribute: str(rng.choice(other))})
    named = ("shape", "color") + tuple(a for a in ("size", "position", "background") if rng.random() < 0.6)
    return prompt, scene.caption(named).replace(",", " ,")


def pretrain(policy, tokenizer, steps: int, batch: int, lr: float, seed: int, log) -> None:
    """Teacher forcing on (template(prompt), rewrite + end) with the loss on the rewrite's tokens only."""
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    policy.train()
    for step in range(steps):
        rows, targets = [], []
        for _ in range(batch):
            prompt, rewrite = example(rng)
            head = tokenizer(TEMPLATE.format(prompt=prompt), add_special_tokens=False).input_ids
            tail = tokenizer(rewrite, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
            rows.append(head + tail)
            targets.append([-100] * len(head) + tail)
        width = max(map(len, rows))
        ids = torch.tensor([r + [tokenizer.eos_token_id] * (width - len(r)) for r in rows])
        labels = torch.tensor([t + [-100] * (width - len(t)) for t in targets])
        mask = (torch.arange(width)[None] < torch.tensor([len(r) for r in rows])[:, None]).long()
        loss = policy(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 200 == 0 or step == steps - 1:
            log(f"reference step {step + 1}/{steps}: loss {loss.item():.3f}")
    policy.eval()


# -- task reward -----------------------------------------------------------------------------------------
class LabRelevance:
    """c(x, y) = lab reward(image drawn from y, x); images and scores cached by text (the seed is fixed)."""

    def __init__(self, ldm_file: Path, reward_folder: Path, device: str = "cpu"):
        from core.rewards import load_reward
        from lab.preview import load_compact
        from lab.train import Tokenizer

        self.unet, text, self.vae = load_compact(ldm_file, device)
        self.text = text.with_full_vocabulary()  # a rewrite may hold words the world's captions never use
        self.reward = load_reward("clip", reward_folder, device=device)
        self.tokenizer, self.device = Tokenizer(), device
        self.images: dict[str, torch.Tensor] = {}
        self.scores: dict[tuple[str, str], float] = {}

    def render(self, texts: list[str]) -> torch.Tensor:
        from lab.preview import ddim

        missing = sorted({t for t in texts if t not in self.images})
        for start in range(0, len(missing), 32):
            chunk = missing[start:start + 32]
            images = ddim(self.unet, self.text, self.vae, chunk, RENDER_SEED, RENDER_STEPS, CFG, self.device,
                          same_noise=True, tok=self.tokenizer).cpu()
            self.images.update(zip(chunk, images))
        return torch.stack([self.images[t] for t in texts])

    @torch.no_grad()
    def __call__(self, prompts, rewrites) -> torch.Tensor:
        pairs = list(zip(prompts, rewrites))
        missing = sorted({p for p in pairs if p not in self.scores})
        if missing:
            images = self.render([r for _, r in missing]).to(self.device)
            scores = self.reward(images, [p for p, _ in missing]).float().cpu()
            self.scores.update(zip(missing, scores.tolist()))
        return torch.tensor([self.scores[p] for p in pairs], dtype=torch.float32)


# -- fine-tuning -----------------------------------------------------------------------------------------
def train_config(objective: str, steps: int, lr: float, seed: int, beta: float):
    from core.gfn_rewriter.trainer import TrainConfig

    return TrainConfig(objective=objective, steps=steps, samples_per_step=16, policy_lr=lr, flow_lr=1e-2,
                       beta=beta, reward_temperature=(1.0, 1.0, 0), exploration_temperature=(1.0, 1.0, 0),
                       min_new_tokens=MIN_NEW, max_new_tokens=MAX_NEW, flow_reset_period=0, flow_hidden=128,
                       template=TEMPLATE, seed=seed, prompt_summary="mean", dropout=False)  # as trained


def save_policy(policy, tokenizer, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--reference-steps", type=int, default=1500)
    ap.add_argument("--gfn-objective", choices=["tb", "fl_db"], default="tb")
    ap.add_argument("--beta", type=float, default=0.05, help="log R = log p_ref + c / beta (paper: 0.05)")
    ap.add_argument("--gfn-steps", type=int, default=400)
    ap.add_argument("--gfn-lr", type=float, default=1e-3)
    ap.add_argument("--reward-max-steps", type=int, default=600, help="at most; stops at the GFlowNet's reward")
    ap.add_argument("--reward-max-lr", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1: these small models gain nothing from more, and it stays fast "
                         "beside another job)")
    args = ap.parse_args()

    from core.gfn_rewriter.trainer import Trainer
    from devtools.comfy_path import configure_comfy_args
    from lab.checkpoint import LDM_FILE, lab_reward_folder

    configure_comfy_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    record: dict = {"settings": vars(args) | {"out": str(args.out)}, "prompts": PROMPTS}

    def log(message):
        print(f"[{time.time() - started:6.0f} s] {message}", flush=True)

    tokenizer = build_tokenizer()
    reference = build_policy(len(tokenizer), args.seed)
    pretrain(reference, tokenizer, args.reference_steps, 64, 3e-3, args.seed, log)
    save_policy(reference, tokenizer, args.out / NAMES["reference"])
    reward = LabRelevance(LDM_FILE, lab_reward_folder())

    def trainer(objective, steps, lr):
        return Trainer(train_config(objective, steps, lr, args.seed, args.beta), copy.deepcopy(reference),
                       copy.deepcopy(reference), tokenizer, reward, PROMPTS)

    gfn = trainer(args.gfn_objective, args.gfn_steps, args.gfn_lr)
    record["reference"] = gfn.evaluate()
    log(f"reference: {record['reference']}")
    record["gfn_curve"] = []
    while gfn.step < args.gfn_steps:
        gfn.train_step()
        if gfn.step % args.eval_every == 0:
            record["gfn_curve"].append({"step": gfn.step, **gfn.evaluate()})
            log(f"{args.gfn_objective} {record['gfn_curve'][-1]}")
    final = record["gfn_curve"][-1]
    save_policy(gfn.policy, tokenizer, args.out / NAMES["gfn"])

    rmax = trainer("reward_max", args.reward_max_steps, args.reward_max_lr)
    record["reward_max_curve"] = []
    while rmax.step < args.reward_max_steps:
        rmax.train_step()
        if rmax.step % max(1, args.eval_every // 2) == 0:
            record["reward_max_curve"].append({"step": rmax.step, **rmax.evaluate()})
            log(f"reward-max {record['reward_max_curve'][-1]}")
            if record["reward_max_curve"][-1]["reward"] >= final["reward"]:
                break
    record["reward_max_reached"] = record["reward_max_curve"][-1]["reward"] >= final["reward"]
    save_policy(rmax.policy, tokenizer, args.out / NAMES["reward_max"])
    record["seconds"] = round(time.time() - started)
    record["rendered_rewrites"] = len(reward.images)
    (args.out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    log(f"done: {record['seconds']} s, {len(reward.images)} distinct rewrites rendered")


if __name__ == "__main__":
    main()
