"""Write UI-format workflow files (what the graph editor saves and loads) from a few Python lines.

    wf = UIWorkflow()
    ckpt = wf.node("CheckpointLoaderSimple", ["model.safetensors"], outputs=[("MODEL", "MODEL"), ...])
    wf.node("KSampler", [...], inputs=[("model", "MODEL", ckpt, 0), ...], outputs=[...])
    wf.save(path)

Widget values are positional, in the node's input order (seed widgets carry a "fixed" control value
after them, as the editor saves them). tests/test_browser.py checks that the editor loads each file and
converts it to the same API prompt as devtools/workflow_format.py.
"""
from __future__ import annotations

import json
from pathlib import Path


class UIWorkflow:
    def __init__(self):
        self.nodes: list[dict] = []
        self.links: list[list] = []
        self.models: list[dict] = []  # the workflow's own model list: files no widget value names one by one

    def node(self, type_: str, widgets: list, inputs=(), outputs=(), pos=(0, 0), size=(320, 120),
             title: str | None = None, models: list[dict] | None = None) -> int:
        """inputs: (name, type, source_node_id, source_slot); outputs: (name, type); models: the frontend's
        {name, url, directory} of files a widget value names (its missing-models dialog). Returns the node id."""
        node_id = len(self.nodes) + 1
        node_inputs = []
        for name, kind, source, slot in inputs:
            link_id = len(self.links) + 1
            self.links.append([link_id, source, slot, node_id, len(node_inputs), kind])
            self._node(source)["outputs"][slot]["links"].append(link_id)
            node_inputs.append({"name": name, "type": kind, "link": link_id})
        node = {"id": node_id, "type": type_, "pos": list(pos), "size": list(size), "flags": {},
                "order": node_id - 1, "mode": 0, "inputs": node_inputs,
                "outputs": [{"name": n, "type": k, "links": [], "slot_index": i} for i, (n, k) in enumerate(outputs)],
                "properties": {"Node name for S&R": type_}, "widgets_values": list(widgets)}
        if title:
            node["title"] = title
        if models:
            node["properties"]["models"] = models
        self.nodes.append(node)
        return node_id

    def _node(self, node_id: int) -> dict:
        return self.nodes[node_id - 1]

    def as_dict(self) -> dict:
        nodes = [dict(n, outputs=[dict(o, links=o["links"] or None) for o in n["outputs"]]) for n in self.nodes]
        workflow = {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": nodes,
                    "links": self.links, "groups": [], "config": {},
                    "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}
        if self.models:
            workflow["models"] = self.models
        return workflow

    def add_models(self, entries: list[dict]) -> None:
        self.models += [e for e in entries if e not in self.models]

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.as_dict(), indent=1) + "\n")
