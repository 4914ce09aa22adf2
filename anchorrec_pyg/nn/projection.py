r"""The projection domain of AnchorRec (SPEC §3.3, §4) and the anchor correction.

AnchorRec aligns modalities *indirectly*: not in the space of the embeddings it ranks with, but
after small MLP heads (Linear, ReLU, Linear) that map each view into a shared projection domain:

* :math:`\mathbf{h}_{id} = W_{id}(\mathbf{C}_{items})`: the collaborative view,
* :math:`\mathbf{h}_{mm} = W_{mm}(\mathbf{H}_{mm})`: the multimodal anchor,
* :math:`\mathbf{h}_{mix} = \alpha_v W_v(\mathbf{F}_v) + \alpha_t W_t(\mathbf{F}_t)`: the mixture
  of the raw image and text features (:math:`\alpha_v = 0.25`, :math:`\alpha_t = 0.75`).

The anchor correction maps the anchor back towards the ID space,
:math:`\mathbf{c} = D_{mm}(\mathbf{h}_{mm})`, and is added to the final item embeddings with a
small weight (:math:`\beta`, SPEC §3.4).

The heads are applied to whatever rows they are given, so callers project only the rows a loss
or an analysis needs.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ['ProjectionHead', 'ProjectionDomain']


class ProjectionHead(torch.nn.Sequential):
    """``Linear(in_dim, d) -> ReLU -> Linear(d, d)`` with Xavier-uniform weights (SPEC §3)."""

    def __init__(self, in_dim: int, embedding_dim: int) -> None:
        super().__init__(
            torch.nn.Linear(in_dim, embedding_dim),
            torch.nn.ReLU(),
            torch.nn.Linear(embedding_dim, embedding_dim),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights; biases keep PyTorch's default initialisation."""
        for layer in self:
            if isinstance(layer, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(layer.weight)
                bound = 1.0 / layer.in_features**0.5
                torch.nn.init.uniform_(layer.bias, -bound, bound)


class ProjectionDomain(torch.nn.Module):
    r"""The heads :math:`W_{id}, W_{mm}, W_t, W_v, D_{mm}` of SPEC §3/§4.

    Args:
        embedding_dim: d.
        text_dim: width of the raw text features (input of :math:`W_t`).
        image_dim: width of the raw image features (input of :math:`W_v`).
        mix_text: :math:`\alpha_t`, weight of the text head in the mixture (published 0.75).
        mix_image: :math:`\alpha_v`, weight of the image head in the mixture (published 0.25).
    """

    def __init__(self, embedding_dim: int, text_dim: int, image_dim: int,
                 mix_text: float = 0.75, mix_image: float = 0.25) -> None:
        super().__init__()
        self.mix_text = mix_text
        self.mix_image = mix_image
        self.id_head = ProjectionHead(embedding_dim, embedding_dim)  # W_id
        self.anchor_head = ProjectionHead(embedding_dim, embedding_dim)  # W_mm
        self.text_head = ProjectionHead(text_dim, embedding_dim)  # W_t
        self.image_head = ProjectionHead(image_dim, embedding_dim)  # W_v
        self.decoder = ProjectionHead(embedding_dim, embedding_dim)  # D_mm

    def reset_parameters(self) -> None:
        for head in (self.id_head, self.anchor_head, self.text_head, self.image_head,
                     self.decoder):
            head.reset_parameters()

    def project_id(self, c_items: Tensor) -> Tensor:
        r""":math:`\mathbf{h}_{id} = W_{id}(\mathbf{C}_{items})`."""
        return self.id_head(c_items)

    def project_anchor(self, h_mm: Tensor) -> Tensor:
        r""":math:`\mathbf{h}_{mm} = W_{mm}(\mathbf{H}_{mm})`."""
        return self.anchor_head(h_mm)

    def project_text(self, text: Tensor) -> Tensor:
        r""":math:`W_t(\mathbf{F}_t)`."""
        return self.text_head(text)

    def project_image(self, image: Tensor) -> Tensor:
        r""":math:`W_v(\mathbf{F}_v)`."""
        return self.image_head(image)

    def mixture(self, text: Tensor, image: Tensor) -> Tensor:
        r""":math:`\mathbf{h}_{mix} = \alpha_v W_v(\mathbf{F}_v) + \alpha_t W_t(\mathbf{F}_t)`."""
        return self.mix_image * self.image_head(image) + self.mix_text * self.text_head(text)

    def anchor_correction(self, anchor: Tensor) -> Tensor:
        r""":math:`\mathbf{c} = D_{mm}(\mathbf{h}_{mm})` from projected anchor rows."""
        return self.decoder(anchor)

    def extra_repr(self) -> str:
        return f'mix_text={self.mix_text}, mix_image={self.mix_image}'
