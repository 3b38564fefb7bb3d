"""IPGO's ComfyUI face: the token sequences, the differentiable render, the nodes and their reward plot."""
