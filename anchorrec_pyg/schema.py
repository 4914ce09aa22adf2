"""The data schema of Contract 1 (docs/ARCHITECTURE.md): the one home of the node types, edge
types, modality names, feature attribute names and feature files of the package's
``HeteroData``. The data layer writes these names, the models, trainer and analyses read them;
none of them spells the strings itself.

* users and items: ``data['user']``, ``data['item']``;
* training interactions: :data:`USER_ITEM` (``('user', 'interacts', 'item')``, also holding the
  held-out ``val_edge_index`` / ``test_edge_index``) and its reverse :data:`ITEM_USER`;
* per modality ``m`` of :data:`MODALITIES`: the raw feature table
  ``data['item'][feature_key(m)]`` (``x_<m>``, from :data:`MODALITY_FILES`) and the kNN graph
  ``data[knn_edge_type(m)]`` (``('item', 'similar_<m>', 'item')``).
"""
from __future__ import annotations

__all__ = [
    'USER',
    'ITEM',
    'USER_ITEM',
    'ITEM_USER',
    'MODALITIES',
    'MODALITY_FILES',
    'knn_edge_type',
    'feature_key',
]

USER = 'user'
ITEM = 'item'

#: The training interactions, user -> item (row 0 user, row 1 item).
USER_ITEM: tuple[str, str, str] = (USER, 'interacts', ITEM)
#: The same edges, item -> user.
ITEM_USER: tuple[str, str, str] = (ITEM, 'rev_interacts', USER)

#: The modalities of SPEC §1: the fused multimodal (BEiT-3), text and image tables.
MODALITIES: tuple[str, ...] = ('mm', 'text', 'image')

#: The MMRec file each modality comes from (SPEC §1), for error messages.
MODALITY_FILES: dict[str, str] = {
    'mm': '<name>_beit3/image_feat.npy',
    'text': 'text_feat.npy',
    'image': 'image_feat.npy',
}


def knn_edge_type(modality: str) -> tuple[str, str, str]:
    """The edge type of modality ``modality``'s item-item kNN graph:
    ``('item', 'similar_<modality>', 'item')``."""
    return (ITEM, f'similar_{modality}', ITEM)


def feature_key(modality: str) -> str:
    """The item attribute holding modality ``modality``'s raw feature table: ``x_<modality>``."""
    return f'x_{modality}'
