"""Pure torch modules (no AnnData): blocks, set encoder, OT pairing."""

from .blocks import RMSNorm, SetAttention, SetBlock, SwiGLU
from .ot import ot_pairing, sinkhorn_plan
from .set_encoder import SetEncoder
from .tabular import TabularSetNet

__all__ = ["RMSNorm", "SetAttention", "SetBlock", "SetEncoder", "SwiGLU", "TabularSetNet",
           "ot_pairing",
           "sinkhorn_plan"]
