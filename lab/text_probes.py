"""Does the lab text encoder pass an appended token on, as CLIP does? Probes and their report.

MinorityPrompt appends one learned token before the end token, and textual inversion in general relies
on later token states reading it: in SD1.5's CLIP the end and padding states attend to every earlier
token, and the UNet reads the caption largely from those states. A text encoder whose later rows ignore
an appended token makes such a method invisible in the lab. These probes measure that on any
`LabTextEncoder`, with the token's input row inserted before the end token (the rest shifted right, as
a prompt one token longer):

- attention share: the attention weight the padding queries (positions after the end token) put on the
  token's position, averaged over heads, padding queries, captions and token rows, per layer;
- padding sensitivity: the largest singular value of d c[padding] / d v, how much the encoder's padding
  rows can move per unit change of the token's input row v, found by power iteration on Jacobian-vector
  products; compared with the same quantity for a content word of the caption (its own input row), which
  the UNet demonstrably reads;
- saturation: the largest attention logit and the median gap between each query's top two logits
  (a query whose gap is in the hundreds gives one key all its weight, whatever else is appended).

    python -m lab.text_probes [--weights lab/weights/lab_ldm_v1.safetensors] [--out benchmarks/lab_text_probes.md]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from benchmarks import harness
from lab.text_encoder import end_position

REPORT = harness.ROOT / "benchmarks" / "lab_text_probes.md"
CAPTIONS = ("a circle", "a red square", "a small blue triangle on the left", "a green circle, black background")
# the acceptance thresholds the lab's text encoder is held to (see lab/README.md)
MIN_ATTENTION_SHARE = 0.05
MIN_SENSITIVITY_RATIO = 0.25


def with_token(encoder, ids: torch.Tensor, row: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Input embeddings (1, N, width) of `ids` (1, N) with `row` inserted before the end token, and its
    position. The sequence keeps its length: the last padding position drops out."""
    end = end_position(ids[0])
    return encoder.embed_inserting(ids, [end], row.view(1, -1)), end


def attention_share(encoder, ids: torch.Tensor, row: torch.Tensor) -> list[float]:
    """Per layer: mean attention of the padding queries on the inserted token (heads and queries averaged)."""
    x, position = with_token(encoder, ids, row)
    recorded: list[torch.Tensor] = []
    with torch.no_grad():
        encoder.encode_embeddings(x, recorded)
    padding = slice(position + 2, x.shape[1])  # after the shifted end token
    return [float(weights[0, :, padding, position].mean()) for weights in recorded]


def saturation(encoder, ids: torch.Tensor) -> tuple[float, float]:
    """(largest attention logit, median gap between a query's top two keys) over all layers and heads."""
    x = encoder.embed(ids)
    largest, gaps = 0.0, []
    with torch.no_grad():
        for block in encoder.blocks:
            logits, _ = block.attention_logits(block.norm1(x))
            n = logits.shape[-1]
            causal = torch.ones(n, n, dtype=torch.bool).tril()
            logits = logits.masked_fill(~causal, float("-inf"))[..., 1:, :]  # query 0 sees one key only
            top = logits.topk(2, dim=-1).values
            largest = max(largest, float(top[..., 0].max()))
            gaps += (top[..., 0] - top[..., 1]).flatten().tolist()
            x = block(x)
    return largest, statistics.median(gaps)


def sensitivity(encoder, x: torch.Tensor, position: int, rows: slice, iterations: int = 30, seed: int = 0) -> float:
    """Largest singular value of d out[rows] / d x[position] (power iteration on J^T J)."""
    def output_rows(v: torch.Tensor) -> torch.Tensor:
        moved = torch.cat([x[:, :position], v.view(1, 1, -1), x[:, position + 1:]], 1)
        # a list for the attention weights selects the unfused attention: forward-mode AD has no rule for
        # the fused kernel
        return encoder.encode_embeddings(moved, [])[0, rows]

    v0 = x[0, position].detach()
    u = torch.randn(v0.shape, generator=torch.Generator().manual_seed(seed))
    u = u / u.norm()
    value = 0.0
    _, pullback = torch.func.vjp(output_rows, v0)  # J^T, reused by every iteration
    for _ in range(iterations):
        _, ju = torch.func.jvp(output_rows, (v0,), (u,))
        (jtju,) = pullback(ju)
        norm = float(jtju.detach().norm())
        if norm == 0.0:
            return 0.0
        value = norm ** 0.5  # ||J^T J u|| -> sigma_max^2 as u converges
        u = jtju.detach() / norm
    return value


