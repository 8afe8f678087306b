from glipcli.modeling.head.dyconv import DyConv
from glipcli.modeling.head.vldyhead import HeadOutputs, VLDyHead, VLDyHeadLayer

__all__ = ["DyConv", "HeadOutputs", "VLDyHead", "VLDyHeadLayer"]
