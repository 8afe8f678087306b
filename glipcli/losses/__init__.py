"""Training losses with the official GLIP semantics: ATSS assignment, token-level sigmoid focal
loss on the dot-product logits, GIoU regression and centerness (docs/parity.md, sections 3 and 4)."""

from glipcli.losses.atss import ATSSAssigner, ATSSAssignment, pairwise_iou, resolve_max_iou
from glipcli.losses.focal import token_sigmoid_focal_loss
from glipcli.losses.giou import giou_loss
from glipcli.losses.glip_loss import LOSS_KEYS, DensePredictions, GLIPLoss, LossOutput
from glipcli.losses.targets import TrainTarget, centerness_targets, regression_targets, token_targets

__all__ = [
    "ATSSAssigner", "ATSSAssignment", "DensePredictions", "GLIPLoss", "LOSS_KEYS", "LossOutput",
    "TrainTarget", "centerness_targets", "giou_loss", "pairwise_iou", "regression_targets",
    "resolve_max_iou", "token_sigmoid_focal_loss", "token_targets",
]
