"""Inference: N rewrites of each prompt, by diverse beam search (the default: the authors' evaluation, 16
beams in 16 groups, diversity penalty 1.0, length penalty -1.0) or by seeded sampling.

Sampling draws rewrite i with its own generator seeded with seed + i, so the same seed gives the
same rewrites and rewrite i does not depend on how many are asked for.

diverse_beam_search (Vijayakumar et al., 2018) as the authors' evaluation runs it: Hugging Face's group beam
search (transformers 4.x `generate(num_beams=N, num_beam_groups=N, diversity_penalty=1.0,
length_penalty=-1.0)`). transformers 5 no longer has that mode, so this is our own loop with its rules
(tests/test_gfn_rewriter_authors.py compares it with their call run in transformers 4.48.3):

- groups take turns at each step; a group's token log-probabilities are lowered by diversity_penalty x
  (how many earlier groups' beams picked that token at this step), and that penalty stays in the running
  beam scores; a finished group keeps "picking" the pad token (here the end token);
- inside a group, ordinary beam search over 2 x width candidates: the end token among the first `width`
  candidates finishes a hypothesis scored sum / generated_length ** length_penalty (the length counts
  the end token; -1 multiplies, favouring short rewrites); the end token is impossible before
  min_new_tokens;
- a group is done once it holds `width` hypotheses none of its running beams can beat
  (best candidate / length ** length_penalty); unfinished beams at max_new_tokens join as hypotheses;
- all groups' hypotheses are returned best score first.
No key/value cache (prompts are short; float differences from a cached forward are ~1e-7).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..shared.settings_error import SettingsError
from . import trajectories
from .trajectories import forbid_early_end

MODES = ("sampling", "diverse_beam_search")


@dataclass(frozen=True)
class RewriteSettings:
    count: int = 16
    mode: str = "diverse_beam_search"
    seed: int = 0
    temperature: float = 1.0
    top_p: float = 0.9
    min_new_tokens: int = 15
    max_new_tokens: int = 75
    diversity_penalty: float = 1.0
    length_penalty: float = -1.0  # diverse beam search: score = sum log p / length ** length_penalty
    template: str = trajectories.DEFAULT_TEMPLATE
    # False: what the authors' evaluation returns, where two rewrites can read the same (sampling draws the
    # same text, or two beam groups end on the same words). True: duplicates are dropped and more rewrites
    # drawn (sampling: further seeds; beam search: more groups), up to UNIQUE_TRIES x count
    unique: bool = False
    # True: a rewrite is the templated prompt followed by the continuation (plain continuation models such as
    # MagicPrompt); False: the continuation alone (GFlowNet rewriters, Promptist). See templates.py
    keep_prompt: bool = False

    def __post_init__(self):
        if self.mode not in MODES:
            raise SettingsError(f"mode must be one of {MODES}; got {self.mode!r}", "mode")
        if "{prompt}" not in self.template:
            raise SettingsError("the template must contain {prompt}, where the prompt goes", "template")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise SettingsError("need 0 <= min_new_tokens <= max_new_tokens", "min_new_tokens")


UNIQUE_TRIES = 4


def _distinct(texts: list[str], count: int) -> list[str]:
    """The first `count` texts that differ (white space folded), in order."""
    seen, out = set(), []
    for text in texts:
        key = " ".join(text.split())
        if key not in seen:
            seen.add(key)
            out.append(text)
    return out[:count]


def rewrite(model, tokenizer, prompt: str, settings: RewriteSettings,
            between: Callable[[], None] = lambda: None, interrupt: Callable[[], None] = lambda: None) -> list[str]:
    """settings.count rewrites of one prompt (with `unique`, possibly fewer when the policy has no more distinct
    ones within UNIQUE_TRIES x count); `between()` runs after each generation (progress, cancel),
    `interrupt()` after each token step of diverse beam search (cancel)."""
    ids = trajectories.encode_prompt(tokenizer, prompt, settings.template)
    eos = tokenizer.eos_token_id
    device = model.get_input_embeddings().weight.device
    count = settings.count
    if settings.mode == "diverse_beam_search":
        beams = count
        while True:  # more groups only when asked for distinct rewrites and some coincide
            tokens = diverse_beam_search(model, ids, eos, beams, beams, settings.diversity_penalty,
                                         settings.max_new_tokens, settings.min_new_tokens, settings.length_penalty,
                                         between_steps=interrupt)
            between()
            prefix = ids if settings.keep_prompt else []
            texts = [tokenizer.decode(prefix + t, skip_special_tokens=True).strip() for t in tokens]
            if not settings.unique:
                return texts
            distinct = _distinct(texts, count)
            if len(distinct) == count or beams >= UNIQUE_TRIES * count:
                return distinct
            beams = min(2 * beams, UNIQUE_TRIES * count)
    out = []
    for i in range(UNIQUE_TRIES * count if settings.unique else count):
        generator = torch.Generator(device).manual_seed(settings.seed + i)
        traj = trajectories.sample(model, ids, 1, eos, settings.max_new_tokens, settings.min_new_tokens,
                                   settings.temperature, settings.top_p, generator)
        out.append(traj.texts(tokenizer, settings.keep_prompt)[0])
        between()
        if settings.unique:
            out = _distinct(out, count)
            if len(out) == count:
                break
    return out


class _Hypotheses:
    """The `width` best finished rewrites of one group (Hugging Face's BeamHypotheses, early_stopping False)."""

    def __init__(self, width: int, length_penalty: float):
        self.width, self.length_penalty = width, length_penalty
        self.beams: list[tuple[float, list[int]]] = []
        self.worst = 1e9

    def add(self, tokens: list[int], sum_logprobs: float, generated_len: int) -> None:
        score = sum_logprobs / (generated_len ** self.length_penalty)
        if len(self.beams) < self.width or score > self.worst:
            self.beams.append((score, tokens))
            if len(self.beams) > self.width:
                ranked = sorted((s, i) for i, (s, _) in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst = ranked[1][0]
            else:
                self.worst = min(score, self.worst)

    def is_done(self, best_sum_logprobs: float, generated_len: int) -> bool:
        if len(self.beams) < self.width:
            return False
        return self.worst >= best_sum_logprobs / generated_len ** self.length_penalty


@torch.no_grad()
def diverse_beam_search(model, prompt_ids: list[int], eos_id: int, num_beams: int = 16, num_groups: int = 16,
                        diversity_penalty: float = 1.0, max_new_tokens: int = 75, min_new_tokens: int = 0,
                        length_penalty: float = -1.0, pad_id: int | None = None,
                        between_steps=lambda: None) -> list[list[int]]:
    """num_beams token lists (no end token), best score first. `pad_id` (default: the end token, as the
    authors pass pad = end) is what a finished group keeps emitting; `between_steps()` runs after each
    token step (cancel checks)."""
    if num_beams % num_groups:
        raise ValueError(f"num_beams ({num_beams}) must be a multiple of num_groups ({num_groups})")
    width = num_beams // num_groups
    pad_id = eos_id if pad_id is None else pad_id
    device = model.get_input_embeddings().weight.device
    prompt_len = len(prompt_ids)
    seqs = torch.as_tensor(prompt_ids, dtype=torch.long, device=device).repeat(num_beams, 1)
    beam_scores = torch.full((num_beams,), -1e9, dtype=torch.float32, device=device)
    beam_scores[::width] = 0  # one live beam per group at the start
    hyps = [_Hypotheses(width, length_penalty) for _ in range(num_groups)]
    done = [False] * num_groups
    for step in range(max_new_tokens):
        logp_all = F.log_softmax(model(seqs).logits[:, -1].float(), dim=-1)
        vocab = logp_all.shape[-1]
        current = torch.zeros(num_beams, dtype=torch.long, device=device)
        rows = torch.zeros(num_beams, dtype=torch.long, device=device)  # which old row each new row extends
        for g in range(num_groups):
            start = g * width
            if done[g]:
                beam_scores[start:start + width] = 0
                current[start:start + width] = pad_id
                rows[start:start + width] = start
                continue
            logp = forbid_early_end(logp_all[start:start + width], step, eos_id, min_new_tokens)
            if g > 0 and diversity_penalty:
                logp = logp - diversity_penalty * torch.bincount(current[:start], minlength=vocab).to(logp)
            scores = (logp + beam_scores[start:start + width, None]).view(-1)
            top_scores, top = scores.topk(2 * width)
            kept = 0
            new_scores = torch.zeros(width, dtype=torch.float32, device=device)
            for rank, (flat, score) in enumerate(zip(top.tolist(), top_scores)):
                beam, token = divmod(flat, vocab)
                if token == eos_id:
                    if rank >= width:
                        continue
                    hyps[g].add(seqs[start + beam, prompt_len:].tolist(), score.item(), step + 1)
                else:
                    new_scores[kept] = score
                    current[start + kept] = token
                    rows[start + kept] = start + beam
                    kept += 1
                if kept == width:
                    break
            beam_scores[start:start + width] = new_scores
            done[g] = hyps[g].is_done(top_scores.max().item(), step + 1)
        seqs = torch.cat([seqs[rows], current[:, None]], dim=1)
        between_steps()
        if all(done):
            break
    for g in range(num_groups):
        if not done[g]:  # unfinished beams at max_new_tokens
            for row in range(g * width, (g + 1) * width):
                hyps[g].add(seqs[row, prompt_len:].tolist(), beam_scores[row].item(), seqs.shape[1] - prompt_len)
    ranked = sorted((h for group in hyps for h in group.beams), key=lambda h: h[0])
    return [ranked.pop()[1] for _ in range(num_beams)]  # pop from the end: HF's order among equal scores
