"""A killed test run (pytest ended by the out-of-memory killer, kill -9) leaves no headless ComfyUI behind."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent

STARTER = """
import sys, time
sys.path.insert(0, {root!r})
from devtools.base_dir import make_base_dir
from devtools.server import ComfyServer
server = ComfyServer(make_base_dir({base!r})).start()
print(server.process.pid, flush=True)
time.sleep(600)
"""


def _ended(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # dead, waiting to be reaped
    except psutil.NoSuchProcess:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_comfyui_ends_when_the_process_that_started_it_is_killed(tmp_path):
    starter = subprocess.Popen([sys.executable, "-c", STARTER.format(root=str(ROOT), base=str(tmp_path / "base"))],
                               stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    comfy_pid = None
    try:
        line = starter.stdout.readline()
        assert line.strip().isdigit(), f"the starter did not start ComfyUI (exit {starter.poll()})"
        comfy_pid = int(line)
        assert psutil.Process(comfy_pid).parent().pid == starter.pid and not _ended(comfy_pid)
        os.kill(starter.pid, signal.SIGKILL)
        starter.wait(10)
        deadline = time.time() + 20
        while not _ended(comfy_pid) and time.time() < deadline:
            time.sleep(0.2)
        assert _ended(comfy_pid), f"ComfyUI (pid {comfy_pid}) outlived the killed process that started it"
    finally:
        if starter.poll() is None:
            starter.kill()
        if comfy_pid and not _ended(comfy_pid):
            psutil.Process(comfy_pid).kill()
