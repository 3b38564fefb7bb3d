"""The lab text encoder: SD1.x's CLIP text model computed cheaply, with only what the lab world needs trained.

ComfyUI builds SD1.x's text encoder from a fixed config (12 layers, 768 wide, 49408 tokens). The lab
trains the attention of one layer, with low-rank weights (so training on a CPU is fast and the stored
file small), and the embedding rows of the world's own tokens. Expanded into the checkpoint:
- the trained attention becomes layer 0's, its weights the products of the low-rank factors;
- every MLP and layers 1-11 are identities: their output projections are zero, so each residual block
  adds nothing (the causal CLIP computation then equals this module's);
- the vocabulary rows the world never uses are drawn from a fixed seed with the trained rows' scale.
Token ids come from ComfyUI's own SD1 tokenizer, so the lab trains on exactly what CLIP Text Encode feeds.
"""
from __future__ import annotations

import math

import torch
from torch import nn

WIDTH, HEADS, LAYERS, POSITIONS, VOCAB, MLP = 768, 12, 12, 77, 49408, 3072
RANK = 32


class LowRankLinear(nn.Module):
    def __init__(self, n_in: int, n_out: int, rank: int):
        super().__init__()
        self.down = nn.Parameter(torch.randn(rank, n_in) / math.sqrt(n_in))
        self.up = nn.Parameter(torch.randn(n_out, rank) / math.sqrt(rank) * 0.5)
        self.bias = nn.Parameter(torch.zeros(n_out))

    def weight(self) -> torch.Tensor:
        return self.up @ self.down

    def forward(self, x):
        return (x @ self.down.t()) @ self.up.t() + self.bias


class LabTextEncoder(nn.Module):
    """Token ids (B x 77, ComfyUI SD1 tokenizer) -> token states (B x 77 x 768), as CLIP 'last' layer."""

    def __init__(self, token_ids: list[int], rank: int = RANK):
        super().__init__()
        self.register_buffer("token_ids", torch.tensor(sorted(set(token_ids)), dtype=torch.long))
        self.token_embedding = nn.Parameter(torch.randn(len(self.token_ids), WIDTH) * 0.02)
        self.position_embedding = nn.Parameter(torch.randn(POSITIONS, WIDTH) * 0.01)
        self.norm1, self.final_norm = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.q, self.k, self.v, self.o = (LowRankLinear(WIDTH, WIDTH, rank) for _ in range(4))

    def local_ids(self, ids: torch.Tensor) -> torch.Tensor:
        local = torch.searchsorted(self.token_ids, ids).clamp(max=len(self.token_ids) - 1)
        if not torch.equal(self.token_ids[local], ids):
            unknown = sorted(set(ids[self.token_ids[local] != ids].tolist()))
            raise ValueError(f"token ids {unknown[:10]} are not in the lab vocabulary")
        return local

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding[self.local_ids(ids)] + self.position_embedding[: ids.shape[1]]
        b, n, _ = x.shape
        h = self.norm1(x)
        q, k, v = (p(h).view(b, n, HEADS, WIDTH // HEADS).transpose(1, 2) for p in (self.q, self.k, self.v))
        attended = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(attended.transpose(1, 2).reshape(b, n, WIDTH))
        return self.final_norm(x)

    def vocabulary_table(self, seed: int = 0) -> torch.Tensor:
        """(VOCAB, WIDTH) rows: the trained ones, the rest drawn from `seed` at the trained rows' scale."""
        trained = self.token_embedding.detach().float()
        gen = torch.Generator().manual_seed(seed)
        table = torch.randn(VOCAB, WIDTH, generator=gen) * trained.std()
        table[self.token_ids.cpu()] = trained.cpu()
        return table

    def with_full_vocabulary(self, seed: int = 0) -> "LabTextEncoder":
        """This encoder over every SD1 token id, rows as the expanded checkpoint has them: it encodes any
        text exactly as ComfyUI's CLIP Text Encode does with that checkpoint, words outside the world too."""
        full = LabTextEncoder(list(range(VOCAB)), rank=self.q.down.shape[0])
        state = {**self.state_dict(), "token_ids": full.token_ids, "token_embedding": self.vocabulary_table(seed)}
        full.load_state_dict(state)
        return full.to(self.token_embedding.device).eval()

    def expand(self, prefix: str = "cond_stage_model.transformer.text_model.", seed: int = 0) -> dict[str, torch.Tensor]:
        """The full SD1.x text-encoder weights (see the module docstring)."""
        out: dict[str, torch.Tensor] = {}
        out[prefix + "embeddings.token_embedding.weight"] = self.vocabulary_table(seed)
        out[prefix + "embeddings.position_embedding.weight"] = self.position_embedding.detach().float()
        for i in range(LAYERS):
            layer = f"{prefix}encoder.layers.{i}."
            trained = i == 0
            out[layer + "layer_norm1.weight"] = self.norm1.weight.detach().float() if trained else torch.ones(WIDTH)
            out[layer + "layer_norm1.bias"] = self.norm1.bias.detach().float() if trained else torch.zeros(WIDTH)
            out[layer + "layer_norm2.weight"], out[layer + "layer_norm2.bias"] = torch.ones(WIDTH), torch.zeros(WIDTH)
            parts = (("self_attn.q_proj", self.q, WIDTH, WIDTH), ("self_attn.k_proj", self.k, WIDTH, WIDTH),
                     ("self_attn.v_proj", self.v, WIDTH, WIDTH), ("self_attn.out_proj", self.o, WIDTH, WIDTH),
                     ("mlp.fc1", None, MLP, WIDTH), ("mlp.fc2", None, WIDTH, MLP))
            for name, src, n_out, n_in in parts:
                used = trained and src is not None
                out[layer + name + ".weight"] = src.weight().detach().float() if used else torch.zeros(n_out, n_in)
                out[layer + name + ".bias"] = src.bias.detach().float() if used else torch.zeros(n_out)
        out[prefix + "final_layer_norm.weight"] = self.final_norm.weight.detach().float()
        out[prefix + "final_layer_norm.bias"] = self.final_norm.bias.detach().float()
        return out
