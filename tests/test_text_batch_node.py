"""CLIP Text Encode, One Image per Line inside a real ComfyUI (in-process executor) on the small SD1 checkpoint:
each row is what CLIP Text Encode gives its line, and one batched KSampler run gives each row the image a
batch-1 run of that prompt gives (with lab/measure.py's same-noise latent)."""
import pytest
import torch

from devtools.inprocess import GraphError
from lab.measure import same_noise_latent

LONG = "a tall red lighthouse on a rocky island " * 10  # over 77 tokens: two chunks, 154 token states
PROMPTS = ["a red square", LONG.strip(), "a blue circle on a white background"]


def _ksampler(positive, latent, seed=7) -> dict:
    return {"class_type": "KSampler", "inputs": {
        "model": ["ckpt", 0], "positive": positive, "negative": ["neg", 0], "latent_image": latent, "seed": seed,
        "steps": 4, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}


def _outputs(graph: dict) -> dict:
    for key in [k for k in graph if k.startswith("ks")]:
        graph[f"save_{key}"] = {"class_type": "SaveLatent", "inputs": {"samples": [key, 0], "filename_prefix": "batch"}}
    return graph


def _base(ckpt: str) -> dict:
    return {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
            "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": ""}}}


def test_rows_equal_each_lines_encoding_and_batched_sampling_equals_one_run_per_prompt(comfy, sd1_checkpoint):
    graph = _base(sd1_checkpoint.name)
    graph["batch"] = {"class_type": "PromptOptim_TextEncodeBatch",
                      "inputs": {"clip": ["ckpt", 1], "text": "\n".join([PROMPTS[0], "", *PROMPTS[1:]]) + "\n"}}
    graph["ks"] = _ksampler(["batch", 0], same_noise_latent(graph, len(PROMPTS)))
    for i, prompt in enumerate(PROMPTS):
        graph[f"pos{i}"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": prompt}}
        graph[f"ks{i}"] = _ksampler([f"pos{i}", 0], ["lat", 0])
    comfy.run(_outputs(graph))
    (cond, extras), = comfy.node_outputs("batch")[0][0]
    assert comfy.node_outputs("batch")[1][0] == 3 and cond.shape[:2] == (3, 154)
    for i in range(3):
        (alone, alone_extras), = comfy.node_outputs(f"pos{i}")[0][0]
        length = alone.shape[1]
        assert length == (154 if i == 1 else 77)
        # a 77-token prompt is repeated to the common length; every copy equals its own encoding
        for start in range(0, 154, length):
            torch.testing.assert_close(cond[i:i + 1, start:start + length], alone, rtol=0, atol=1e-6)
        torch.testing.assert_close(extras["pooled_output"][i:i + 1], alone_extras["pooled_output"], rtol=0, atol=1e-6)
    batched = comfy.node_outputs("ks")[0][0]["samples"]
    singles = torch.cat([comfy.node_outputs(f"ks{i}")[0][0]["samples"] for i in range(3)])
    assert not torch.allclose(singles[0], singles[2], atol=1e-3), "different prompts, different images"
    # same noise per row and the same conditioning: only the batched matrix products round differently
    torch.testing.assert_close(batched, singles, rtol=0, atol=1e-4)


def test_empty_text_names_the_node_and_input(comfy, sd1_checkpoint):
    graph = _base(sd1_checkpoint.name)
    graph["batch"] = {"class_type": "PromptOptim_TextEncodeBatch", "inputs": {"clip": ["ckpt", 1], "text": " \n "}}
    graph["ks"] = _ksampler(["batch", 0], same_noise_latent(graph, 1))
    with pytest.raises(GraphError) as error:
        comfy.run(_outputs(graph))
    assert "[CLIP Text Encode, One Image per Line] input 'text'" in str(error.value)
