"""Batched augmentation on the training device (paper section 3.3; DESIGN.md "Data path").

The two asymmetric Barlow Twins views (random resized crop, horizontal flip, colour jitter with
p=0.8, grayscale p=0.2, Gaussian blur p=1.0 / 0.1, solarisation p=0.0 / 0.2, normalise) are
applied to a whole uint8 batch at once with per-sample random parameters drawn from one
``torch.Generator``, so a training step is reproducible from its seed and no image ever goes
through PIL in the loop.

Each operation works on float images in [0, 1], (B, C, H, W), and matches torchvision's
functional operation on the same float image for the same parameters (see ``tests/test_augment``
for the tolerances): crop + flip are one affine ``grid_sample`` per batch; colour jitter applies
brightness, contrast, saturation and hue in a random order per sample, as torchvision does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import torch
import torch.nn.functional as F

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ViewConfig:
    """The random transformations that make one view. Defaults: the Barlow Twins view 1."""
    size: int
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    interpolation: str = "bilinear"  # the authors used bicubic
    # FixMatch's views (drawn only when used, so the other views' random draws stay as they were):
    translate: float = 0.0  # a shift of up to this fraction of the side, each axis, after the crop
    erase_p: float = 0.0    # cutout: a square of mid-grey (0.5) ...
    erase_size: tuple[float, float] = (0.0, 0.5)  # ... whose side is this fraction of the image's


def barlow_twins_views(size: int, crop_scale=(0.08, 1.0), blur_sigma=(0.1, 2.0),
                       interpolation: str = "bilinear", strength: float = 1.0) -> tuple[ViewConfig, ViewConfig]:
    """The asymmetric pair of section 3.3: view 1 always blurred, view 2 blurred with p=0.1 and
    solarised with p=0.2. ``strength`` scales the colour-jitter magnitudes."""
    j = tuple(strength * v for v in (0.4, 0.4, 0.2, 0.1))
    v1 = ViewConfig(size, tuple(crop_scale), jitter=j, blur_p=1.0, blur_sigma=tuple(blur_sigma),
                    solarize_p=0.0, interpolation=interpolation)
    return v1, replace(v1, blur_p=0.1, solarize_p=0.2)


def simclr_views(size: int, crop_scale=(0.08, 1.0), blur_sigma=(0.1, 2.0),
                 interpolation: str = "bilinear", strength: float = 1.0) -> tuple[ViewConfig, ViewConfig]:
    """SimCLR's symmetric pair (Chen et al., 2020): both views from one recipe, colour jitter
    (0.8, 0.8, 0.8, 0.2) x ``strength`` with p=0.8, grayscale p=0.2, blur p=0.5, no solarisation."""
    j = tuple(strength * v for v in (0.8, 0.8, 0.8, 0.2))
    v = ViewConfig(size, tuple(crop_scale), jitter=j, jitter_p=0.8, gray_p=0.2, blur_p=0.5,
                   blur_sigma=tuple(blur_sigma), solarize_p=0.0, interpolation=interpolation)
    return v, v


def swav_views(size: int, crop_scale=(0.14, 1.0), blur_sigma=(0.1, 2.0), interpolation: str = "bilinear",
               strength: float = 1.0, small_crops: int = 0, small_size: int | None = None,
               small_scale=(0.05, 0.14)) -> tuple[ViewConfig, ...]:
    """SwAV's views (Caron et al., 2020): two large crops and ``small_crops`` small ones
    (multi-crop, at ``small_size`` pixels, default 3/7 of ``size`` as 96/224 in the paper), each
    with SimCLR's colour recipe. The first two views are the large ones."""
    large, _ = simclr_views(size, crop_scale, blur_sigma, interpolation, strength)
    small_size = small_size or max(8, round(size * 96 / 224))
    small = replace(large, size=small_size, crop_scale=tuple(small_scale))
    return (large, large) + (small,) * small_crops


