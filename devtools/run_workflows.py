"""The main job: run every workflow in workflows/ in a real headless ComfyUI and write the images.

    python -m devtools.run_workflows [--ckpt FILE] [--output DIR] [--workflows DIR] [--thumbnails]

Uses the embedded default model (the lab's SD1.x model, trained on a world of shapes: lab/README.md)
at its native 64 px unless --ckpt or $CKPT names the user's own checkpoint file; every
CheckpointLoaderSimple in the workflows is pointed at it, and the workflows' own sizes (512) are kept.
--thumbnails writes each workflow's card for ComfyUI's template browser (workflows/<name>.jpg) from the
images it made (the committed cards come from the embedded model).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from devtools.base_dir import make_base_dir
from devtools.comfy_path import CACHE, PACK_ROOT
from devtools.reward_models import reward_models_dir
from devtools.server import ComfyServer
from devtools.standard_models import with_stand_ins_api
from devtools.workflow_format import ui_to_api


LAB_SIDE = 64  # the lab model's training resolution
THUMBNAIL_SIDE = 256
# nodes with width / height inputs
SIZED_NODES = ("EmptyLatentImage", "PromptOptim_IPGOOptimizeV2", "PromptOptim_IPGOOptimize")


def fit_graph(graph: dict, ckpt_name: str, side: int | None = None) -> dict:
    """Point every checkpoint loader at ckpt_name, run the embedded stand-ins for the rewards and the rewriter
    the workflows name (devtools/standard_models.py) and, when side is given, make every image side x side."""
    with_stand_ins_api(graph, ckpt_name)
    for node in graph.values():
        if node["class_type"] == "CheckpointLoaderSimple":
            node["inputs"]["ckpt_name"] = ckpt_name
        if side and node["class_type"] in SIZED_NODES:
            node["inputs"]["width"] = node["inputs"]["height"] = side
    return graph


def load_graphs(workflow_dir: Path, object_info: dict, ckpt_name: str, side: int | None = None) -> dict[str, dict]:
    return {path.stem: fit_graph(ui_to_api(json.loads(path.read_text()), object_info), ckpt_name, side)
            for path in sorted(Path(workflow_dir).glob("*.json"))}


def write_thumbnail(images: list[Path], path: Path, side: int = THUMBNAIL_SIDE) -> Path:
    """A square JPEG card: the workflow's first images (up to 4, in a 2 x 2 grid when there are several)."""
    from PIL import Image, ImageOps

    shown = [Image.open(f).convert("RGB") for f in images[:4]]
    card = Image.new("RGB", (side, side), "white")
    cells = 1 if len(shown) == 1 else 2
    cell = side // cells
    for i, image in enumerate(shown):
        image = ImageOps.contain(image, (cell, cell), Image.Resampling.LANCZOS)
        x, y = (i % cells) * cell + (cell - image.width) // 2, (i // cells) * cell + (cell - image.height) // 2
        card.paste(image, (x, y))
    card.save(path, "JPEG", quality=85)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", type=Path, default=os.environ.get("CKPT") or None,
                    help="checkpoint file to use instead of the embedded default model")
    ap.add_argument("--output", type=Path, default=PACK_ROOT / "output")
    ap.add_argument("--workflows", type=Path, default=PACK_ROOT / "workflows")
    ap.add_argument("--thumbnails", action="store_true",
                    help="write <workflow>.jpg beside each workflow from its images (the template browser's cards)")
    args = ap.parse_args(argv)

    from lab.checkpoint import lab_checkpoint_path, lab_reward_folder, lab_rewriter_folders

    ckpt = Path(args.ckpt).expanduser().resolve() if args.ckpt else lab_checkpoint_path()
    if not ckpt.is_file():
        print(f"checkpoint not found: {ckpt}", file=sys.stderr)
        return 2
    side = None if args.ckpt else LAB_SIDE
    base = CACHE / "demo-base"
    shutil.rmtree(base / "models" / "checkpoints", ignore_errors=True)
    # the lab's trained image-caption CLIP, plus tiny random models in the other families' layouts (their
    # scores mean nothing: they only show the wiring of a held-out second reward)
    rewards = [lab_reward_folder()] + sorted(p for p in reward_models_dir().iterdir() if not p.name.startswith("."))
    shutil.rmtree(base / "models" / "rewards", ignore_errors=True)
    # the lab's rewriter policies (lab/rewriter.py): they rewrite captions of the lab world, for any SD1.x model
    shutil.rmtree(base / "models" / "prompt_rewriters", ignore_errors=True)
    make_base_dir(base, checkpoints=[ckpt], rewards=rewards, prompt_rewriters=lab_rewriter_folders())
    args.output.mkdir(parents=True, exist_ok=True)
    print(f"model: {ckpt}" + (f" at {side} px" if side else ""))
    failures = 0
    with ComfyServer(base, output_dir=args.output) as server:
        graphs = load_graphs(args.workflows, server.object_info(), ckpt.name, side)
        for name, graph in graphs.items():
            started = time.time()
            try:
                entry = server.run(graph)
            except Exception as error:  # report every workflow, then fail
                failures += 1
                print(f"FAILED {name}: {error}")
                continue
            files = server.output_files(entry)
            print(f"{name}: {len(files)} image(s) in {time.time() - started:.1f}s")
            for f in files:
                print(f"  {f}")
            if args.thumbnails and files:
                print(f"  thumbnail {write_thumbnail(files, args.workflows / f'{name}.jpg')}")
    print(f"images are in {args.output.resolve()}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
