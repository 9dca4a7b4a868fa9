"""A faster weight gradient for the small convolutions of a CPU backbone (measured, not assumed).

On a CPU, oneDNN's weight-gradient kernel for a convolution whose output is a few pixels wide
(ResNet's last stages at 28 px: 4 x 4 and 2 x 2) is several times slower than the matrix
product it computes. Timed layer by layer (bf16, channels_last, batch 256, 2 cores of an Intel
Xeon with AMX-BF16) for the cpu profile's layer4 3 x 3 convolution (128 -> 128 channels,
2 x 2): 3.6 ms through oneDNN against 0.7 ms as one GEMM; 4 x 4 outputs 1.9 against 1.1 ms;
and for a 7 x 7 output the other way round (0.6 ms against 1.6 ms). So :class:`Conv2d` keeps
oneDNN for the forward pass and the input gradient everywhere, and computes the weight
gradient as ``dy^T @ im2col(x)`` when the output has at most :data:`GEMM_MAX_PIXELS` pixels
and the tensors are on a CPU. The result is the same sum in another order (a test checks it
against autograd through ``F.conv2d``). Everything else, a GPU included, takes the stock path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GEMM_MAX_PIXELS = 16   # output height x width at or below which the GEMM weight gradient wins (CPU)


def im2col(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
           padding: tuple[int, int]) -> torch.Tensor:
    """Patches of ``x`` (N, C, H, W) as rows: (N * Ho * Wo, kh * kw * C), channel fastest."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    xl = x.permute(0, 2, 3, 1)  # N, H, W, C: a view without copy when x is channels_last
    if ph or pw:
        xl = F.pad(xl, (0, 0, pw, pw, ph, ph))
    n, hp, wp, c = xl.shape
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    xl = xl.contiguous()
    s_n, s_h, s_w, s_c = xl.stride()
    cols = xl.as_strided((n, ho, wo, kh, kw, c), (s_n, s_h * sh, s_w * sw, s_h, s_w, s_c))
    return cols.reshape(n * ho * wo, kh * kw * c)


def weight_grad_gemm(x: torch.Tensor, grad_out: torch.Tensor, weight_shape: torch.Size,
                     stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """The weight gradient of ``conv2d(x, w, stride, padding)`` as one matrix product."""
    o, c, kh, kw = weight_shape
    cols = im2col(x, (kh, kw), stride, padding)
    dy = grad_out.permute(0, 2, 3, 1).reshape(-1, o)
    return (dy.t() @ cols).reshape(o, kh, kw, c).permute(0, 3, 1, 2)


class _GemmWeightGradConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, None, stride, padding)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, list(ctx.stride), list(ctx.padding), [1, 1], False, [0, 0], 1,
                [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_w = weight_grad_gemm(x, grad_out, weight.shape, ctx.stride, ctx.padding)
            grad_w = grad_w.contiguous(memory_format=torch.channels_last) if weight.is_contiguous(
                memory_format=torch.channels_last) else grad_w.contiguous()
        return grad_x, grad_w, None, None


def uses_gemm_weight_grad(conv: nn.Conv2d, x: torch.Tensor, stride: tuple[int, int] | None = None) -> bool:
    """Whether :class:`Conv2d` takes the GEMM weight gradient for this input (convolved with
    ``stride``, default the layer's)."""
    if x.device.type != "cpu" or conv.groups != 1 or conv.dilation != (1, 1) or conv.bias is not None:
        return False
    if not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros":
        return False
    if not (torch.is_grad_enabled() and conv.weight.requires_grad):
        return False
    sh, sw = stride or conv.stride
    ho = (x.shape[-2] + 2 * conv.padding[0] - conv.kernel_size[0]) // sh + 1
    wo = (x.shape[-1] + 2 * conv.padding[1] - conv.kernel_size[1]) // sw + 1
    return ho * wo <= getattr(conv, "gemm_max_pixels", GEMM_MAX_PIXELS)


def subsamples(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether :class:`Conv2d` runs this strided 1 x 1 convolution as a subsampling followed by
    a stride-1 one (the same sums): on a CPU, oneDNN's weight gradient of a strided 1 x 1
    convolution on a channels-last input corrupts memory when the input has a number of
    channels that is not a multiple of 16, the batch is odd and two threads run it (torch
    2.14.1 on an AMD EPYC with AVX-512; seen as a segmentation fault in a pseudo-label round
    of ResNet-18 at width 0.125, whose first shortcut takes 8 channels). Only there: on 16, 32
    or 64 channels (the cpu profile's) the stock kernel is sound and about 4% faster for a
    whole training step."""
    return (x.device.type == "cpu" and conv.kernel_size == (1, 1) and conv.stride != (1, 1)
            and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.in_channels % 16 != 0)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters, same state dict) with the CPU weight gradient above, and
    a strided 1 x 1 convolution run as subsampling + stride 1 on a CPU (:func:`subsamples`).
    ``gemm_max_pixels = 0`` turns the GEMM weight gradient off for this layer."""

    gemm_max_pixels = GEMM_MAX_PIXELS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stride = self.stride
        if subsamples(self, x):  # no padding, so the padding mode plays no part
            x, stride = x[:, :, ::stride[0], ::stride[1]], (1, 1)
            if not uses_gemm_weight_grad(self, x, stride):
                return F.conv2d(x, self.weight, self.bias, 1, 0, 1, self.groups)
        elif not uses_gemm_weight_grad(self, x):
            return super().forward(x)
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        with torch.autocast("cpu", enabled=False):  # cast as autocast would, then run uncast
            return _GemmWeightGradConv.apply(x.to(dtype), self.weight.to(dtype), stride, self.padding)