def fixmatch_views(size: int, translate: float = 0.125, crop_scale=(0.5, 1.0), blur_sigma=(0.1, 1.0),
                   strength: float = 1.0) -> tuple[ViewConfig, ViewConfig]:
    """FixMatch's weak and strong views (Sohn et al., 2020), built from this module's operations.

    Weak: a horizontal flip and a shift of up to ``translate`` of the side (their 4 px of 32).
    Strong: the weak view's flip and shift after a random resized crop, then colour jitter
    (0.5, 0.5, 0.5, 0.1) x ``strength`` with p=0.8, blur p=0.2, solarisation p=0.2, and a
    cutout of up to half the side, always (their RandAugment draws two of 14 operations; these
    are the ones a batched affine grid and pointwise ops give, and the ones that mean something
    on a 28 px grayscale garment: no rotation, shear, posterize or equalize)."""
    weak = ViewConfig(size, (1.0, 1.0), (1.0, 1.0), flip_p=0.5, jitter_p=0.0, gray_p=0.0, blur_p=0.0,
                      translate=translate)
    j = tuple(strength * v for v in (0.5, 0.5, 0.5, 0.1))
    strong = ViewConfig(size, tuple(crop_scale), flip_p=0.5, jitter=j, jitter_p=0.8, gray_p=0.0, blur_p=0.2,
                        blur_sigma=tuple(blur_sigma), solarize_p=0.2, translate=translate, erase_p=1.0,
                        erase_size=(0.0, 0.5))
    return weak, strong


def finetune_view(size: int, crop_scale=(0.08, 1.0), blur_sigma=(0.1, 2.0)) -> ViewConfig:
    """The authors' fine-tuning augmentation: jitter p=0.6, grayscale p=0.2, blur p=0.5."""
    return ViewConfig(size, tuple(crop_scale), jitter_p=0.6, gray_p=0.2, blur_p=0.5,
                      blur_sigma=tuple(blur_sigma), solarize_p=0.0)


# ------------------------------------------------------------------------------ uint8 -> float
def to_float(batch: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) uint8 -> (B, C, H, W) float32 in [0, 1] (channels_last memory: no copy of layout)."""
    return batch.permute(0, 3, 1, 2).float().div_(255.0)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def channel_stats(images, indices=None, max_images: int = 10000, seed: int = 0) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] of (N, H, W, C) uint8 images: a random subset of
    ``indices`` (the training images: never the test set's statistics)."""
    import numpy as np
    pool = np.arange(len(images)) if indices is None else np.asarray(indices)
    pick = np.sort(np.random.default_rng(seed).choice(pool, size=min(len(pool), max_images), replace=False))
    x = np.asarray(images[pick], dtype=np.float64) / 255.0
    return x.mean(axis=(0, 1, 2)).tolist(), x.std(axis=(0, 1, 2)).tolist()


