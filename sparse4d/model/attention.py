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

