"""Command line: GFlowNet fine-tuning of a prompt rewriter, on 1 to N processes (torchrun, DDP).

    python -m core.gfn_rewriter.train --policy PATH --prompts prompts.txt --out runs/gfn \\
        --reward image --pipeline sd14/ --aesthetic aesthetic.pth --aesthetic-backbone clip-vit-large-patch14/ \\
        --relevance clip-vit-large-patch14/
    torchrun --nproc_per_node 4 -m core.gfn_rewriter.train ...   # the same run on 4 GPUs (nccl; gloo on CPU)

Run again with the same --out to resume from the last checkpoint. Defaults are the paper's.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from . import checkpoint
from .policy_folder import load_policy
from .rewards import TargetWords
from .trainer import Trainer, TrainConfig
from .trajectories import DEFAULT_TEMPLATE


def parse_args(argv=None) -> argparse.Namespace:
    d = TrainConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", required=True, help="initial policy folder (also the frozen reference p_ref)")
    ap.add_argument("--out", required=True, help="output folder: checkpoints, metrics.jsonl, policy/")
    ap.add_argument("--prompts", required=True, help="text file, one training prompt per line")
    ap.add_argument("--objective", choices=["fl_db", "tb", "reward_max"], default=d.objective)
    ap.add_argument("--steps", type=int, default=d.steps)
    ap.add_argument("--samples-per-step", type=int, default=d.samples_per_step, help="rewrites per step and process")
    ap.add_argument("--policy-lr", type=float, default=d.policy_lr)
    ap.add_argument("--flow-lr", type=float, default=d.flow_lr)
    ap.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm)
    ap.add_argument("--beta", type=float, default=d.beta, help="task-reward temperature: log R = log p_ref/gamma + c/beta")
    ap.add_argument("--gamma", type=float, default=d.gamma)
    ap.add_argument("--reward-temperature", type=float, nargs=3, default=d.reward_temperature,
                    metavar=("START", "END", "STEPS"))
    ap.add_argument("--exploration-temperature", type=float, nargs=3, default=d.exploration_temperature,
                    metavar=("START", "END", "STEPS"))
    ap.add_argument("--replay-ratio", type=float, default=d.replay_ratio)
    ap.add_argument("--buffer-size", type=int, default=d.buffer_size)
    ap.add_argument("--flow-reset-period", type=int, default=d.flow_reset_period, help="0: no flow reactivation")
    ap.add_argument("--min-new-tokens", type=int, default=d.min_new_tokens)
    ap.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    ap.add_argument("--template", default=DEFAULT_TEMPLATE)
    ap.add_argument("--flow-hidden", type=int, default=d.flow_hidden)
    ap.add_argument("--flow-reset-init", choices=["normal", "linear_default"], default=d.flow_reset_init,
                    help="re-initialization of the flow head's last layer: N(0, 1) (the authors' code) or nn.Linear's")
    ap.add_argument("--prompt-summary", choices=["mean", "sum_without_last"], default=d.prompt_summary,
                    help="the flow head's prompt input: mean of the prompt's states, or the authors' code's sum "
                         "without the last token (benchmarks/fl_db_toy.md)")
    ap.add_argument("--flow-trains-policy-states", dest="detach_flow_input", action="store_false",
                    help="let the flow loss shape the policy's hidden states the flow head reads (default: detached, "
                         "as the authors' code); FL-DB on small policies needs it (benchmarks/fl_db_toy.md)")
    ap.add_argument("--no-dropout", dest="dropout", action="store_false",
                    help="train with the policy's dropout off (default on, as the authors' code: model.train())")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--save-every", type=int, default=100, help="checkpoint every N steps (the authors': 100)")
    ap.add_argument("--reward", choices=["image", "target_words"], default="image")
    ap.add_argument("--target-words", default="", help="target_words reward: comma-separated words")
    g = ap.add_argument_group("image reward (pack reward models, diffusers pipeline; local files only)")
    g.add_argument("--pipeline", help="diffusers text-to-image pipeline folder (paper: SD 1.4)")
    g.add_argument("--aesthetic-family", default="laion_aesthetic")
    g.add_argument("--aesthetic", help="aesthetic reward weights (file or folder)")
    g.add_argument("--aesthetic-backbone", help="CLIP backbone of the aesthetic head")
    g.add_argument("--relevance-family", default="clip")
    g.add_argument("--relevance", help="CLIP reward folder scoring the image against the original prompt")
    g.add_argument("--threshold", type=float, default=0.28)
    g.add_argument("--clip-weight", type=float, default=20.0)
    g.add_argument("--image-steps", type=int, default=20)
    g.add_argument("--cfg", type=float, default=7.5)
    g.add_argument("--image-seed", type=int, default=42)
    g.add_argument("--images-per-prompt", type=int, default=1)
    g.add_argument("--image-size", type=int, default=None)
    g.add_argument("--image-noise", choices=["per_batch", "per_prompt"], default="per_batch",
                   help="per_batch (the authors' code): the step's rewrites rendered 16 at a time from one seeded "
                        "generator, each its own noise; per_prompt: the same noise for every rewrite")
    g.add_argument("--plain-text", choices=["template", "prompt"], default="template",
                   help="x in aes(img(x)) and CLIP(img(y), x): the templated text the policy reads (the authors' "
                        "code) or the bare prompt (the paper's text)")
    return ap.parse_args(argv)


def build_reward(args, device):
    if args.reward == "target_words":
        words = [w.strip() for w in args.target_words.split(",") if w.strip()]
        return TargetWords(words)
    from ..rewards import load_reward
    from .rewards import DiffusersRenderer, ImageReward, load_pipeline

    missing = [n for n in ("pipeline", "aesthetic", "relevance") if not getattr(args, n)]
    if missing:
        raise SystemExit(f"--reward image needs --{' --'.join(missing)}")
    render = DiffusersRenderer(load_pipeline(args.pipeline, device), args.image_steps, args.cfg, args.image_seed,
                               args.images_per_prompt, args.image_size, noise=args.image_noise)
    aesthetic = load_reward(args.aesthetic_family, args.aesthetic, backbone_path=args.aesthetic_backbone, device=device)
    relevance = load_reward(args.relevance_family, args.relevance, device=device)
    return ImageReward(render, aesthetic, relevance, args.threshold, args.clip_weight, plain_text=args.plain_text,
                       template=args.template)


def config_from(args) -> TrainConfig:
    rt, et = args.reward_temperature, args.exploration_temperature
    return TrainConfig(objective=args.objective, steps=args.steps, samples_per_step=args.samples_per_step,
                       policy_lr=args.policy_lr, flow_lr=args.flow_lr, max_grad_norm=args.max_grad_norm,
                       beta=args.beta, gamma=args.gamma, reward_temperature=(rt[0], rt[1], int(rt[2])),
                       exploration_temperature=(et[0], et[1], int(et[2])), replay_ratio=args.replay_ratio,
                       buffer_size=args.buffer_size, flow_reset_period=args.flow_reset_period,
                       min_new_tokens=args.min_new_tokens, max_new_tokens=args.max_new_tokens,
                       template=args.template, flow_hidden=args.flow_hidden, seed=args.seed,
                       flow_reset_init=args.flow_reset_init, prompt_summary=args.prompt_summary,
                       dropout=args.dropout, detach_flow_input=args.detach_flow_input)


def main(argv=None) -> None:
    args = parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
    out = Path(args.out)
    resume = checkpoint.has_checkpoint(out)
    policy, tokenizer = load_policy(out / "policy" if resume else args.policy, device)
    reference, _ = load_policy(args.policy, device)
    prompts = [line.strip() for line in Path(args.prompts).read_text().splitlines() if line.strip()]

    def wrap(module):
        if world == 1:
            return module
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=[local] if cuda else None)

    trainer = Trainer(config_from(args), policy, reference, tokenizer, build_reward(args, device), prompts, rank, wrap)
    if resume:
        checkpoint.load(trainer, out)
    from tqdm import tqdm

    bar = tqdm(total=trainer.config.steps, initial=trainer.step, disable=rank != 0, desc="GFlowNet rewriter")
    out.mkdir(parents=True, exist_ok=True)
    while trainer.step < trainer.config.steps:
        metrics = trainer.train_step()
        if world > 1:  # loss and reward averaged over ranks; the rest is rank 0's
            shared = torch.tensor([metrics["loss"], metrics["reward"]], dtype=torch.float64, device=device)
            dist.all_reduce(shared)
            metrics["loss"], metrics["reward"] = (shared / world).tolist()
        if rank == 0:
            metrics["world_size"] = world
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['reward']:.3f}", diversity=f"{metrics['diversity']:.3f}",
                            loss=f"{metrics['loss']:.3g}", buffer=metrics["buffer_size"])
        if trainer.step % args.save_every == 0 or trainer.step == trainer.config.steps:
            checkpoint.save(trainer, out)
            if world > 1:
                dist.barrier()
    bar.close()
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