# ------------------------------------------------------------------------------ geometry
def sample_crop_boxes(n: int, height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                      generator: torch.Generator | None = None, device="cpu", attempts: int = 10) -> torch.Tensor:
    """torchvision's RandomResizedCrop.get_params for ``n`` images at once: (n, 4) = top, left, h, w.

    Ten attempts per image in parallel; the first that fits wins; a central crop clamped to
    ``ratio`` when none fits (torchvision's fallback)."""
    area = height * width
    u = torch.rand(n, attempts, 4, generator=generator, device=device)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[..., 1]
    aspect = torch.exp(log_r)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.argmax(ok.int(), dim=1)
    rows = torch.arange(n, device=device)
    w, h = w[rows, first], h[rows, first]
    top = torch.floor(u[rows, first, 2] * (height - h + 1))
    left = torch.floor(u[rows, first, 3] * (width - w + 1))
    # fallback: central crop with the ratio clamped
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fh, fw = height, round(height * max(ratio))
    else:
        fw, fh = width, height
    none = ~ok.any(dim=1)
    h = torch.where(none, torch.full_like(h, fh), h)
    w = torch.where(none, torch.full_like(w, fw), w)
    top = torch.where(none, torch.full_like(top, (height - fh) // 2), top)
    left = torch.where(none, torch.full_like(left, (width - fw) // 2), left)
    return torch.stack([top, left, h, w], dim=1)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor | None = None,
                 mode: str = "bilinear", shift: torch.Tensor | None = None) -> torch.Tensor:
    """Crop each image to its box (top, left, h, w) and resize to ``size`` x ``size`` in one
    ``grid_sample``; ``flip`` (bool per image) mirrors horizontally at no extra cost.

    Equals ``torchvision.transforms.functional.resized_crop(..., antialias=False)`` except on the
    outermost output pixels of an upsampled crop, where this reads the real neighbour pixel
    outside the box instead of repeating the box's edge.

    ``shift`` (B, 2): the output moved by (dy, dx) input pixels (after the crop; what leaves
    the image is lost, what enters repeats the border pixels)."""
    b, _, height, width = x.shape
    top, left, h, w = boxes.to(x.dtype).unbind(1)
    if shift is not None:  # the crop box moves the other way
        top, left = top - shift[:, 0].to(x.dtype), left - shift[:, 1].to(x.dtype)
    sx, sy = w / width, h / height
    tx, ty = (2 * left + w) / width - 1, (2 * top + h) / height - 1
    if flip is not None:
        sx = torch.where(flip, -sx, sx)
    theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, tx, sy, ty
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
    out = F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)
    return out.clamp_(0, 1) if mode == "bicubic" else out


# ------------------------------------------------------------------------------ colour
def _per_sample(f: torch.Tensor) -> torch.Tensor:
    return f.view(-1, 1, 1, 1)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma (torchvision's weights), kept with C channels."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    y = (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)
    return y.expand_as(x)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * _per_sample(factor)).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = grayscale(x)[:, :1].mean(dim=(1, 2, 3), keepdim=True)
    f = _per_sample(factor)
    return (f * x + (1 - f) * mean).clamp_(0, 1)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    f = _per_sample(factor)
    return (f * x + (1 - f) * grayscale(x)).clamp_(0, 1)


def adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by ``factor`` turns (in [-0.5, 0.5]) through HSV, as torchvision does."""
    if x.shape[1] == 1:
        return x
    h, s, v = _rgb_to_hsv(x)
    h = torch.remainder(h + _per_sample(factor)[:, 0], 1.0)
    return _hsv_to_rgb(h, s, v)


def _rgb_to_hsv(x: torch.Tensor):
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    crd = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return h, s, maxc


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # The closed form f(n) = v - v s max(0, min(k, 4 - k, 1)), k = (n + 6h) mod 6, for n = 5, 3, 1:
    # one expression per channel instead of torchvision's six-way table.
    h6 = h * 6.0
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + h6, 6.0)
        out.append(v - v * s * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(out, 1)


JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def color_jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``factors`` (B, 4): brightness, contrast, saturation, hue; ``order`` (B, 4): a permutation of
    0..3 per sample (torchvision draws one per call). Each op runs once on the samples whose
    ``k``-th op it is."""
    x = x.clone()
    for k in range(4):
        for op_index, op in enumerate(JITTER_OPS):
            sel = torch.nonzero(order[:, k] == op_index).squeeze(1)
            if sel.numel():
                x[sel] = op(x[sel], factors[sel, op_index])
    return x


# ------------------------------------------------------------------------------ blur, solarise
def gaussian_kernels(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """(B, k) normalised 1-D Gaussian kernels (torchvision's formula)."""
    half = (kernel_size - 1) * 0.5
    t = torch.linspace(-half, half, kernel_size, device=sigma.device, dtype=sigma.dtype)
    k = torch.exp(-0.5 * (t[None] / sigma[:, None]) ** 2)
    return k / k.sum(1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample ``sigma``, reflect padding (as torchvision)."""
    b, c, h, w = x.shape
    k = gaussian_kernels(sigma.to(x.dtype), kernel_size)            # (B, k)
    k = k.repeat_interleave(c, dim=0)                                # (B*C, k)
    pad = kernel_size // 2
    y = F.pad(x.reshape(1, b * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, k.view(b * c, 1, 1, kernel_size), groups=b * c)
    y = F.conv2d(y, k.view(b * c, 1, kernel_size, 1), groups=b * c)
    return y.view(b, c, h, w)


def blur_kernel_size(sigma_max: float, image_size: int) -> int:
    """Odd, covering +-3 sigma, smaller than the image (reflect padding needs pad < side)."""
    k = 2 * math.ceil(3 * sigma_max) + 1
    return max(3, min(k, image_size - 1 if image_size % 2 == 0 else image_size - 2))


def erase(x: torch.Tensor, boxes: torch.Tensor, value: float = 0.5) -> torch.Tensor:
    """Cutout: fill each image's box (top, left, h, w in pixels, integers; clipped at the edges)
    with ``value``, in place."""
    _, _, height, width = x.shape
    rows = torch.arange(height, device=x.device).view(1, -1, 1)
    cols = torch.arange(width, device=x.device).view(1, 1, -1)
    top, left, h, w = (t.view(-1, 1, 1) for t in boxes.unbind(1))
    inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    return x.masked_fill_(inside.unsqueeze(1), value)


def solarize(x: torch.Tensor, threshold: float = 128 / 255) -> torch.Tensor:
    """Invert pixels at or above ``threshold`` (PIL's solarize at 128 on uint8)."""
    return torch.where(x >= threshold, 1.0 - x, x)


# ------------------------------------------------------------------------------ one view
def _bernoulli(p: float, n: int, generator, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) < p


def _uniform(lo: float, hi: float, n: int, generator, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, device=device)


def augment(x: torch.Tensor, view: ViewConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random view of a float batch (B, C, H, W) in [0, 1]; returns (B, C, size, size) in [0, 1].

    Every random parameter is drawn per sample from ``generator`` (in a fixed order), so the same
    generator state gives the same view."""
    n, dev = x.shape[0], x.device
    boxes = sample_crop_boxes(n, x.shape[2], x.shape[3], view.crop_scale, view.crop_ratio, generator, dev)
    flip = _bernoulli(view.flip_p, n, generator, dev)
    shift = None
    if view.translate > 0:  # whole input pixels, each axis uniform in [-t, t] x the side
        most = torch.tensor([view.translate * x.shape[2], view.translate * x.shape[3]], device=dev)
        shift = torch.round((2 * torch.rand(n, 2, generator=generator, device=dev) - 1) * most)
    x = resized_crop(x, boxes, view.size, flip, view.interpolation, shift)

    b, c, s, hue = view.jitter
    apply = _bernoulli(view.jitter_p, n, generator, dev)
    factors = torch.stack([_uniform(max(0, 1 - b), 1 + b, n, generator, dev),
                           _uniform(max(0, 1 - c), 1 + c, n, generator, dev),
                           _uniform(max(0, 1 - s), 1 + s, n, generator, dev),
                           _uniform(-hue, hue, n, generator, dev)], 1)
    order = torch.argsort(torch.rand(n, 4, generator=generator, device=dev), dim=1)
    sel = torch.nonzero(apply).squeeze(1)
    if sel.numel():
        x[sel] = color_jitter(x[sel], factors[sel], order[sel])

    gray = torch.nonzero(_bernoulli(view.gray_p, n, generator, dev)).squeeze(1)
    if gray.numel() and x.shape[1] > 1:
        x[gray] = grayscale(x[gray]).contiguous()

    sigma = _uniform(view.blur_sigma[0], view.blur_sigma[1], n, generator, dev)
    blur = torch.nonzero(_bernoulli(view.blur_p, n, generator, dev)).squeeze(1)
    if blur.numel():
        x[blur] = gaussian_blur(x[blur], sigma[blur], blur_kernel_size(view.blur_sigma[1], view.size))

    sol = torch.nonzero(_bernoulli(view.solarize_p, n, generator, dev)).squeeze(1)
    if sol.numel():
        x[sol] = solarize(x[sol])

    if view.erase_p > 0:
        side = view.size
        u = torch.rand(n, 4, generator=generator, device=dev)
        k = torch.round((view.erase_size[0] + (view.erase_size[1] - view.erase_size[0]) * u[:, 0]) * side)
        centre = torch.floor(u[:, 1:3] * side)  # the square is centred anywhere (cut at the edges)
        top, left = centre[:, 0] - torch.div(k, 2, rounding_mode="floor"), centre[:, 1] - torch.div(k, 2, rounding_mode="floor")
        k = torch.where(u[:, 3] < view.erase_p, k, torch.zeros_like(k))
        x = erase(x, torch.stack([top, left, k, k], 1).long())
    return x


class Augmenter:
    """uint8 (B, H, W, C) batch -> normalised float views, channels_last, on the batch's device."""

    def __init__(self, views: Sequence[ViewConfig], mean: Sequence[float], std: Sequence[float]):
        self.views, self.mean, self.std = tuple(views), tuple(mean), tuple(std)

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        x = to_float(batch)
        return [normalize(augment(x, v, generator), self.mean, self.std)
                .contiguous(memory_format=torch.channels_last) for v in self.views]

    def plain(self, batch: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """No randomness: only resize (when ``size`` differs) and normalise (evaluation)."""
        x = to_float(batch)
        if size is not None and size != x.shape[-1]:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return normalize(x, self.mean, self.std).contiguous(memory_format=torch.channels_last)
