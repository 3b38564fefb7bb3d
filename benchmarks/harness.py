"""What every benchmark shares: configurations run one per fresh child process, peak memory, a description of
the machine, the commit, and a report whose header says what produced it.

A benchmark script runs in two modes. As the parent it spawns `python -m benchmarks.<script> --one NAME <the
parent's own arguments>` for each configuration (a fresh process, so memory peaks and caches of one configuration
do not leak into the next) and collects the JSON the child prints with `emit_result`. At the end it writes its
report with `write_report`: the header (title, command line, commit, date, device) and the body the script composes.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT_TAG = "BENCHMARK_RESULT "
# environment variables that change what a run measures; the report's command line shows the ones set
RELEVANT_ENVIRONMENT = ("HF_HUB_OFFLINE", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_CBWR", "CUDA_VISIBLE_DEVICES")


# -- child processes ------------------------------------------------------------------------------------
def emit_result(result: dict) -> None:
    """Child side: hand the configuration's result to the parent (one tagged JSON line on stdout)."""
    print(RESULT_TAG + json.dumps(result), flush=True)


@dataclass
class ChildRun:
    name: str
    result: dict | None  # None when the child failed
    wall_s: float
    load: tuple[float, float]  # 1-minute load average when the child started and when it ended
    error: str = ""  # exit status and the tails of the child's stdout and stderr, when it failed


def run_child(module: str, name: str, cpu_only: bool = False) -> ChildRun:
    """Run `python -m MODULE --one NAME <this process's arguments>` from the repo root (the child resolves its
    settings from the same arguments); its result, wall time and the load around it."""
    # an empty CUDA_VISIBLE_DEVICES hides the GPU, so a CPU run on a GPU machine measures the CPU only
    env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if cpu_only else {}))
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", module, "--one", name, *sys.argv[1:]], capture_output=True,
                          text=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - start
    load = (load_before, os.getloadavg()[0])
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return ChildRun(name, json.loads(line[len(RESULT_TAG):]), wall, load)
    error = f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return ChildRun(name, None, wall, load, error)


def run_children(module: str, names: list[str], cpu_only: bool = False,
                 summary=lambda result: "done") -> tuple[dict[str, dict], dict[str, ChildRun]]:
    """Each configuration in turn, one child process each: (results of those that succeeded, runs of those that
    failed), by name. Each result also gets `load`, the load average around its child (see load_note). Progress,
    and the stderr tail of each failure, go to stderr; `summary(result)` says what a successful child measured."""
    results, failed = {}, {}
    tag = module.rsplit(".", 1)[-1]
    for name in names:
        run = run_child(module, name, cpu_only)
        if run.result is None:
            failed[name] = run
            log(f"[{tag}] {name} FAILED after {run.wall_s:.0f} s:\n{run.error}")
        else:
            results[name] = dict(run.result, load=run.load)
            log(f"[{tag}] {name}: {summary(run.result)} (child process {run.wall_s:.0f} s)")
    return results, failed


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_prepare_child(module: str, cpu_only: bool = False) -> None:
    """Build the model files once (`--one prepare`) before the timed children; exit if that fails."""
    run = run_child(module, "prepare", cpu_only)
    if run.result is None:
        log(f"preparing the model files failed:\n{run.error}")
        raise SystemExit(1)
    log(f"[{module.rsplit('.', 1)[-1]}] model files ready ({run.wall_s:.0f} s)")


def load_note(results: dict[str, dict]) -> str:
    """Other load on the machine while each child ran (timings are only comparable under similar load)."""
    if not results:
        return ""
    return "1-min load average at start/end of each child: " + ", ".join(
        f"{name} {r['load'][0]:.1f}/{r['load'][1]:.1f}" for name, r in results.items())


