"""IPGO's math (arXiv 2503.21812): low-rank rotated prefix/suffix tokens, injection, loss, training loop."""
