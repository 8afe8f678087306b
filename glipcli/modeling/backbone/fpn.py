"""Feature pyramid over Swin stages 3-5 plus P6/P7 (official GLIP FPN + LastLevelP6P7)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from glipcli.modeling.backbone.drop_block import DropBlock2D


def _kaiming_conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """Conv with bias, kaiming-uniform(a=1) weights and zero bias (official init)."""
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    nn.init.zeros_(conv.bias)
    return conv


class FPN(nn.Module):
    """Top-down pyramid: 1x1 laterals, nearest upsampling, 3x3 outputs; P6 = s2 conv on P5,
    P7 = s2 conv on relu(P6).

    In training, DropBlock is applied to the merged top-down map before each output conv except
    the top-most level (official GLIP `MODEL.FPN.DROP_BLOCK`).
    """

    def __init__(
        self,
        in_channels: tuple[int, int, int],
        out_channels: int,
        drop_block_prob: float = 0.0,
        drop_block_size: int = 3,
    ) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList(_kaiming_conv(c, out_channels, 1) for c in in_channels)
        self.output_convs = nn.ModuleList(
            _kaiming_conv(out_channels, out_channels, 3) for _ in in_channels
        )
        self.p6 = _kaiming_conv(out_channels, out_channels, 3, stride=2)
        self.p7 = _kaiming_conv(out_channels, out_channels, 3, stride=2)
        self.drop_block = (
            DropBlock2D(drop_block_prob, drop_block_size) if drop_block_prob > 0 else nn.Identity()
        )

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """features: [C3, C4, C5], C_l [B, in_l, H_l, W_l] -> [P3..P7], each [B, out, H, W]
        (P3..P5 at the input sizes, P6/P7 at ceil(H/2) of the level below)."""
        last = self.lateral_convs[-1](features[-1])
        outputs = [self.output_convs[-1](last)]
        for level in range(len(features) - 2, -1, -1):
            lateral = self.lateral_convs[level](features[level])
            if lateral.shape[-2:] != last.shape[-2:]:
                last = F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
            last = lateral + last
            outputs.insert(0, self.output_convs[level](self.drop_block(last)))
        p6 = self.p6(outputs[-1])
        p7 = self.p7(F.relu(p6))
        return outputs + [p6, p7]
