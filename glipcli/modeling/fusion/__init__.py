from glipcli.modeling.fusion.bi_attention import BiAttentionBlock, BiMultiHeadAttention
from glipcli.modeling.fusion.text_layer import ClampedBertLayer

__all__ = ["BiAttentionBlock", "BiMultiHeadAttention", "ClampedBertLayer"]
