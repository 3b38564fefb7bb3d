"""Adapters from ComfyUI objects to core/ and what every method's nodes share: the denoiser, text-encoder
and reward adapters, VAE pixels, model families and folders, errors, socket types, the stepped guider and
the KSampler path."""
