"""Reward nodes: load a reward model, combine rewards with weights, score any batch of images."""
from __future__ import annotations

import os

import torch
from comfy_api.latest import io, ui

from ...core.rewards import (BACKBONE, FAMILIES, RewardArchitectureError, RewardCheckpointError, RewardFileError,
                             error_part, load_reward)
from ...core.rewards.base import RewardInputError, prompts_for_batch
from ..comfy.errors import NodeInputError
from ..comfy.reward import ComfyReward
from ..comfy.socket_types import RewardModel
from ..conditioning.prompt_words import plain_words
from . import folder as reward_folder

CATEGORY = "prompt_optim/rewards"

LOAD_NODE = "Load Reward Model"
COMBINE_NODE = "Combine Rewards"
SCORE_NODE = "Score Images"
NO_ENTRIES = "(no files in models/rewards)"


def _bundled_clip_tokenizer() -> str:
    import comfy.sd1_clip

    return os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_tokenizer")


def _family_help() -> str:
    return "\n".join(f"- {f.id}: {f.title}. Needs {f.layout}." for f in FAMILIES.values())


class LoadRewardModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        entries = reward_folder.REWARDS.list_entries() or [NO_ENTRIES]
        return io.Schema(
            node_id="PromptOptim_LoadRewardModel",
            display_name=LOAD_NODE,
            category=CATEGORY,
            description="Loads a differentiable image reward from ComfyUI/models/rewards (local files only; "
                        "nothing is downloaded). Families:\n" + _family_help(),
            inputs=[
                io.Combo.Input("family", options=list(FAMILIES), default="image_reward",
                               tooltip="Which reward model the files hold:\n" + _family_help()),
                io.Combo.Input("weights", options=entries,
                               tooltip="A folder or file in ComfyUI/models/rewards (or a 'rewards:' path of "
                                       "extra_model_paths.yaml)."),
                io.Combo.Input("clip_backbone", options=[reward_folder.NONE] + entries, default=reward_folder.NONE,
                               tooltip="Only for laion_aesthetic: the CLIP ViT-L/14 the head sits on (a Hugging "
                                       "Face CLIPModel folder such as clip-vit-large-patch14, or an open_clip "
                                       "checkpoint)."),
                io.String.Input("open_clip_architecture", default="",
                                tooltip="For open_clip weight files without an open_clip_config.json: the "
                                        "architecture name, e.g. ViT-H-14 (HPS v2 uses ViT-H-14 when empty). "
                                        "OpenAI-trained weights need the -quickgelu variant, e.g. "
                                        "ViT-L-14-quickgelu: the plain name loads but gives wrong embeddings."),
                io.Combo.Input("dtype", options=["auto", "fp32", "fp16", "bf16"], default="auto",
                               tooltip="Precision of the reward model. auto: fp32 on CPU, half precision on GPU."),
            ],
            outputs=[RewardModel.Output(display_name="reward", tooltip="The reward, for scoring and optimizing.")],
        )

    @classmethod
    def execute(cls, family, weights, clip_backbone, open_clip_architecture, dtype) -> io.NodeOutput:
        path = reward_folder.REWARDS.resolve(weights) if weights != NO_ENTRIES else None
        if path is None:
            raise NodeInputError(LOAD_NODE, "weights", f"'{weights}' was not found; put {FAMILIES[family].layout} in "
                                 f"{reward_folder.REWARDS.expected_location()}.")
        backbone = None
        if FAMILIES[family].needs_backbone:
            backbone = reward_folder.REWARDS.resolve(clip_backbone) if clip_backbone != reward_folder.NONE else None
            if backbone is None:
                raise NodeInputError(LOAD_NODE, "clip_backbone", f"{FAMILIES[family].title} needs a CLIP ViT-L/14 "
                                     f"backbone; choose its folder (in {reward_folder.REWARDS.expected_location()}).")
        architecture = open_clip_architecture.strip() or None

        def build(device, torch_dtype):
            return load_reward(family, path, backbone_path=backbone, architecture=architecture, device=device,
                               dtype=torch_dtype, fallback_tokenizer_dir=_bundled_clip_tokenizer())

        try:
            return io.NodeOutput(ComfyReward.load(build, dtype))
        except ImportError as e:
            raise NodeInputError(LOAD_NODE, "family", str(e)) from e
        except RewardArchitectureError as e:  # open_clip: a bare weights file without a (known) architecture
            raise NodeInputError(LOAD_NODE, "open_clip_architecture", str(e)) from e
        except (RewardFileError, RewardCheckpointError, ValueError) as e:
            blame = "clip_backbone" if error_part(e) == BACKBONE else "weights"
            raise NodeInputError(LOAD_NODE, blame, str(e)) from e
        except Exception as e:  # noqa: BLE001 - e.g. a damaged file inside a Hugging Face folder: name what was read
            files = f"'{path}'" + (f" or the backbone '{backbone}'" if backbone is not None else "")
            raise NodeInputError(LOAD_NODE, "weights", f"{files} could not be loaded ({type(e).__name__}: {e}); a "
                                 "file may be damaged or incomplete: download it again.") from e


