"""Start the real ComfyUI main.py headless on a free loopback port and run graphs over HTTP."""
from __future__ import annotations

import ctypes
import functools
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import torch

from devtools.base_dir import PACK_NAME
from devtools.comfy_path import comfyui_root


def end_with_parent(parent: int):
    """preexec_fn for a child that must not outlive the process starting it (a pytest run killed for memory,
    a demo stopped with kill -9): Linux sends the child SIGKILL when its parent dies (PR_SET_PDEATHSIG).
    Start such children from the main thread: the signal follows the thread that forked. Elsewhere than
    Linux it does nothing, and stop() remains the only way the child ends. `parent`: the starter's pid."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (AttributeError, OSError):
        return
    PR_SET_PDEATHSIG = 1
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, base_dir: Path, output_dir: Path | None = None, python: str = sys.executable,
                 only_this_pack: bool = True, also_enable: tuple[str, ...] = ()):
        """`only_this_pack`: no other custom nodes load, except the folders named in `also_enable` (test-only
        nodes the tests put in the base directory's custom_nodes)."""
        self.also_enable = tuple(also_enable)
        self.base_dir = Path(base_dir)
        self.output_dir = Path(output_dir) if output_dir else self.base_dir / "output"
        self.python = python
        self.only_this_pack = only_this_pack
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base_dir / "server.log"
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        cmd = [self.python, str(comfyui_root() / "main.py"), "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--disable-api-nodes", "--base-directory", str(self.base_dir),
               "--output-directory", str(self.output_dir), "--database-url", "sqlite:///:memory:"]
        if not torch.cuda.is_available():
            cmd.append("--cpu")
        if self.only_this_pack:
            cmd += ["--disable-all-custom-nodes", "--whitelist-custom-nodes", PACK_NAME, *self.also_enable]
        return cmd

    def start(self, timeout: float = 180.0) -> "ComfyServer":
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(self.command(), cwd=comfyui_root(), stdout=self._log,
                                        stderr=subprocess.STDOUT, env=env, preexec_fn=functools.partial(end_with_parent, os.getpid()))
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer within {timeout}s:\n{self.log_tail()}")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, payload: dict):
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"POST {path} -> {e.code}: {e.read().decode(errors='replace')}") from None

    def object_info(self) -> dict:
        return self.get("/object_info")

    def run(self, graph: dict, timeout: float = 600.0, events: "EventListener | None" = None) -> dict:
        """Queue an API-format graph, wait for it, return its /history entry; raise on errors.

        With `events` (an open EventListener), what the UI would receive over the websocket is
        collected there."""
        client_id = events.client_id if events else str(uuid.uuid4())
        prompt_id = self.post("/prompt", {"prompt": graph, "client_id": client_id})["prompt_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history:
                entry = history[prompt_id]
                status = entry.get("status", {})
                if status.get("status_str") == "error" or not status.get("completed", True):
                    errors = [m for m in status.get("messages", []) if m[0] == "execution_error"]
                    raise RuntimeError(f"graph failed: {errors or status}")
                return entry
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI died:\n{self.log_tail()}")
            time.sleep(0.25)
        raise TimeoutError(f"graph {prompt_id} did not finish in {timeout}s")

    def view(self, image: dict) -> bytes:
        """The bytes of an image an output node reported (SaveImage: output, PreviewImage: temp), via /view."""
        query = urllib.parse.urlencode({"filename": image["filename"], "subfolder": image.get("subfolder", ""),
                                        "type": image.get("type", "output")})
        with urllib.request.urlopen(f"{self.url}/view?{query}", timeout=30) as r:
            return r.read()

    def output_files(self, entry: dict) -> list[Path]:
        files = []
        for out in entry.get("outputs", {}).values():
            for image in out.get("images", []):
                if image.get("type") == "output":
                    files.append(self.output_dir / image.get("subfolder", "") / image["filename"])
        return files


class EventListener:
    """The websocket side of the UI for one client id: collects progress values and progress texts
    (the text ComfyUI shows under a running node), as the graph editor would receive them."""

    TEXT_EVENT = 3  # server.BinaryEventTypes.TEXT

    def __init__(self, server: ComfyServer):
        self.url = server.url.replace("http://", "ws://")
        self.client_id = str(uuid.uuid4())
        self.texts: list[tuple[str, str]] = []  # (node id, text)
        self.progress: list[dict] = []
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)

    def __enter__(self) -> "EventListener":
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError("websocket did not connect")
        return self

    def __exit__(self, *exc):
        time.sleep(0.5)  # the last messages are sent just before /history shows the result
        self._stop.set()
        self._thread.join(10)

    def _listen(self):
        import asyncio

        import aiohttp

        async def listen():
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(f"{self.url}/ws?clientId={self.client_id}") as ws:
                    self._ready.set()
                    while not self._stop.is_set():
                        try:
                            msg = await ws.receive(timeout=0.2)
                        except asyncio.TimeoutError:
                            continue
                        if msg.type == aiohttp.WSMsgType.BINARY:
                            self._binary(msg.data)
                        elif msg.type == aiohttp.WSMsgType.TEXT:
                            event = json.loads(msg.data)
                            if event.get("type") == "progress":
                                self.progress.append(event["data"])
                        elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                            break

        asyncio.run(listen())

    def _binary(self, data: bytes):
        (event,) = struct.unpack(">I", data[:4])
        if event == self.TEXT_EVENT:
            (length,) = struct.unpack(">I", data[4:8])
            self.texts.append((data[8:8 + length].decode(), data[8 + length:].decode(errors="replace")))
