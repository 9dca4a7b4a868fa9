"""Each batched augmentation against torchvision's functional op on the same float image and the
same parameters. Tolerance: 1e-5 absolute unless stated (float32 rounding of the same formula)."""
import math

import pytest
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from lossless import augment as A

ATOL = 1e-5


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, 20, 24, generator=g)


def test_crop_boxes_follow_torchvision_rules():
    g = torch.Generator().manual_seed(1)
    boxes = A.sample_crop_boxes(4000, 32, 40, (0.08, 1.0), (3 / 4, 4 / 3), g)
    top, left, h, w = boxes.unbind(1)
    assert (h >= 1).all() and (w >= 1).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 32).all() and (left + w <= 40).all()
    area = (h * w) / (32 * 40)
    assert area.min() >= 0.06 and area.max() <= 1.0
    # the same draw again with the same seed
    assert torch.equal(boxes, A.sample_crop_boxes(4000, 32, 40, generator=torch.Generator().manual_seed(1)))
    # impossible scales fall back to the centre crop, as torchvision does
    fb = A.sample_crop_boxes(3, 10, 30, scale=(5.0, 6.0), generator=g)
    assert fb.tolist() == [[0, 8, 10, 13]] * 3  # width clamped to ratio 4/3 of height 10


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_resized_crop_matches_torchvision(images, mode):
    boxes = torch.tensor([[0, 0, 20, 24], [2, 3, 10, 12], [5, 1, 15, 20], [0, 10, 7, 9],
                          [3, 3, 17, 21], [1, 2, 19, 22]], dtype=torch.float32)
    out = A.resized_crop(images, boxes, 16, mode=mode)
    interp = InterpolationMode.BILINEAR if mode == "bilinear" else InterpolationMode.BICUBIC
    for i, (t, l, h, w) in enumerate(boxes.int().tolist()):
        ref = TF.resized_crop(images[i], t, l, h, w, [16, 16], interp, antialias=False)
        if mode == "bicubic":
            ref = ref.clamp(0, 1)
        reach = 1 if mode == "bilinear" else 2  # source pixels a tap reaches past the sample point
        if h >= 16 and w >= 16:   # downsampling: taps stay inside the box but for bicubic's first ring
            m = reach - 1
        else:                     # upsampling: taps reaching outside the box cover more output pixels
            m = math.ceil(reach * 16 / min(h, w)) + 1
        sl = (slice(None), slice(m, 16 - m), slice(m, 16 - m))
        assert torch.allclose(out[i][sl], ref[sl], atol=ATOL), (i, (out[i][sl] - ref[sl]).abs().max())


def test_flip_is_a_mirror(images):
    boxes = torch.tensor([[0, 0, 20, 24]] * 6, dtype=torch.float32)
    flip = torch.tensor([True, False] * 3)
    out = A.resized_crop(images, boxes, 20, flip)
    plain = A.resized_crop(images, boxes, 20)
    assert torch.allclose(out[0], plain[0].flip(-1), atol=ATOL)
    assert torch.allclose(out[1], plain[1], atol=ATOL)


def test_colour_ops_match_torchvision(images):
    f = torch.tensor([0.6, 1.0, 1.4, 0.8, 1.2, 0.0])
    hue = torch.tensor([-0.1, 0.0, 0.1, 0.05, -0.5, 0.5])
    bright, contrast = A.adjust_brightness(images, f), A.adjust_contrast(images, f)
    sat, hued = A.adjust_saturation(images, f), A.adjust_hue(images, hue)
    for i in range(6):
        assert torch.allclose(bright[i], TF.adjust_brightness(images[i], f[i].item()), atol=ATOL)
        assert torch.allclose(contrast[i], TF.adjust_contrast(images[i], f[i].item()), atol=ATOL)
        assert torch.allclose(sat[i], TF.adjust_saturation(images[i], f[i].item()), atol=ATOL)
        assert torch.allclose(hued[i], TF.adjust_hue(images[i], hue[i].item()), atol=2e-5)
    gray = A.grayscale(images)
    for i in range(6):
        assert torch.allclose(gray[i], TF.rgb_to_grayscale(images[i], 3), atol=ATOL)


def test_colour_ops_on_grayscale_images():
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    f = torch.tensor([0.7, 1.3, 1.0])
    for i in range(3):
        assert torch.allclose(A.adjust_contrast(x, f)[i], TF.adjust_contrast(x[i], f[i].item()), atol=ATOL)
        assert torch.allclose(A.adjust_hue(x, f - 1)[i], TF.adjust_hue(x[i], (f[i] - 1).item() / 3), atol=ATOL)


def test_color_jitter_applies_each_samples_own_order(images):
    factors = torch.tensor([[1.3, 0.7, 1.2, 0.05]] * 6)
    orders = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1], [0, 1, 2, 3], [3, 1, 0, 2]])
    out = A.color_jitter(images, factors, orders)
    ops = [lambda im: TF.adjust_brightness(im, 1.3), lambda im: TF.adjust_contrast(im, 0.7),
           lambda im: TF.adjust_saturation(im, 1.2), lambda im: TF.adjust_hue(im, 0.05)]
    for i in range(6):
        ref = images[i]
        for k in orders[i].tolist():
            ref = ops[k](ref)
        assert torch.allclose(out[i], ref, atol=3e-5)
    assert not torch.allclose(out[0], out[1], atol=1e-3)  # the order matters