def config_table(columns: list[str], names: list[str], results: dict[str, dict], labels: dict[str, str],
                 cells) -> list[str]:
    """A markdown table with a row per configuration in NAMES order: its label (the first column), then, if it
    ran, the other columns' cells from cells(result), a dict by column name; else "failed"."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for name in names:
        if name in results:
            row = cells(results[name])
            lines.append(f"| {results[name]['label']} | " + " | ".join(row[column] for column in columns[1:]) + " |")
        else:
            lines.append(f"| {labels[name]} | failed |" + " |" * (len(columns) - 2))
    return lines


def reading_section(bullets: list[str]) -> list[str]:
    """The report's interpretation, one bullet per point; nothing when the run gave nothing to read."""
    return ["", "## Reading", "", *(f"- {bullet}" for bullet in bullets)] if bullets else []


def failure_sections(failed: dict[str, ChildRun]) -> list[str]:
    lines = []
    for name, run in failed.items():
        lines += ["", f"FAILED {name}:", "```", run.error.strip(), "```"]
    return lines


# -- memory ---------------------------------------------------------------------------------------------
def reset_peak_memory(cuda: bool) -> None:
    """Start a new CUDA peak (the CPU's peak RSS cannot be reset: it covers the whole process)."""
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()


def peak_memory_bytes(cuda: bool) -> int:
    """CUDA max allocated since the last reset, or this process's peak resident set size."""
    if cuda:
        import torch

        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def peak_memory_note(cuda: bool, span: str, process: str = "the child process's") -> str:
    """What the peak-memory column means on the device this run used."""
    if cuda:
        return f"*peak: CUDA max allocated over {span} (resident models included)."
    return f"*peak: {process} peak RSS (includes loading the models)."


def counted(n: int, noun: str) -> str:
    """'1 timed generation', '3 timed generations'."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}x" if base else "-"


# -- the machine and the code ---------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description(cuda: bool) -> str:
    """The CPU (model, CPUs this process may use, torch's threads and kernels), and the GPU when the run used it."""
    import torch

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = (f"{cpu_model()} ({usable} CPUs usable), torch {torch.__version__} on "
            f"{counted(torch.get_num_threads(), 'thread')} with {torch.backends.cpu.get_cpu_capability()} kernels")
    if cuda:
        text += f"; GPU {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    return text


def git_commit() -> str:
    """The short commit of the checkout, and whether the working tree differs from it. The reports
    themselves do not count: a run of several benchmarks rewrites them one after the other."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown (not a git checkout)"
    changed = git("status", "--porcelain", "--", ".", ":(exclude)benchmarks/*.md", ":(exclude)benchmarks/*.png")
    return commit + (" with uncommitted changes" if changed else "")


def command_line(module: str) -> str:
    """How this process was started, as one would type it from the repo root."""
    environment = [f"{name}={shlex.quote(os.environ[name])}" for name in RELEVANT_ENVIRONMENT if name in os.environ]
    return " ".join([*environment, "python -m", module, *map(shlex.quote, sys.argv[1:])])


# -- the report -----------------------------------------------------------------------------------------
def add_out_option(parser, default: Path) -> None:
    parser.add_argument("--out", type=Path, default=default,
                        help=f"where to write the report (default {default.relative_to(ROOT)})")


def write_report(path: Path, title: str, module: str, body: list[str], cuda: bool,
                 wall_s: float | None = None) -> None:
    """Write the whole report: the header saying what produced it, then BODY (markdown lines)."""
    header = [f"# {title}", "",
              f"- Command (repo root, runtime venv): `{command_line(module)}`",
              f"- Commit: {git_commit()}",
              f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
              f"- Device: {device_description(cuda)}"]
    if wall_s is not None:
        header.append(f"- Wall time: {wall_s:.0f} s")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([*header, "", *body]).rstrip() + "\n")
    log(f"wrote {path}")


def finish(path: Path, title: str, module: str, body: list[str], cuda: bool, started: float,
           failed: dict[str, ChildRun]) -> None:
    """Write the report, with a section per failed configuration; exit with status 1 if any failed.

    started: time.perf_counter() when the benchmark began (the report gives the wall time since)."""
    write_report(path, title, module, [*body, *failure_sections(failed)], cuda, time.perf_counter() - started)
    if failed:
        raise SystemExit(1)
