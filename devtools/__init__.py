"""Development tools: a real ComfyUI runtime, test checkpoints, a headless server and a workflow runner.

Not part of the node pack itself (ComfyUI never imports this package); the tests, the demo and the
benchmarks use it.
"""
