"""Resumable training state in one output folder.

    OUT/policy/        the trained policy + tokenizer (a rewriter folder the ComfyUI node loads as is)
    OUT/trainer.pt     step, config, flow head, both optimizers (written by rank 0)
    OUT/rank{r}.pt     each rank's replay buffer and random-generator states (torch's global ones too: dropout)
    OUT/metrics.jsonl  one line of metrics per step (rank 0)
Each file is written to a temporary name and renamed, so an interrupted save leaves the last good one.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from .trainer import Trainer, _unwrap


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _global_rng_state() -> dict:
    """torch's global generators, which dropout draws from (the trainer's own generators are saved beside)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_global_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def has_checkpoint(out: str | Path) -> bool:
    out = Path(out)
    return (out / "trainer.pt").is_file() and (out / "policy" / "config.json").is_file()


def save(trainer: Trainer, out: str | Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if trainer.rank == 0:
        tmp = out / "policy.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        _unwrap(trainer.policy).save_pretrained(str(tmp), safe_serialization=True)
        trainer.tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(out / "policy", ignore_errors=True)
        os.replace(tmp, out / "policy")
        _atomic_save({"step": trainer.step, "config": trainer.config.as_dict(),
                      "flow": trainer.flow_head.state_dict() if trainer.flow is not None else None,
                      "optimizer": trainer.optimizer.state_dict(),
                      "flow_optimizer": trainer.flow_optimizer.state_dict() if trainer.flow_optimizer else None},
                     out / "trainer.pt")
    _atomic_save({"buffer": trainer.buffer.state_dict(), "rng": trainer.rng.getstate(),
                  "sample_generator": trainer.sample_generator.get_state(),
                  "replay_generator": trainer.replay_generator.get_state(),
                  "torch_rng": _global_rng_state()}, out / f"rank{trainer.rank}.pt")


def load(trainer: Trainer, out: str | Path) -> None:
    """Restore a trainer built from OUT/policy (the saved weights) to where the last save left it."""
    out = Path(out)
    state = torch.load(out / "trainer.pt", map_location="cpu", weights_only=True)  # plain tensors, numbers, lists and dicts only
    if state["config"]["objective"] != trainer.config.objective:
        raise ValueError(f"'{out}' was trained with objective {state['config']['objective']}, not "
                         f"{trainer.config.objective}; use another output folder")
    trainer.step = state["step"]
    trainer.optimizer.load_state_dict(state["optimizer"])
    if trainer.flow is not None:
        trainer.flow_head.load_state_dict(state["flow"])
        trainer.flow_optimizer.load_state_dict(state["flow_optimizer"])
    own = out / f"rank{trainer.rank}.pt"
    if own.is_file():  # a rank added since the last save starts with an empty buffer
        mine = torch.load(own, map_location="cpu", weights_only=True)  # plain tensors, numbers, lists and dicts only
        trainer.buffer.load_state_dict(mine["buffer"])
        trainer.rng.setstate(mine["rng"])
        trainer.sample_generator.set_state(mine["sample_generator"])
        trainer.replay_generator.set_state(mine["replay_generator"])
        if "torch_rng" in mine:  # checkpoints written before dropout was on by default lack it
            _set_global_rng_state(mine["torch_rng"])
