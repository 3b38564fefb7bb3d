"""Tiny prompt-rewriter policies in the users' layout (a Hugging Face causal-LM folder), for tests and the demo.

    python -m devtools.prompt_rewriters [--out DIR]     # prints the folder

  prompt_optim_test_gpt2/          GPT-2 (2 layers, width 32) + a word-level tokenizer built offline
  prompt_optim_test_promptist/     a tiny random GPT-2 in microsoft/Promptist's layout (below)
  prompt_optim_test_magicprompt/   the same in Gustavosta/MagicPrompt-Stable-Diffusion's layout (below)
  bad/missing_tokenizer/           the same model without tokenizer files
  bad/not_causal_lm/               a GPT2Model (no language-model head)
The tokenizer is a `tokenizers` WordLevel model over a fixed word list, wrapped as PreTrainedTokenizerFast:
nothing is downloaded. Weights are seeded; the folder is cached under its build key (devtools/asset_cache.py).

The published layouts, as old GPT-2 checkpoints are saved: an old-style config.json, pytorch_model.bin (torch.save
of the state dict, with the tied lm_head.weight and each layer's attn.bias / attn.masked_bias mask buffers), and
a byte-level BPE tokenizer (trained offline on the toy words) as vocab.json + merges.txt with tokenizer_config.json
and special_tokens_map.json; the Promptist layout also has tokenizer.json. The end token <|endoftext|> is the
last id, as in GPT-2.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from devtools.asset_cache import build_inputs, cached
from devtools.comfy_path import CACHE

DEFAULT_DIR = CACHE / "prompt_rewriters"
EOS = "<|endoftext|>"
NAMES = {"policy": "prompt_optim_test_gpt2", "promptist": "prompt_optim_test_promptist",
         "magicprompt": "prompt_optim_test_magicprompt"}
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


def _bpe_tokenizer(vocab_size: int = 300):
    """A byte-level BPE (GPT-2's scheme) trained on sentences of the toy words: (vocab with EOS last, merges)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    corpus = [" ".join(WORDS[i::k]) + " Rephrase: " + ", ".join(STYLE[i % 3::2]) for k in (3, 5, 7) for i in range(k)]
    tok.train_from_iterator(corpus, trainer)
    vocab = tok.get_vocab()
    merges = json.loads(tok.to_str())["model"]["merges"]
    vocab[EOS] = len(vocab)
    return vocab, [m if isinstance(m, str) else " ".join(m) for m in merges]


def write_published_layout(folder: Path, with_tokenizer_json: bool, seed: int = 1) -> Path:
    """A tiny random GPT-2 saved as the published rewriters are (see the module docstring)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder.mkdir(parents=True)
    vocab, merges = _bpe_tokenizer()
    eos = vocab[EOS]
    n_pos, n_layer = 96, 2
    config = {"_name_or_path": "gpt2", "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"],
              "attn_pdrop": 0.1, "bos_token_id": eos, "embd_pdrop": 0.1, "eos_token_id": eos,
              "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": n_pos,
              "n_embd": 32, "n_head": 2, "n_inner": None, "n_layer": n_layer, "n_positions": n_pos,
              "resid_pdrop": 0.1, "scale_attn_weights": True, "summary_activation": None,
              "summary_first_dropout": 0.1, "summary_proj_to_labels": True, "summary_type": "cls_index",
              "summary_use_proj": True, "task_specific_params": {"text-generation": {"do_sample": True,
                                                                                      "max_length": 50}},
              "torch_dtype": "float32", "transformers_version": "4.24.0", "use_cache": True,
              "vocab_size": len(vocab)}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**{k: v for k, v in config.items() if not k.startswith("_")})).eval()
    state = dict(model.state_dict())  # includes lm_head.weight, tied to transformer.wte.weight
    assert "lm_head.weight" in state
    for i in range(n_layer):  # the causal mask buffers older transformers saved with every GPT-2
        state[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(n_pos, n_pos, dtype=torch.uint8)).view(
            1, 1, n_pos, n_pos)
        state[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    specials = {"bos_token": EOS, "eos_token": EOS, "unk_token": EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials))
    (folder / "tokenizer_config.json").write_text(json.dumps({**specials, "add_prefix_space": False,
                                                              "model_max_length": n_pos, "name_or_path": "gpt2",
                                                              "tokenizer_class": "GPT2Tokenizer"}))
    if with_tokenizer_json:
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

        tok = Tokenizer(models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([AddedToken(EOS, special=True)])
        tok.save(str(folder / "tokenizer.json"))
    return folder


def prompt_rewriters_dir(out_dir: Path | None = None) -> Path:
    """The folder holding the tiny policy and the bad folders (generated on first use)."""
    def write(folder: Path) -> None:
        write_policy(folder / NAMES["policy"])
        write_published_layout(folder / NAMES["promptist"], with_tokenizer_json=True)
        write_published_layout(folder / NAMES["magicprompt"], with_tokenizer_json=False)
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
