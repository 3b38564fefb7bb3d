"""Measurements that are not methods: the denoising-likelihood estimate and the gradient check."""