class CombineRewards(io.ComfyNode):
    SLOTS = 4

    @classmethod
    def define_schema(cls) -> io.Schema:
        inputs = []
        for i in range(1, cls.SLOTS + 1):
            inputs.append(RewardModel.Input(f"reward_{i}", optional=i > 1, tooltip=f"Reward {i}."))
            inputs.append(io.Float.Input(f"weight_{i}", default=1.0, min=-100.0, max=100.0, step=0.05,
                                         tooltip=f"Weight of reward {i} (negative to penalize)."))
        return io.Schema(
            node_id="PromptOptim_CombineRewards",
            display_name=COMBINE_NODE,
            category=CATEGORY,
            description="A weighted sum of rewards, e.g. 0.7 x ImageReward + 0.3 x CLIP. Rewards have their own "
                        "scales (CLIP cosine ~0.3, PickScore ~20, aesthetic 1-10, ImageReward ~N(0,1)): "
                        "choose weights accordingly.",
            inputs=inputs,
            outputs=[RewardModel.Output(display_name="reward", tooltip="The weighted sum.")],
        )

    @classmethod
    def execute(cls, **kwargs) -> io.NodeOutput:
        parts = []
        for i in range(1, cls.SLOTS + 1):
            if kwargs.get(f"reward_{i}") is None:
                continue
            weight = float(kwargs[f"weight_{i}"])
            if not torch.isfinite(torch.tensor(weight)):
                raise NodeInputError(COMBINE_NODE, f"weight_{i}", "must be a finite number.")
            parts.append((kwargs[f"reward_{i}"], weight))
        return io.NodeOutput(ComfyReward.combine(parts))


class ScoreImages(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PromptOptim_ScoreImages",
            display_name=SCORE_NODE,
            category=CATEGORY,
            description="Scores every image of a batch with a reward and its prompt; shows the scores and "
                        "outputs the best images first. Use it to evaluate any workflow.",
            inputs=[
                io.Image.Input("images", tooltip="The images to score (any size)."),
                RewardModel.Input("reward", tooltip="From Load Reward Model or Combine Rewards."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="The prompt the images should match (ignored by the aesthetic predictor). "
                                        "ComfyUI's weights, e.g. (red:1.3), and embedding:name are removed: the "
                                        "reward reads plain words."),
                io.Boolean.Input("prompt_per_line", default=False,
                                 tooltip="On: each line is the prompt of one image, as many lines as images. "
                                         "Off: the whole text is one prompt for every image."),
                io.Int.Input("top_k", default=0, min=0, max=4096,
                             tooltip="How many of the best images to output, best first; 0 outputs all, sorted."),
            ],
            outputs=[
                io.Image.Output(display_name="best_images", tooltip="The top_k images, highest score first."),
                io.Float.Output(display_name="scores", is_output_list=True,
                                tooltip="One score per input image, in input order."),
                io.Float.Output(display_name="mean_score", tooltip="Mean score over the batch."),
                io.String.Output(display_name="report", tooltip="The scores as text."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images, reward, prompt, prompt_per_line, top_k) -> io.NodeOutput:
        if not prompt.strip() and reward.reward.family != "laion_aesthetic":
            raise NodeInputError(SCORE_NODE, "prompt", "the prompt is empty; type what the images should show.")
        prompts = [line for line in prompt.splitlines() if line.strip()] if prompt_per_line else [prompt]
        prompts = [plain_words(p) for p in prompts]  # the reward reads words, not ComfyUI's weight syntax
        try:
            prompts = prompts_for_batch(prompts or [""], images.shape[0])
        except RewardInputError as e:
            raise NodeInputError(SCORE_NODE, "prompt", str(e)) from e
        scores = reward.score(images, prompts)
        if not torch.isfinite(scores).all():
            raise NodeInputError(SCORE_NODE, "images", "the reward returned NaN or infinite scores.")
        order = torch.argsort(scores, descending=True, stable=True)
        keep = order[:top_k] if top_k else order
        report = "\n".join([f"reward: {reward.label}", f"mean {scores.mean():.4f}  min {scores.min():.4f}  "
                            f"max {scores.max():.4f}"] +
                           [f"image {i}: {scores[i]:.4f}" + ("  *" if i == int(order[0]) else "")
                            for i in range(len(scores))])
        return io.NodeOutput(images[keep], [float(s) for s in scores], float(scores.mean()), report,
                             ui=ui.PreviewText(report))


NODES = [LoadRewardModel, CombineRewards, ScoreImages]
