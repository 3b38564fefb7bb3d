"""A reward-per-epoch line plot as a ComfyUI IMAGE (Pillow only; ComfyUI does not ship matplotlib)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def curve_image(values: list[float], title: str, width: int = 512, height: int = 320,
                best: int | None = None) -> torch.Tensor:
    """(1, height, width, 3) float image in [0, 1]: the values against epoch, the best epoch marked."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, right, top, bottom = 70, width - 15, 30, height - 35
    draw.text((left, 8), title, fill="black", font=font)
    draw.rectangle((left, top, right, bottom), outline="black")
    if values:
        lo, hi = min(values), max(values)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        span = max(len(values) - 1, 1)

        def point(i, v):
            return (left + (right - left) * i / span, bottom - (bottom - top) * (v - lo) / (hi - lo))

        for v in (lo, hi):
            draw.text((4, point(0, v)[1] - 6), f"{v:.4g}", fill="black", font=font)
        draw.text((left, bottom + 8), "epoch 1", fill="black", font=font)
        draw.text((right - 60, bottom + 8), f"epoch {len(values)}", fill="black", font=font)
        points = [point(i, v) for i, v in enumerate(values)]
        if len(points) > 1:
            draw.line(points, fill=(30, 90, 200), width=2)
        for p in points:
            draw.ellipse((p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2), fill=(30, 90, 200))
        if best is not None and 0 <= best < len(points):
            x, y = points[best]
            draw.ellipse((x - 5, y - 5, x + 5, y + 5), outline=(200, 40, 40), width=2)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).unsqueeze(0)
