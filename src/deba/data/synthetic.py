"""A generated, learnable image-classification dataset for the demo and the tests (no download, no files).

Each class has a smooth random colour template (a 4x4 random field upsampled to the image size plus a
margin). A sample is its class template, cropped at a random shift of up to +-4 pixels, with random
contrast and per-channel brightness, plus a smooth random distractor field and per-pixel noise. A small
CNN separates the classes well above chance within a few epochs but not instantly, so accuracy keeps
improving for a while. Fully determined by ``seed``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import DebaError
from .dataset import ArrayDataset, channel_stats

SHIFT = 4  # largest template shift, pixels


def _smooth_fields(n: int, size: int, g: torch.Generator, coarse: int = 4) -> torch.Tensor:
    """n smooth random RGB fields [n, 3, size, size], each scaled to unit standard deviation."""
    low = torch.randn(n, 3, coarse, coarse, generator=g)
    field = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    field = field - field.mean(dim=(1, 2, 3), keepdim=True)
    return field / field.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)


def _samples(
    templates: torch.Tensor, n: int, image_size: int, g: torch.Generator, noise: float, distractor: float
) -> tuple[torch.Tensor, torch.Tensor]:
    num_classes = templates.shape[0]
    labels = torch.randint(0, num_classes, (n,), generator=g)
    oy = torch.randint(0, 2 * SHIFT + 1, (n,), generator=g)
    ox = torch.randint(0, 2 * SHIFT + 1, (n,), generator=g)
    contrast = torch.empty(n, 1, 1, 1).uniform_(0.6, 1.4, generator=g)
    brightness = 0.3 * torch.randn(n, 3, 1, 1, generator=g)
    ar = torch.arange(image_size)
    rows = (oy[:, None] + ar)[:, None, :, None]
    cols = (ox[:, None] + ar)[:, None, None, :]
    chans = torch.arange(3)[None, :, None, None]
    crops = templates[labels[:, None, None, None], chans, rows, cols]  # shifted class templates
    value = (
        contrast * crops
        + brightness
        + distractor * _smooth_fields(n, image_size, g)
        + noise * torch.randn(n, 3, image_size, image_size, generator=g)
    )
    images = (128.0 + 40.0 * value).round_().clamp_(0, 255).to(torch.uint8)
    return images, labels.to(torch.int64)


def make_synthetic(
    n_train: int = 2000,
    n_test: int = 500,
    num_classes: int = 10,
    image_size: int = 32,
    seed: int = 0,
    noise: float = 0.6,
    distractor: float = 0.9,
) -> ArrayDataset:
    """The generated dataset; identical for identical arguments."""
    for label, v in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise DebaError(f"synthetic {label} must be a positive integer, got {v!r}")
    if num_classes < 2 or image_size < 8:
        raise DebaError(
            f"synthetic data needs at least 2 classes and 8x8 images, got {num_classes}, {image_size}"
        )
    g = torch.Generator()
    g.manual_seed(int(seed))
    templates = _smooth_fields(num_classes, image_size + 2 * SHIFT, g)
    train_x, train_y = _samples(templates, int(n_train), image_size, g, noise, distractor)
    test_x, test_y = _samples(templates, int(n_test), image_size, g, noise, distractor)
    mean, std = channel_stats(train_x)
    return ArrayDataset(
        train_x,
        train_y,
        test_x,
        test_y,
        num_classes,
        mean,
        std,
        "synthetic",
        tuple(f"class_{i}" for i in range(num_classes)),
        f"generated (seed {seed})",
    )