def probe(encoder, tokenizer, token_rows: torch.Tensor, content_word: str = "circle") -> dict:
    """All probes over CAPTIONS and `token_rows` (k, width), per row averaged over the captions.
    Sensitivities are of the padding rows (after the end token), what the lab UNet reads the caption from;
    the reference is a content word's own row in the captions that name `content_word`."""
    shares = [[] for _ in token_rows]  # per token row, per caption: a list over layers
    token_sens = [[] for _ in token_rows]
    word_sens = []
    word_id = int(tokenizer([content_word])[0, 1])
    for caption in CAPTIONS:
        ids = tokenizer([caption])
        end = end_position(ids[0])
        for r, row in enumerate(token_rows):
            shares[r].append(attention_share(encoder, ids, row))
            x, position = with_token(encoder, ids, row)
            token_sens[r].append(sensitivity(encoder, x.detach(), position, slice(position + 2, None)))
        if word_id in ids[0].tolist():
            word_position = ids[0].tolist().index(word_id)
            word_sens.append(sensitivity(encoder, encoder.embed(ids).detach(), word_position, slice(end + 1, None)))
    largest, gap = saturation(encoder, tokenizer(list(CAPTIONS)))
    layers = len(encoder.blocks)
    per_row_layer = [[statistics.fmean(c[i] for c in row) for i in range(layers)] for row in shares]
    return {"share_per_row": [statistics.fmean(r) for r in per_row_layer],
            "share_per_layer": [statistics.fmean(r[i] for r in per_row_layer) for i in range(layers)],
            "sensitivity_per_row": [statistics.fmean(r) for r in token_sens],
            "word_sensitivity": statistics.fmean(word_sens), "largest_logit": largest, "median_top2_gap": gap}


def token_rows(encoder, world_ids: set[int], tokenizer, count: int = 4, seed: int = 0):
    """The rows a learned token starts from: a world word the captions do not all name ('yellow'), a word
    outside the world ('cool', the authors' init), and rows of the full vocabulary (as the expanded
    checkpoint has them) that the world never uses. Returns (rows (count, width), their names)."""
    words = ["yellow", "cool"]
    table = encoder.vocabulary_table(seed)
    gen = torch.Generator().manual_seed(seed)
    drawn = torch.randint(0, table.shape[0], (4 * count,), generator=gen).tolist()
    unseen = [i for i in drawn if i not in world_ids][: count - len(words)]
    ids = [int(tokenizer([w])[0, 1]) for w in words] + unseen
    names = [f"'{w}'" for w in words] + [f"vocabulary row {i}" for i in unseen]
    return table[ids].to(encoder.token_embedding.dtype), names


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, default=harness.ROOT / "lab" / "weights" / "lab_ldm_v1.safetensors")
    harness.add_out_option(ap, REPORT)
    args = ap.parse_args(argv)
    from safetensors.torch import load_file

    from devtools.comfy_path import configure_comfy_args
    from lab.text_encoder import LabTextEncoder
    from lab.train import Tokenizer

    configure_comfy_args()  # the tokenizer is ComfyUI's
    torch.set_num_threads(1)
    start = time.time()
    tokenizer = Tokenizer()
    compact = LabTextEncoder.from_compact(load_file(str(args.weights)))
    encoder = compact.with_full_vocabulary().eval()
    rows, names = token_rows(encoder, set(compact.token_ids.tolist()), tokenizer)
    found = probe(encoder, tokenizer, rows)
    share = statistics.fmean(found["share_per_row"])
    ratio = statistics.fmean(found["sensitivity_per_row"]) / found["word_sensitivity"]
    verdict = {True: "passes", False: "fails"}
    table = ["| appended token row | padding queries' attention on it | σmax of d c[padding] / d v |",
             "|---|---|---|",
             *(f"| {name} | {a:.4f} | {g:.4f} |"
               for name, a, g in zip(names, found["share_per_row"], found["sensitivity_per_row"])),
             f"| mean | {share:.4f} | {statistics.fmean(found['sensitivity_per_row']):.4f} |",
             "", "| probe | value | acceptance |", "|---|---|---|",
             f"| attention share (mean over token rows, layers, heads, padding queries) | {share:.4f} | "
             f"≥ {MIN_ATTENTION_SHARE}: {verdict[share >= MIN_ATTENTION_SHARE]} |",
             "| attention share per layer | " + ", ".join(f"{v:.4f}" for v in found["share_per_layer"]) + " | |",
             f"| σmax of d c[padding] / d v, content word 'circle' (its own row) | "
             f"{found['word_sensitivity']:.4f} | |",
             f"| padding sensitivity, appended token / content word | {ratio:.4f} | ≥ {MIN_SENSITIVITY_RATIO}: "
             f"{verdict[ratio >= MIN_SENSITIVITY_RATIO]} |",
             f"| largest attention logit | {found['largest_logit']:.1f} | |",
             f"| median gap between a query's top two logits | {found['median_top2_gap']:.1f} | |"]
    weights = args.weights.resolve()
    shown = weights.relative_to(harness.ROOT) if weights.is_relative_to(harness.ROOT) else weights
    body = [f"Encoder: `{shown}` ({len(encoder.blocks)} block(s), MLP width {encoder.blocks[0].mlp_width}), "
            "over its full vocabulary as the expanded checkpoint has it; one thread. Captions: "
            + ", ".join(f"'{c}'" for c in CAPTIONS) + ". Appended token rows: " + ", ".join(names)
            + ". Method: `lab/text_probes.py`.", "", *table]
    harness.write_report(args.out, "The lab text encoder and an appended token", "lab.text_probes", body,
                         cuda=False, wall_s=time.time() - start)


if __name__ == "__main__":
    main()
