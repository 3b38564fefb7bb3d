"""FL-DB in the lab: does letting the flow loss train the policy's states make FL-DB raise the lab reward?

    HF_HUB_OFFLINE=1 ~/.cache/prompt-optim/venv/bin/python -m lab.fl_db_check [--steps 400] [--seeds 0]

From the committed reference rewriter (lab/weights/rewriters/lab_rewriter_reference, p_ref), the lab's
rewriter fine-tuning (lab/rewriter.py's train_config: lr 1e-3, beta 0.05, 16 rewrites a step, 3 to 12 new
tokens, the lab reward of the image drawn from each rewrite) with trajectory balance (the lab's GFlowNet
row), FL-DB as the authors train it (the flow head reads detached policy states), and FL-DB whose flow
loss also trains those states (`detach_flow_input=False`), and FL-DB whose flow head first trains alone
for 200 steps (policy learning rate 0; the curve counts policy steps). The reward and text diversity of 16 fresh
rewrites per prompt (temperature 1, fixed seed) every 50 steps. One thread. Writes
benchmarks/lab_fl_db.md.
"""
from __future__ import annotations

import argparse
import copy
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks import harness

ROOT = harness.ROOT
REPORT = ROOT / "benchmarks" / "lab_fl_db.md"
# arm: (objective, flow head reads detached states, flow warm-up steps with the policy frozen)
ARMS = {"trajectory balance": ("tb", True, 0), "FL-DB (flow reads detached states)": ("fl_db", True, 0),
        "FL-DB (flow loss trains the states)": ("fl_db", False, 0),
        "FL-DB (detached, 200 flow-only steps first)": ("fl_db", True, 200)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--out", type=Path, default=REPORT)
    args = ap.parse_args()
    from core.gfn_rewriter.policy_folder import load_policy
    from core.gfn_rewriter.trainer import Trainer
    from devtools.comfy_path import configure_comfy_args
    from lab.checkpoint import LDM_FILE, lab_reward_folder
    from lab.rewriter import NAMES, PROMPTS, LabRelevance, train_config

    configure_comfy_args()
    torch.set_num_threads(1)
    start = time.time()
    reference, tokenizer = load_policy(ROOT / "lab" / "weights" / "rewriters" / NAMES["reference"])
    reward = LabRelevance(LDM_FILE, lab_reward_folder())
    rows = []
    for label, (objective, detach, warm_up) in ARMS.items():
        for seed in args.seeds:
            config = replace(train_config(objective, args.steps, 1e-3, seed, 0.05), detach_flow_input=detach)
            trainer = Trainer(config, copy.deepcopy(reference), copy.deepcopy(reference), tokenizer, reward, PROMPTS)
            for group in trainer.optimizer.param_groups:
                group["lr"] = 0.0
            for _ in range(warm_up):  # the flow head alone (the policy's optimizer steps with lr 0)
                trainer.train_step()
            for group in trainer.optimizer.param_groups:
                group["lr"] = config.policy_lr
            trainer.step = 0  # schedules and the curve count policy steps
            curve = [(0, trainer.evaluate())]
            while trainer.step < args.steps:
                trainer.train_step()
                if trainer.step % args.eval_every == 0:
                    curve.append((trainer.step, trainer.evaluate()))
            rows.append((label, seed, curve))
            print(label, seed, [(s, round(e["reward"], 3)) for s, e in curve], flush=True)
    steps = [s for s, _ in rows[0][2]]
    lines = ["From the committed reference rewriter, lab/rewriter.py's fine-tuning settings (see the script's "
             "docstring). Lab reward of 16 fresh rewrites per prompt (12 prompts), every "
             f"{args.eval_every} steps; text diversity at the end.", "",
             "| arm | seed | " + " | ".join(f"step {s}" for s in steps) + " | diversity |",
             "|---|---|" + "---|" * len(steps) + "---|"]
    for label, seed, curve in rows:
        lines.append(f"| {label} | {seed} | " + " | ".join(f"{e['reward']:.3f}" for _, e in curve)
                     + f" | {curve[-1][1]['diversity']:.3f} |")
    harness.write_report(args.out, "FL-DB in the lab: detached vs trained flow-head inputs", "lab.fl_db_check", lines,
                         cuda=False, wall_s=time.time() - start)


if __name__ == "__main__":
    main()
