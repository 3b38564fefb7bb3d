"""Tiny prompt-rewriter policies in the users' layout (a Hugging Face causal-LM folder), for tests and the demo.

    python -m devtools.prompt_rewriters [--out DIR]     # prints the folder

  prompt_optim_test_gpt2/          GPT-2 (2 layers, width 32) + a word-level tokenizer built offline
  bad/missing_tokenizer/           the same model without tokenizer files
  bad/not_causal_lm/               a GPT2Model (no language-model head)
The tokenizer is a `tokenizers` WordLevel model over a fixed word list, wrapped as PreTrainedTokenizerFast:
nothing is downloaded. Weights are seeded; the folder is cached under its build key (devtools/asset_cache.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from devtools.asset_cache import build_inputs, cached
from devtools.comfy_path import CACHE

DEFAULT_DIR = CACHE / "prompt_rewriters"
EOS = "<|endoftext|>"
NAMES = {"policy": "prompt_optim_test_gpt2"}
BAD = {"missing_tokenizer": "bad/missing_tokenizer", "not_causal_lm": "bad/not_causal_lm"}

# the toy task's words: prompts, the rewrite template, and style words a reward can ask for
SUBJECTS = "a an the cat dog apple house tree car bird river city portrait of on in with and at".split()
STYLE = "detailed cinematic lighting sharp colorful painting photo artstation trending vivid".split()
OTHER = "red blue green old small big quiet dark bright morning night wooden stone glass".split()
WORDS = sorted(set(SUBJECTS + STYLE + OTHER + ["Rephrase", ":", ",", "."]))


def build_tokenizer(words: list[str] = WORDS):
    """A word-level tokenizer over `words` (whitespace and punctuation split), the end-of-text token doubling
    as pad. Offline; also the lab rewriters' tokenizer (lab/rewriter.py)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {EOS: 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS,
                                   unk_token="[UNK]")


def tiny_gpt2(vocab_size: int, seed: int = 0, lm_head: bool = True):
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_positions=96, n_embd=32, n_layer=2, n_head=2, bos_token_id=0,
                        eos_token_id=0, pad_token_id=0)
    return (GPT2LMHeadModel if lm_head else GPT2Model)(config).eval()


def write_policy(folder: Path, seed: int = 0) -> Path:
    tokenizer = build_tokenizer()
    tiny_gpt2(len(tokenizer), seed).save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


def prompt_rewriters_dir(out_dir: Path | None = None) -> Path:
    """The folder holding the tiny policy and the bad folders (generated on first use)."""
    def write(folder: Path) -> None:
        write_policy(folder / NAMES["policy"])
        tiny_gpt2(len(WORDS) + 2).save_pretrained(str(folder / BAD["missing_tokenizer"]), safe_serialization=True)
        not_lm = folder / BAD["not_causal_lm"]
        tiny_gpt2(len(WORDS) + 2, lm_head=False).save_pretrained(str(not_lm), safe_serialization=True)
        build_tokenizer().save_pretrained(str(not_lm))

    return cached(Path(out_dir or DEFAULT_DIR), "prompt_rewriters", build_inputs([__file__]), write)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None)
    print(prompt_rewriters_dir(ap.parse_args().out))


if __name__ == "__main__":
    main()
