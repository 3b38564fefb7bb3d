"""Diverse beam search (Vijayakumar et al., 2018), the paper's inference mode: 16 beams in 16 groups,
diversity penalty 1.0. Our own loop (transformers 5 moved it out of generate()); no key/value cache
(beams are re-ranked every step and prompts are short).

Groups take turns at each step; a group's token log-probabilities are lowered by
diversity_penalty x (how many earlier groups picked that token at this step), then ordinary beam
search runs inside the group. A hypothesis ends at the end token (score = sum log p / length) or at
max_new_tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .trajectories import forbid_early_end


@torch.no_grad()
def diverse_beam_search(model, prompt_ids: list[int], eos_id: int, num_beams: int = 16, num_groups: int = 16,
                        diversity_penalty: float = 1.0, max_new_tokens: int = 75,
                        min_new_tokens: int = 0) -> list[list[int]]:
    """Token lists (no end token), the best hypothesis of each group first, num_beams in all."""
    if num_beams % num_groups:
        raise ValueError(f"num_beams ({num_beams}) must be a multiple of num_groups ({num_groups})")
    width = num_beams // num_groups
    device = model.get_input_embeddings().weight.device
    prompt = torch.as_tensor(prompt_ids, dtype=torch.long, device=device)
    # per group: running beams as (tokens, summed log-prob); finished as (normalized score, tokens)
    running = [[([], 0.0)] for _ in range(num_groups)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(num_groups)]
    for t in range(max_new_tokens):
        picked = torch.zeros(model.get_input_embeddings().num_embeddings, device=device)
        for g in range(num_groups):
            if len(finished[g]) >= width or not running[g]:
                continue
            seqs = torch.stack([torch.cat([prompt, torch.tensor(b, dtype=torch.long, device=device)])
                                for b, _ in running[g]])
            logits = forbid_early_end(model(seqs).logits[:, -1].float(), t, eos_id, min_new_tokens)
            logp = F.log_softmax(logits, -1)
            scores = torch.tensor([s for _, s in running[g]], device=device).unsqueeze(1) + logp
            ranked = scores - diversity_penalty * picked[: logp.shape[1]]
            top = ranked.flatten().topk(min(2 * width, ranked.numel())).indices
            new = []
            for flat in top.tolist():
                beam, token = divmod(flat, logp.shape[1])
                tokens, total = running[g][beam][0] + [token], float(scores[beam, token])
                if token == eos_id:
                    finished[g].append((total / len(tokens), tokens[:-1]))
                else:
                    new.append((tokens, total))
                picked[token] += 1
                if len(new) == width or len(finished[g]) >= width:
                    break
            running[g] = new
        if all(len(f) >= width or not r for f, r in zip(finished, running)):
            break
    out = []
    for g in range(num_groups):
        pool = finished[g] + [(s / len(b), b) for b, s in running[g]]  # unfinished at max_new_tokens
        out += [tokens for _, tokens in sorted(pool, key=lambda x: -x[0])[:width]]
    return out
