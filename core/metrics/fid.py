"""Fréchet distance between two sets of image features (FID), with a user-provided Inception-v3.

FID = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) for the mean and covariance of each set's
features (Heusel et al., 2017).

The feature extractor here is torchvision's Inception-v3 loaded from a file the user provides (e.g.
torchvision's `inception_v3_google-0cc3c7bd.pth`); nothing is downloaded. It is NOT the TF-ported
Inception of pytorch-fid / clean-fid (different weights and resize path), so these FID values are
NOT comparable to published FID numbers. Compare only values computed with this module, the same
weights file and the same number of samples (FID is biased upward for small sets).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..rewards.base import check_images

INCEPTION_INPUT_SIZE = 299
INCEPTION_FEATURE_DIM = 2048
#: a complex square root whose diagonal has imaginary parts above this is a numerical failure, not noise
MAX_IMAGINARY_DIAGONAL = 1e-3


def _float64_array(values, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().to(torch.float64).numpy()
    array = np.asarray(values, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return array


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((S1 S2)^(1/2)) without scipy: S1 S2 has the eigenvalues of the symmetric S1^(1/2) S2 S1^(1/2)."""
    s1, s2 = torch.from_numpy(sigma1), torch.from_numpy(sigma2)
    values, vectors = torch.linalg.eigh((s1 + s1.T) / 2)
    root1 = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    middle = root1 @ s2 @ root1
    return float(torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum())


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    """Tr((S1 S2)^(1/2)) with scipy's matrix square root, as the reference FID implementations do."""
    try:
        from scipy import linalg
    except ImportError:
        return _trace_sqrt_product_eigh(sigma1, sigma2)
    root = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(root).all():
        # a (near-)singular product, e.g. fewer samples than feature dimensions: regularize both
        offset = eps * np.eye(sigma1.shape[0])
        root = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(root):
        imaginary = float(np.abs(np.diagonal(root).imag).max())
        if imaginary > MAX_IMAGINARY_DIAGONAL:
            raise ValueError(f"the covariance product has no usable real square root (imaginary part "
                             f"{imaginary:.3g}); use more samples per set.")
        root = root.real
    return float(np.trace(root))


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2), computed in float64.

    Accepts torch tensors or numpy arrays: means of shape (D,), covariances (D, D).
    `eps` is the diagonal offset used only when the covariance product has no finite square root.
    """
    mu1, mu2 = _float64_array(mu1, "mu1"), _float64_array(mu2, "mu2")
    sigma1, sigma2 = _float64_array(sigma1, "sigma1"), _float64_array(sigma2, "sigma2")
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"means must be vectors of one length; got {mu1.shape} and {mu2.shape}.")
    dim = mu1.shape[0]
    if sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(f"covariances must be {dim} x {dim}; got {sigma1.shape} and {sigma2.shape}.")
    diff = mu1 - mu2
    trace_root = _trace_sqrt_product(sigma1, sigma2, eps)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_root)


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) features -> (mean (D,), unbiased covariance (D, D)), float64 on the CPU."""
    features = torch.as_tensor(features).detach().cpu().to(torch.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be an (N, D) array; got shape {tuple(features.shape)}.")
    if features.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 feature vectors; got {features.shape[0]}.")
    if not torch.isfinite(features).all():
        raise ValueError("features contain NaN or infinite values.")
    mean = features.mean(dim=0)
    centered = features - mean
    return mean, centered.T @ centered / (features.shape[0] - 1)


def fid(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """FID between two sets of (N, D) features (e.g. from InceptionFeatures)."""
    return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix.lower() in (".safetensors", ".sft"):
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt file, pickled module instead of a state dict, ...
        raise ValueError(f"could not read Inception-v3 weights from {path}: {error}") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state dict (a mapping of parameter names to tensors).")
    return state


def _key_list(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


class InceptionFeatures(nn.Module):
    """[0, 1] images -> (N, 2048) pool features of torchvision's Inception-v3, from a local weights file.

    Preprocessing: resize to 299 x 299 (bilinear, antialiased, aspect ratio not kept, as FID tools
    do), then scale to [-1, 1]. That is the input torchvision's Google weights expect: torchvision
    builds them with transform_input=True, which turns ImageNet-normalized input into exactly
    (x - 0.5) / 0.5; here the network has transform_input=False and gets (x - 0.5) / 0.5 directly.
    """

    def __init__(self, weights_path: str | Path, batch_size: int = 50):
        super().__init__()
        import torchvision  # only needed for FID; keep `import core.metrics` light

        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"Inception-v3 weights file not found: {path} (give a torchvision "
                                    f"inception_v3 state dict, e.g. inception_v3_google-0cc3c7bd.pth).")
        state = _read_state_dict(path)
        network = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
        try:
            result = network.load_state_dict(state, strict=False)
        except RuntimeError as error:  # tensor shapes that do not fit
            raise ValueError(f"{path} does not fit torchvision's Inception-v3: {error}") from error
        problems = []
        if result.missing_keys:
            problems.append(f"missing keys: {_key_list(result.missing_keys)}")
        if result.unexpected_keys:
            problems.append(f"unexpected keys: {_key_list(result.unexpected_keys)}")
        if problems:
            raise ValueError(f"{path} is not a torchvision Inception-v3 (aux_logits=True) state dict; "
                             + "; ".join(problems) + ".")
        network.fc = nn.Identity()  # the forward pass now ends at the 2048-d average pool
        self.network = network.requires_grad_(False)
        self.batch_size = int(batch_size)
        self.weights_path = path
        self.eval()

    def train(self, mode: bool = True) -> "InceptionFeatures":
        # batch norm must use its stored statistics, dropout must be off: features are deterministic
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        weight = self.network.Conv2d_1a_3x3.conv.weight
        features = []
        with torch.no_grad():
            for batch in images.split(self.batch_size):
                x = batch.to(weight.device, weight.dtype)
                x = F.interpolate(x, size=(INCEPTION_INPUT_SIZE, INCEPTION_INPUT_SIZE), mode="bilinear",
                                  align_corners=False, antialias=True)
                features.append(self.network(x * 2.0 - 1.0).float())
        return torch.cat(features)
