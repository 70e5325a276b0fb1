"""Instance-to-instance attention (self "gnn" and temporal "temp_gnn"), plain or decoupled."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class InstanceAttention(nn.Module):
    """Multi-head attention with a residual, in one of two layouts.

    Decoupled (Sparse4D v3): query/key are [feature, anchor embedding] concatenated (2C), the value is
    the feature lifted to 2C; the residual is added to the concatenated query and the sum is projected
    back to C. Plain: positions are added to query/key, residual on the feature, width C.
    """

    def __init__(self, embed_dims: int, num_heads: int, dropout: float, decouple: bool) -> None:
        super().__init__()
        self.decouple = decouple
        width = 2 * embed_dims if decouple else embed_dims
        self.attn = nn.MultiheadAttention(width, num_heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.fc_before = nn.Linear(embed_dims, width) if decouple else nn.Identity()
        self.fc_after = nn.Linear(width, embed_dims) if decouple else nn.Identity()

    def forward(self, query: Tensor, query_pos: Tensor, key: Tensor | None = None, key_pos: Tensor | None = None, attn_mask: Tensor | None = None) -> Tensor:
        """query (B, Q, C); key (B, S, C) or None for self attention; attn_mask (B*heads, Q, S) bool, True = blocked."""
        if key is None:
            key, key_pos = query, query_pos
        assert key_pos is not None
        if self.decouple:
            q = torch.cat([query, query_pos], dim=-1)
            k = torch.cat([key, key_pos], dim=-1)
            v = self.fc_before(key)
            identity = q
        else:
            q = query + query_pos
            k = key + key_pos
            v = key
            identity = query
        out, _ = self.attn(q, k, v, attn_mask=attn_mask, need_weights=False)
        return self.fc_after(identity + self.dropout(out))



def self_attention_in_groups(layer: InstanceAttention, feature: Tensor, pos: Tensor, dn_valid: Tensor | None, groups: int) -> Tensor:
    """Self attention of the normal queries among themselves and of each denoising group within
    itself: feature/pos (B, A + G*M, C), the last G*M rows the `groups` (G) denoising groups of M
    slots each, dn_valid (B, G*M) whether a slot holds a query (keys of padding slots are hidden;
    every query sees itself). G is fixed by the config and M comes from a shape, so a compiled
    caller sees a varying GT count as a shape, not as a new constant.

    Equal to one attention over all queries with the block-diagonal mask of Sparse4D's denoising, but
    run block by block: at the default 900 queries plus 5 groups of 256 that is a quarter of the
    query-key pairs, the normal queries need no mask, and no (B*heads, L, L) mask is built per layer.
    """
    if dn_valid is None:
        return layer(feature, pos)
    b, length, c = feature.shape
    a = length - dn_valid.shape[1]
    group_size = dn_valid.shape[1] // groups
    normal = layer(feature[:, :a], pos[:, :a])
    valid = dn_valid.reshape(b * groups, group_size)
    itself = torch.eye(group_size, dtype=torch.bool, device=feature.device)
    blocked = ~(valid[:, None, :] | itself).repeat_interleave(layer.attn.num_heads, dim=0)  # (B*G*heads, M, M)
    denoising = layer(feature[:, a:].reshape(b * groups, group_size, c), pos[:, a:].reshape(b * groups, group_size, -1), attn_mask=blocked)
    return torch.cat([normal, denoising.reshape(b, length - a, -1)], dim=1)
