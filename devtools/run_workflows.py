"""The main job: run every workflow in workflows/ in a real headless ComfyUI and write the images.

    python -m devtools.run_workflows [--ckpt FILE] [--output DIR] [--workflows DIR]

Uses the embedded default model (a small generated SD1.x checkpoint) unless --ckpt or $CKPT names
the user's own checkpoint file; every CheckpointLoaderSimple in the workflows is pointed at it.
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
from devtools.checkpoints import checkpoint_path
from devtools.comfy_path import CACHE, PACK_ROOT
from devtools.reward_models import reward_models_dir
from devtools.server import ComfyServer
from devtools.workflow_format import ui_to_api


def load_graphs(workflow_dir: Path, object_info: dict, ckpt_name: str) -> dict[str, dict]:
    graphs = {}
    for path in sorted(Path(workflow_dir).glob("*.json")):
        graph = ui_to_api(json.loads(path.read_text()), object_info)
        for node in graph.values():
            if node["class_type"] == "CheckpointLoaderSimple":
                node["inputs"]["ckpt_name"] = ckpt_name
        graphs[path.stem] = graph
    return graphs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", type=Path, default=os.environ.get("CKPT") or None,
                    help="checkpoint file to use instead of the embedded default model")
    ap.add_argument("--output", type=Path, default=PACK_ROOT / "output")
    ap.add_argument("--workflows", type=Path, default=PACK_ROOT / "workflows")
    args = ap.parse_args(argv)

    ckpt = Path(args.ckpt).expanduser().resolve() if args.ckpt else checkpoint_path("sd1")
    if not ckpt.is_file():
        print(f"checkpoint not found: {ckpt}", file=sys.stderr)
        return 2
    base = CACHE / "demo-base"
    shutil.rmtree(base / "models" / "checkpoints", ignore_errors=True)
    rewards = reward_models_dir()  # tiny random reward models: the demo's scores are not meaningful
    shutil.rmtree(base / "models" / "rewards", ignore_errors=True)
    make_base_dir(base, checkpoints=[ckpt], rewards=sorted(p for p in rewards.iterdir() if not p.name.startswith(".")))
    args.output.mkdir(parents=True, exist_ok=True)
    print(f"model: {ckpt}")
    failures = 0
    with ComfyServer(base, output_dir=args.output) as server:
        graphs = load_graphs(args.workflows, server.object_info(), ckpt.name)
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
    print(f"images are in {args.output.resolve()}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
