"""The lab text encoder: SD1.x's CLIP text model computed cheaply, with only what the lab world needs trained.

ComfyUI builds SD1.x's text encoder from a fixed config (12 layers, 768 wide, 49408 tokens). The lab
trains the first `layers` blocks (pre-layer-norm, causal, as CLIP's), each an attention with low-rank
weights (so training on a CPU is fast and the stored file small) and, with `mlp_width` > 0, a narrow MLP
(CLIP's quick_gelu), plus the embedding rows of the world's own tokens. Expanded into the checkpoint:
- trained block i becomes CLIP layer i: attention weights are the products of the low-rank factors, the
  narrow MLP fills the first `mlp_width` of CLIP's 3072 hidden units (the rest have zero weights, and
  quick_gelu(0) = 0, so they add nothing);
- a block without MLP, and layers `layers`-11, are identities: their output projections are zero, so
  each residual block adds nothing (the causal CLIP computation then equals this module's);
- the vocabulary rows the world never uses are drawn from a fixed seed with the trained rows' scale.
Token ids come from ComfyUI's own SD1 tokenizer, so the lab trains on exactly what CLIP Text Encode feeds.
The v1 weights (one block, no MLP) were stored before blocks had names; `from_compact` reads both.
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


def end_position(ids: torch.Tensor) -> int:
    """Where the end token is in one row of SD1 ids (it also pads the row: its first occurrence)."""
    return int((ids == ids[-1]).nonzero()[0])


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


class Block(nn.Module):
    """One CLIP encoder layer: x + attention(norm1(x)), then x + MLP(norm2(x)) when it has one."""

    def __init__(self, rank: int, mlp_width: int = 0):
        super().__init__()
        self.norm1 = nn.LayerNorm(WIDTH)
        self.q, self.k, self.v, self.o = (LowRankLinear(WIDTH, WIDTH, rank) for _ in range(4))
        if mlp_width:
            self.norm2 = nn.LayerNorm(WIDTH)
            self.fc1, self.fc2 = nn.Linear(WIDTH, mlp_width), nn.Linear(mlp_width, WIDTH)

    @property
    def mlp_width(self) -> int:
        return self.fc1.out_features if hasattr(self, "fc1") else 0

    def attention_logits(self, h: torch.Tensor):
        """Per-head queries·keys / sqrt(d) (B, HEADS, N, N) before the causal mask, and the values."""
        b, n, _ = h.shape
        q, k, v = (p(h).view(b, n, HEADS, WIDTH // HEADS).transpose(1, 2) for p in (self.q, self.k, self.v))
        return q @ k.transpose(-1, -2) / math.sqrt(WIDTH // HEADS), v

    def forward(self, x: torch.Tensor, attention: list | None = None, logits: list | None = None) -> torch.Tensor:
        """`attention` / `logits`: lists that receive this block's attention weights / its logits with the
        masked entries zeroed (B, HEADS, N, N)."""
        b, n, _ = x.shape
        h = self.norm1(x)
        if attention is None and logits is None:
            q, k, v = (p(h).view(b, n, HEADS, WIDTH // HEADS).transpose(1, 2) for p in (self.q, self.k, self.v))
            attended = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores, v = self.attention_logits(h)
            causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
            weights = scores.masked_fill(~causal, float("-inf")).softmax(-1)
            if attention is not None:
                attention.append(weights)
            if logits is not None:
                logits.append(scores.masked_fill(~causal, 0.0))
            attended = weights @ v
        x = x + self.o(attended.transpose(1, 2).reshape(b, n, WIDTH))
        if self.mlp_width:
            x = x + self.fc2(quick_gelu(self.fc1(self.norm2(x))))
        return x


class LabTextEncoder(nn.Module):
    """Token ids (B x 77, ComfyUI SD1 tokenizer) -> token states (B x 77 x 768), as CLIP 'last' layer."""

    def __init__(self, token_ids: list[int], rank: int = RANK, layers: int = 1, mlp_width: int = 0):
        super().__init__()
        if not 1 <= layers <= LAYERS or not 0 <= mlp_width <= MLP:
            raise ValueError(f"layers must be 1-{LAYERS} and mlp_width 0-{MLP}; got {layers}, {mlp_width}")
        self.register_buffer("token_ids", torch.tensor(sorted(set(token_ids)), dtype=torch.long))
        self.token_embedding = nn.Parameter(torch.randn(len(self.token_ids), WIDTH) * 0.02)
        self.position_embedding = nn.Parameter(torch.randn(POSITIONS, WIDTH) * 0.01)
        self.blocks = nn.ModuleList(Block(rank, mlp_width) for _ in range(layers))
        self.final_norm = nn.LayerNorm(WIDTH)

    @classmethod
    def from_compact(cls, state: dict[str, torch.Tensor]) -> "LabTextEncoder":
        """The encoder stored under `text.` in a compact lab file (its shape read from the keys)."""
        text = {k[len("text."):]: v.float() for k, v in state.items() if k.startswith("text.")}
        if "q.down" in text:  # v1: one unnamed block
            text = {(f"blocks.0.{k}" if k.split(".")[0] in ("norm1", "q", "k", "v", "o") else k): v
                    for k, v in text.items()}
        layers = 1 + max(int(k.split(".")[1]) for k in text if k.startswith("blocks."))
        mlp_width = text["blocks.0.fc1.weight"].shape[0] if "blocks.0.fc1.weight" in text else 0
        encoder = cls(text["token_ids"].long().tolist(), rank=text["blocks.0.q.down"].shape[0], layers=layers,
                      mlp_width=mlp_width)
        encoder.load_state_dict({**text, "token_ids": text["token_ids"].long()})
        return encoder

    def local_ids(self, ids: torch.Tensor) -> torch.Tensor:
        local = torch.searchsorted(self.token_ids, ids).clamp(max=len(self.token_ids) - 1)
        if not torch.equal(self.token_ids[local], ids):
            unknown = sorted(set(ids[self.token_ids[local] != ids].tolist()))
            raise ValueError(f"token ids {unknown[:10]} are not in the lab vocabulary")
        return local

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """The input rows (token + position embeddings), where a learned token's row is placed."""
        return self.token_embedding[self.local_ids(ids)] + self.position_embedding[: ids.shape[1]]

    def embed_inserting(self, ids: torch.Tensor, positions: list[int | None], rows: torch.Tensor) -> torch.Tensor:
        """Input rows of `ids` (B, N) with rows[b] inserted at positions[b] (None: nothing inserted), the
        later tokens shifted right, as a prompt one token longer (the last padding position drops out)."""
        tokens = self.token_embedding[self.local_ids(ids)]
        out = []
        for b, position in enumerate(positions):
            if position is None:
                out.append(tokens[b])
            else:
                out.append(torch.cat([tokens[b, :position], rows[b].view(1, -1), tokens[b, position:-1]]))
        return torch.stack(out) + self.position_embedding[: ids.shape[1]]

    def encode_embeddings(self, x: torch.Tensor, attention: list | None = None,
                          logits: list | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, attention, logits)
        return self.final_norm(x)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.encode_embeddings(self.embed(ids))

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
        block = self.blocks[0]
        full = LabTextEncoder(list(range(VOCAB)), rank=block.q.down.shape[0], layers=len(self.blocks),
                              mlp_width=block.mlp_width)
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
            out.update({layer + k: v for k, v in self._clip_layer(i).items()})
        out[prefix + "final_layer_norm.weight"] = self.final_norm.weight.detach().float()
        out[prefix + "final_layer_norm.bias"] = self.final_norm.bias.detach().float()
        return out

    def _clip_layer(self, i: int) -> dict[str, torch.Tensor]:
        """CLIP layer i's weights: trained block i, or an identity layer (zero output projections)."""
        block = self.blocks[i] if i < len(self.blocks) else None
        width = block.mlp_width if block is not None else 0

        def norm(module) -> tuple[torch.Tensor, torch.Tensor]:
            if module is None:
                return torch.ones(WIDTH), torch.zeros(WIDTH)
            return module.weight.detach().float(), module.bias.detach().float()

        out = {}
        out["layer_norm1.weight"], out["layer_norm1.bias"] = norm(block.norm1 if block is not None else None)
        out["layer_norm2.weight"], out["layer_norm2.bias"] = norm(block.norm2 if width else None)
        for name in ("q", "k", "v", "o"):
            clip_name = "self_attn." + ("out_proj" if name == "o" else f"{name}_proj")
            weight, bias = torch.zeros(WIDTH, WIDTH), torch.zeros(WIDTH)
            if block is not None:
                src = getattr(block, name)
                weight, bias = src.weight().detach().float(), src.bias.detach().float()
            out[clip_name + ".weight"], out[clip_name + ".bias"] = weight, bias
        fc1_w, fc1_b = torch.zeros(MLP, WIDTH), torch.zeros(MLP)
        fc2_w, fc2_b = torch.zeros(WIDTH, MLP), torch.zeros(WIDTH)
        if width:
            fc1_w[:width], fc1_b[:width] = block.fc1.weight.detach().float(), block.fc1.bias.detach().float()
            fc2_w[:, :width], fc2_b = block.fc2.weight.detach().float(), block.fc2.bias.detach().float()
        out.update({"mlp.fc1.weight": fc1_w, "mlp.fc1.bias": fc1_b, "mlp.fc2.weight": fc2_w, "mlp.fc2.bias": fc2_b})
        return out
