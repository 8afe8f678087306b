"""Visual backbone: Swin Transformer + FPN, producing the five pyramid levels P3..P7."""

from __future__ import annotations

from torch import Tensor, nn

from glipcli.config import FPNConfig, SwinConfig
from glipcli.modeling.backbone.drop_block import DropBlock2D
from glipcli.modeling.backbone.fpn import FPN
from glipcli.modeling.backbone.swin import SwinTransformer

__all__ = ["DropBlock2D", "FPN", "SwinTransformer", "VisualBackbone"]


class VisualBackbone(nn.Module):
    """Swin stages 3-5 fed to an FPN. Submodules `swin` and `fpn`."""

    def __init__(
        self, swin_cfg: SwinConfig, fpn_cfg: FPNConfig, use_checkpoint: bool = False
    ) -> None:
        super().__init__()
        self.swin = SwinTransformer(swin_cfg, use_checkpoint=use_checkpoint)
        c3, c4, c5 = swin_cfg.stage_channels[1:]
        self.fpn = FPN(
            (c3, c4, c5),
            fpn_cfg.out_channels,
            drop_block_prob=fpn_cfg.drop_block_prob,
            drop_block_size=fpn_cfg.drop_block_size,
        )

    def forward_with_stages(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """images: [B, 3, H, W] -> (4 Swin stage maps stage2..stage5, 5 FPN maps P3..P7)."""
        stages = self.swin(images)
        return stages, self.fpn(stages[1:])

    def forward(self, images: Tensor) -> list[Tensor]:
        """images: [B, 3, H, W] -> [P3, P4, P5, P6, P7], each [B, fpn_out, H_l, W_l] (strides 8..128)."""
        return self.forward_with_stages(images)[1]
