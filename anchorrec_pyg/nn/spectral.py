r"""SMORE's spectrum convolution (SPEC §10): modality denoising and fusion in the frequency
domain of the embedding axis.

Each item's projected feature vector :math:`\mathbf{x} \in \mathbb{R}^d` is taken to the
frequency domain with the orthonormal real DFT (``torch.fft.rfft(norm='ortho')``,
:math:`d/2 + 1` bins),

.. math::
    X_k = \frac{1}{\sqrt{d}}\sum_{j=0}^{d-1} x_j\, e^{-2\pi i jk/d},
    \qquad k = 0, \dots, \lfloor d/2 \rfloor,

multiplied bin by bin with a learned complex filter :math:`\mathbf{W}` and brought back with the
orthonormal inverse of length :math:`d` (``torch.fft.irfft``, which reads the spectrum as
Hermitian: the imaginary parts of the DC bin and, for even :math:`d`, of the Nyquist bin are
ignored):

.. math::
    \mathbf{c}_v = \mathcal{F}^{-1}(\mathbf{X}_v \odot \mathbf{W}_v), \quad
    \mathbf{c}_t = \mathcal{F}^{-1}(\mathbf{X}_t \odot \mathbf{W}_t), \quad
    \mathbf{c}_f = \mathcal{F}^{-1}(\mathbf{X}_v \odot \mathbf{X}_t \odot \mathbf{W}_f),

the last one the cross-modal fusion (a product of spectra is a circular convolution of the two
modalities). The filters are initialised as published: real and imaginary parts
:math:`\mathcal{N}(0, 1)`.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ['SpectralFusion']


class SpectralFusion(torch.nn.Module):
    r"""The three spectral filters of SMORE: per-modality denoising of the image and text
    projections and their fusion (module docstring).

    Each filter is stored as a real ``[1, d // 2 + 1, 2]`` parameter (real, imaginary) and used
    as a complex ``[1, d // 2 + 1]`` tensor, as in the published code.

    Args:
        dim: :math:`d`, the length of the vectors filtered.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f'dim must be >= 1, got {dim}')
        self.dim = dim
        bins = dim // 2 + 1
        self.image_weight = torch.nn.Parameter(torch.empty(1, bins, 2))
        self.text_weight = torch.nn.Parameter(torch.empty(1, bins, 2))
        self.fusion_weight = torch.nn.Parameter(torch.empty(1, bins, 2))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Standard normal real and imaginary parts (``torch.randn``, as published)."""
        for weight in (self.image_weight, self.text_weight, self.fusion_weight):
            torch.nn.init.normal_(weight)

    def forward(self, image: Tensor, text: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Returns ``(c_v, c_t, c_f)``, each ``[n, d]``, from the ``[n, d]`` image and text
        rows."""
        if image.shape != text.shape or image.size(-1) != self.dim:
            raise ValueError(f'SpectralFusion({self.dim}) needs two [n, {self.dim}] inputs, got '
                             f'{list(image.shape)} and {list(text.shape)}')
        image_spec = torch.fft.rfft(image, dim=1, norm='ortho')
        text_spec = torch.fft.rfft(text, dim=1, norm='ortho')
        w_v, w_t, w_f = (torch.view_as_complex(w.to(image.dtype)) for w in (
            self.image_weight, self.text_weight, self.fusion_weight))

        def inverse(spectrum: Tensor) -> Tensor:
            return torch.fft.irfft(spectrum, n=self.dim, dim=1, norm='ortho')

        return (inverse(image_spec * w_v), inverse(text_spec * w_t),
                inverse(image_spec * text_spec * w_f))

    def extra_repr(self) -> str:
        return f'dim={self.dim}'
