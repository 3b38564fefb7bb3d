"""Diagnostic nodes: denoising likelihood and gradient check."""
