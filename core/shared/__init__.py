"""Pieces every method uses: conditioning, denoiser and text-encoder views, prediction-type math,
autograd scopes for inference-mode weights, settings errors, decoded pixels, the diffusers adapter."""
