"""Rewrites as trajectories: sampling token by token, then scoring the taken actions in one forward pass.

A prompt x (the template applied, tokenized) is the initial state s_0; each new token a_t moves
s_t -> s_{t+1}; the end-of-text token, or reaching max_new_tokens, ends the rewrite. Sampling runs
without gradient (key/value cache, any temperature); the training losses then re-score the actions
with gradient at temperature 1 by teacher forcing, which serves on-policy and replayed rewrites alike.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_TEMPLATE = "{prompt} Rephrase:\n"


def encode_prompt(tokenizer, prompt: str, template: str = DEFAULT_TEMPLATE) -> list[int]:
    ids = tokenizer(template.format(prompt=prompt.strip()), add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"the prompt {prompt!r} encodes to no tokens")
    return ids


def forbid_early_end(logits: torch.Tensor, step: int | torch.Tensor, eos_id: int, min_new_tokens: int) -> torch.Tensor:
    """No end-of-text before min_new_tokens: logits (..., V) at generation step `step` (a tensor: per position)."""
    if isinstance(step, int):
        if step >= min_new_tokens:
            return logits
        logits = logits.clone()
        logits[..., eos_id] = float("-inf")
        return logits
    early = (step < min_new_tokens).to(logits.device)
    eos = torch.where(early, torch.full_like(logits[..., eos_id], float("-inf")), logits[..., eos_id])
    return torch.cat([logits[..., :eos_id], eos.unsqueeze(-1), logits[..., eos_id + 1:]], dim=-1)


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches top_p (nucleus sampling)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    drop = cumulative - sorted_logits.softmax(-1) >= top_p  # tokens after the set reached top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


@dataclass
class Trajectories:
    """n rewrites of one prompt: actions (n, T), padded with eos after the end; mask (n, T) marks taken actions."""
    prompt_ids: torch.Tensor  # (P,)
    actions: torch.Tensor
    mask: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(1)

    def texts(self, tokenizer, keep_prompt: bool = False) -> list[str]:
        """The rewrites as text: the continuations, or (keep_prompt) the prompt ids and continuation decoded
        together, so the join reads as the model wrote it."""
        prefix = [int(t) for t in self.prompt_ids] if keep_prompt else []
        out = []
        for row, keep in zip(self.actions, self.mask):
            ids = [int(t) for t in row[keep] if int(t) != tokenizer.eos_token_id]
            out.append(tokenizer.decode(prefix + ids, skip_special_tokens=True).strip())
        return out


@torch.no_grad()
def sample(model, prompt_ids: list[int] | torch.Tensor, n: int, eos_id: int, max_new_tokens: int,
           min_new_tokens: int = 0, temperature: float = 1.0, top_p: float = 1.0,
           generator: torch.Generator | None = None) -> Trajectories:
    device = model.get_input_embeddings().weight.device
    prompt = torch.as_tensor(prompt_ids, dtype=torch.long, device=device)
    start = prompt.unsqueeze(0).expand(n, -1)
    out = model(start, attention_mask=torch.ones_like(start), use_cache=True)
    cache, logits = out.past_key_values, out.logits[:, -1]
    actions = torch.full((n, max_new_tokens), eos_id, dtype=torch.long, device=device)
    alive = torch.ones(n, dtype=torch.bool, device=device)
    mask = torch.zeros(n, max_new_tokens, dtype=torch.bool, device=device)
    for t in range(max_new_tokens):
        step = forbid_early_end(logits.float(), t, eos_id, min_new_tokens) / max(temperature, 1e-6)
        probs = top_p_filter(step, top_p).softmax(-1)
        token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        token = torch.where(alive, token, torch.full_like(token, eos_id))
        actions[:, t], mask[:, t] = token, alive
        alive = alive & (token != eos_id)
        if not alive.any() or t + 1 == max_new_tokens:
            break
        out = model(token.unsqueeze(1), past_key_values=cache, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1]
    used = int(mask.sum(1).max())
    return Trajectories(prompt.cpu(), actions[:, :used].cpu(), mask[:, :used].cpu())


@dataclass
class Scored:
    """Per action: log-probability at temperature 1 (0 where masked); per state s_t, t < T: the last
    hidden state (for the flow head); a summary of the prompt's hidden states; both detached unless asked."""
    log_probs: torch.Tensor  # (n, T)
    state_hidden: torch.Tensor  # (n, T, D)
    prompt_hidden: torch.Tensor  # (n, D)


PROMPT_SUMMARIES = ("mean", "sum_without_last")


def score(model, traj: Trajectories, eos_id: int, min_new_tokens: int = 0, hidden: bool = True,
          prompt_summary: str = "mean", detach_hidden: bool = True) -> Scored:
    """Teacher-forced log P(a_t | s_t) of the taken actions (with gradient if enabled). `prompt_summary`: the
    flow head's prompt input, the mean of the prompt's last-layer states, or (the authors' code) their sum
    without the prompt's last token. `detach_hidden` False: the hidden states keep their graph, so a loss
    on the flow head also trains the policy's states."""
    device = model.get_input_embeddings().weight.device if not hasattr(model, "module") else \
        model.module.get_input_embeddings().weight.device
    n, T = traj.actions.shape
    P = traj.prompt_ids.numel()
    ids = torch.cat([traj.prompt_ids.unsqueeze(0).expand(n, -1), traj.actions], 1).to(device)
    attention = torch.cat([torch.ones(n, P, dtype=torch.long), traj.mask.long()], 1).to(device)
    out = model(input_ids=ids, attention_mask=attention, output_hidden_states=hidden)
    logits = out.logits[:, P - 1:P - 1 + T].float()  # logits at s_t predict a_t
    logits = forbid_early_end(logits, torch.arange(T, device=device), eos_id, min_new_tokens)
    mask = traj.mask.to(device)
    log_probs = F.log_softmax(logits, -1).gather(-1, traj.actions.to(device).unsqueeze(-1)).squeeze(-1)
    log_probs = torch.where(mask, log_probs, torch.zeros_like(log_probs))
    if not hidden:
        return Scored(log_probs, None, None)
    last = out.hidden_states[-1].float()
    if detach_hidden:
        last = last.detach()
    if prompt_summary == "mean":
        summary = last[:, :P].mean(1)
    elif prompt_summary == "sum_without_last":
        summary = last[:, :P - 1].sum(1)
    else:
        raise ValueError(f"prompt_summary must be one of {PROMPT_SUMMARIES}; got {prompt_summary!r}")
    return Scored(log_probs, last[:, P - 1:P - 1 + T], summary)