def test_gaussian_blur_matches_torchvision(images):
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 0.8])
    k = A.blur_kernel_size(2.0, 20)
    out = A.gaussian_blur(images, sigma, k)
    for i in range(6):
        ref = TF.gaussian_blur(images[i], [k, k], [sigma[i].item()] * 2)
        assert torch.allclose(out[i], ref, atol=ATOL), (out[i] - ref).abs().max()


def test_solarize_matches_torchvision(images):
    assert torch.equal(A.solarize(images), TF.solarize(images, 128 / 255))


def test_parameters_are_independent_per_sample():
    """A batch of identical images gives different views, and each sample's view does not depend
    on the other samples' contents."""
    img = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3)).expand(64, -1, -1, -1).contiguous()
    v1, _ = A.barlow_twins_views(24)
    out = A.augment(img, v1, torch.Generator().manual_seed(4))
    flat = out.flatten(1)
    dist = torch.cdist(flat, flat)
    assert (dist + torch.eye(64) * 1e9).min() > 1e-3                   # no two samples alike
    other = img.clone()
    other[1:] = torch.rand(63, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    again = A.augment(other, v1, torch.Generator().manual_seed(4))
    assert torch.allclose(out[0], again[0], atol=1e-6)                 # sample 0 unaffected by others


def test_probabilities_are_respected():
    x = torch.rand(4000, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    g = torch.Generator().manual_seed(7)
    v = A.ViewConfig(8, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0,
                     gray_p=0.3, blur_p=0.0, solarize_p=0.0)
    out = A.augment(x, v, g)
    is_gray = (out[:, 0] == out[:, 1]).all(dim=(1, 2)) & (out[:, 1] == out[:, 2]).all(dim=(1, 2))
    assert abs(is_gray.float().mean().item() - 0.3) < 0.03
    assert torch.allclose(out[~is_gray], x[~is_gray], atol=1e-5)      # identity crop, nothing else


def test_augmenter_outputs_channels_last_normalised():
    batch = torch.randint(0, 256, (5, 28, 28, 1), dtype=torch.uint8)
    aug = A.Augmenter(A.barlow_twins_views(28), mean=[0.5], std=[0.25])
    v1, v2 = aug(batch, torch.Generator().manual_seed(0))
    assert v1.shape == (5, 1, 28, 28) and v1.is_contiguous(memory_format=torch.channels_last)
    assert v1.min() >= -2.0 - 1e-6 and v1.max() <= 2.0 + 1e-6
    plain = aug.plain(batch)
    assert torch.allclose(plain, (batch.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25)
    assert not torch.allclose(v1, v2)


def test_shift_moves_pixels_and_repeats_the_border():
    """An integer shift of the full-image crop at the same size equals indexing with clamped
    coordinates (output pixel (r, c) shows input pixel (r - dy, c - dx))."""
    x = torch.rand(6, 3, 20, 20, generator=torch.Generator().manual_seed(10))
    boxes = torch.tensor([[0, 0, 20, 20]] * 6, dtype=torch.float32)
    shift = torch.tensor([[2, -3], [0, 0], [-1, 4], [3, 3], [-2, -2], [0, 5]], dtype=torch.float32)
    out = A.resized_crop(x, boxes, 20, mode="bilinear", shift=shift)
    for i, (dy, dx) in enumerate(shift.int().tolist()):
        rows = (torch.arange(20) - dy).clamp(0, 19)
        cols = (torch.arange(20) - dx).clamp(0, 19)
        assert torch.allclose(out[i], x[i][:, rows][:, :, cols], atol=ATOL), i


def test_erase_fills_the_box_and_clips_at_edges():
    x = torch.rand(3, 2, 9, 7, generator=torch.Generator().manual_seed(8))
    boxes = torch.tensor([[1, 2, 3, 4], [-2, 5, 4, 4], [0, 0, 0, 0]])
    out = A.erase(x.clone(), boxes, 0.5)
    ref = x.clone()
    for i, (t, l, h, w) in enumerate(boxes.tolist()):
        for r in range(9):
            for c in range(7):
                if t <= r < t + h and l <= c < l + w:
                    ref[i, :, r, c] = 0.5
    assert torch.equal(out, ref)


def test_fixmatch_views():
    """Weak: the image flipped and shifted, no other change; strong: a cutout of mid-grey in every
    image; both reproducible from the generator."""
    x = torch.rand(256, 1, 28, 28, generator=torch.Generator().manual_seed(9)) * 0.4  # no 0.5 pixel
    weak, strong = A.fixmatch_views(28)
    w = A.augment(x, weak, torch.Generator().manual_seed(1))
    assert torch.equal(w, A.augment(x, weak, torch.Generator().manual_seed(1)))
    # every weak view is some flip and integer shift of its image (within 1e-5), shifts up to 3 px
    for i in range(0, 256, 37):
        best = min((A.resized_crop(x[i:i + 1], torch.tensor([[0., 0, 28, 28]]), 28, torch.tensor([f]),
                                   shift=torch.tensor([[dy, dx]], dtype=torch.float32)) - w[i]).abs().max().item()
                   for f in (False, True) for dy in range(-3, 4) for dx in range(-3, 4))
        assert best < ATOL, i
    s = A.augment(x, strong, torch.Generator().manual_seed(2))
    grey = (s == 0.5).flatten(1).sum(1)
    assert (grey > 0).float().mean() > 0.9  # a square of side round(u * 14), u ~ U(0, 1): > 0 for 96%
    assert grey.max() <= 14 * 14
