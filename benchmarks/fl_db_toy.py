"""Why FL-DB learns slowly on the toy: FL-DB variants against trajectory balance, same seeds, same steps.

    HF_HUB_OFFLINE=1 ~/.cache/prompt-optim/venv/bin/python -m benchmarks.fl_db_toy [--steps 1200] [--seeds 0 1 2]

The toy of tests/test_gfn_rewriter_core.py (the tiny GPT-2 policy, c = share of 11 style words in the
rewrite, beta 0.02, 16 rewrites a step, 4 to 8 new tokens, policy lr 3e-3, flow lr 1e-2, no temperature
schedules, no flow resets), trained per seed with each objective / setting below from the same start, and
evaluated as the test does (16 fresh samples per prompt at temperature 1, fixed seed): mean reward and
text diversity after the given steps, and the step at which the evaluated reward first reached 0.9
(evaluated every 100 steps). One thread (the toy's matrices are tiny). Writes benchmarks/fl_db_toy.md.

Rows: trajectory balance; FL-DB as the pack trains it; FL-DB with the authors' flow-head prompt input (sum
of the prompt's states without its last token, their gfn_trainer.py); FL-DB with the policy's dropout on
(their trainer calls model.train()); FL-DB with the flow head trained 10x faster; FL-DB whose flow loss
also trains the policy states the flow head reads (`detach_flow_input=False`, the trainer's
`--flow-trains-policy-states`); FL-DB with an oracle baseline: log F(s_t) is fixed to the
reward of the prefix so far (the share of style words among the tokens already written, / beta), i.e. a
flow function that already knows the reward's structure.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks import harness
from core.gfn_rewriter import trainer as trainer_module
from core.gfn_rewriter.policy_folder import load_policy
from core.gfn_rewriter.rewards import TargetWords
from core.gfn_rewriter.trainer import Trainer, TrainConfig
from devtools.prompt_rewriters import NAMES, STYLE, prompt_rewriters_dir

MODULE = "benchmarks.fl_db_toy"
REPORT = harness.ROOT / "benchmarks" / "fl_db_toy.md"
PROMPTS = ["a cat", "a dog on a river", "the old house"]  # as the toy test
TOY = TrainConfig(samples_per_step=16, flow_lr=1e-2, beta=0.02, reward_temperature=(1.0, 1.0, 0),
                  exploration_temperature=(1.0, 1.0, 0), min_new_tokens=4, max_new_tokens=8, flow_reset_period=0,
                  flow_hidden=256, policy_lr=3e-3, prompt_summary="mean", dropout=False)  # the toy test's


class OracleFlow(torch.nn.Module):
    """log F(s_t) = (share of style words among the tokens written before a_t) / beta, times the fraction of
    the rewrite already written; no parameters. Used only to ask whether FL-DB's policy update works when the
    flow function is right from the start."""

    def __init__(self, trainer: Trainer):
        super().__init__()
        self.trainer = trainer
        self.style_ids = torch.tensor(sorted({i for w in STYLE for i in trainer.tokenizer(w).input_ids}))

    def forward(self, state_hidden, prompt_hidden):  # only the shapes are used; the actions come from the trainer
        actions, mask = self.trainer._oracle_actions
        hits = torch.isin(actions, self.style_ids).float() * mask
        written = torch.cat([torch.zeros_like(hits[:, :1]), hits.cumsum(1)[:, :-1]], 1)  # before a_t
        length = mask.sum(1, keepdim=True).clamp(min=1)
        return written / length / self.trainer.config.beta


def make_trainer(folder: Path, config: TrainConfig, variant: str) -> Trainer:
    model, tok = load_policy(folder)
    reference, _ = load_policy(folder)
    trainer = Trainer(config, model, reference, tok, TargetWords(STYLE), PROMPTS)
    if variant == "oracle flow":
        trainer.flow = OracleFlow(trainer)
    return trainer


def train_step(trainer: Trainer, variant: str) -> None:
    if variant == "oracle flow":
        saved = trainer_module.trajectories.score

        def score(model, traj, *a, **k):
            trainer._oracle_actions = (traj.actions, traj.mask.float())
            return saved(model, traj, *a, **k)

        trainer_module.trajectories.score = score
        try:
            trainer.train_step()
        finally:
            trainer_module.trajectories.score = saved
    else:
        trainer.train_step()


VARIANTS = {
    "trajectory balance": ("tb", {}),
    "FL-DB (pack)": ("fl_db", {}),
    "FL-DB, authors' flow prompt input": ("fl_db", {"prompt_summary": "sum_without_last"}),
    "FL-DB, dropout on": ("fl_db", {"dropout": True}),
    "FL-DB, flow lr x10": ("fl_db", {"flow_lr": 1e-1}),
    "FL-DB, flow trains the policy's states": ("fl_db", {"detach_flow_input": False}),
    "FL-DB, oracle flow": ("fl_db", {}),
}


def run(folder: Path, label: str, seed: int, steps: int) -> dict:
    objective, overrides = VARIANTS[label]
    variant = label.split(", ", 1)[1] if ", " in label else ""
    trainer = make_trainer(folder, replace(TOY, objective=objective, seed=seed, **overrides), variant)
    if variant == "oracle flow":  # the flow optimizer has nothing to train
        trainer.flow_optimizer = None
    initial = trainer.evaluate()
    reached = None
    for step in range(1, steps + 1):
        train_step(trainer, variant)
        if step % 100 == 0 and reached is None and trainer.evaluate()["reward"] >= 0.9:
            reached = step
    final = trainer.evaluate()
    return {"initial": initial, "final": final, "reached": reached}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    harness.add_out_option(ap, REPORT)
    args = ap.parse_args()
    torch.set_num_threads(1)  # the toy's matrices are tiny: more threads only add overhead
    folder = prompt_rewriters_dir() / NAMES["policy"]
    start = time.time()
    rows = []
    for label in args.variants:
        results = [run(folder, label, seed, args.steps) for seed in args.seeds]
        rows.append((label, results))
        print(label, [(round(r["final"]["reward"], 3), round(r["final"]["diversity"], 3), r["reached"])
                      for r in results], flush=True)
    lines = ["The toy of tests/test_gfn_rewriter_core.py; see the script's docstring for each row. Initial reward "
             f"{rows[0][1][0]['initial']['reward']:.3f}, diversity {rows[0][1][0]['initial']['diversity']:.3f}. "
             f"Per seed: reward / text diversity after {args.steps} steps; first evaluation (every 100 steps) "
             "with reward >= 0.9.", "",
             "| variant | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean reward | reached 0.9 at |",
             "|---|" + "---|" * len(args.seeds) + "---|---|"]
    for label, results in rows:
        cells = [f"{r['final']['reward']:.3f} / {r['final']['diversity']:.3f}" for r in results]
        mean = sum(r["final"]["reward"] for r in results) / len(results)
        reached = ", ".join(str(r["reached"]) if r["reached"] else "—" for r in results)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {mean:.3f} | {reached} |")
    harness.write_report(args.out, "FL-DB on the toy: variants against trajectory balance", MODULE, lines,
                         cuda=False, wall_s=time.time() - start)


if __name__ == "__main__":
    main()
