"""The fidelity lab: a small world with known answers (issue 8). Plain numpy / Pillow / PyTorch."""
