"""Which parameters train in each task, which modules run in eval mode, and the optimiser groups.

Read from the official code (`tools/finetune.py: tuning_highlevel_override`,
`GeneralizedVLRCNN.__init__/train`, `solver/build.py: make_optimizer`):

- `full` (`TUNING_HIGHLEVEL_OVERRIDE full`, with the README's `FREEZE_CONV_BODY_AT 2`):
  everything trains except the Swin patch embedding and stage 1 (frozen and in eval mode) and the
  unused `cls_logits` (GLIP scores with the dot-product token logits,
  `USE_DOT_PRODUCT_TOKEN_LOSS` freezes it).
- `linear-probe` (`linear_prob`): backbone, FPN and language backbone frozen and in eval mode;
  in the head (`rpn`) only parameters whose name contains `bbox_pred`, `cls_logits`,
  `centerness`, `cosine_scale`, `dot_product_projection_text`, `head.log_scale`,
  `head.bias_lang` or `head.bias0` train -- here `bbox_pred`, `centerness`, `token_projection`
  (= `dot_product_projection_text`), `log_scale`, `bias_lang`, `bias0` (`cls_logits` stays
  frozen, as above; the per-level `scales` and the whole fusion/DyConv tower are frozen). The
  head stays in train mode (the official `RPN.FREEZE` is False), so its dropouts are active.
- `prompt` (`language_prompt_v2`): nothing of the model trains; every module is in eval mode
  (backbone, FPN, head and language backbone frozen); only the prompt offset trains.

Optimiser groups (official `make_optimizer`): base lr; language-backbone parameters the language
lr; any parameter with "bias" in its name: lr x `bias_lr_factor` (2) and `bias_weight_decay` (0).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from glipcli.engine.train_config import TrainConfig
from glipcli.modeling.glip import GLIP

LINEAR_PROBE_PARAMS = ("head.bbox_pred.", "head.centerness.", "head.token_projection.", "head.log_scale",
                       "head.bias_lang", "head.bias0")


@dataclass
class TrainablePlan:
    """names: the model's trainable parameters; eval_modules: modules kept in eval mode."""

    names: list[str]
    eval_modules: list[nn.Module]

    def set_train_mode(self, model: nn.Module) -> None:
        """`model.train()`, then the frozen parts back to eval mode."""
        model.train()
        for module in self.eval_modules:
            module.eval()


def _frozen_swin_modules(model: GLIP, stages: int) -> list[nn.Module]:
    """Official Swin `frozen_stages` semantics: >= 0 the patch embedding, >= 2 also stages
    1..stages-1."""
    swin = model.backbone.swin
    modules: list[nn.Module] = []
    if stages >= 0:
        modules.append(swin.patch_embed)
    if stages >= 2:
        modules.extend(swin.layers[i] for i in range(min(stages - 1, len(swin.layers))))
    return modules


def configure_trainable(model: GLIP, config: TrainConfig) -> TrainablePlan:
    """Set `requires_grad` on every parameter of `model` for the task and return the plan."""
    for p in model.parameters():
        p.requires_grad_(False)
    if config.task == "full":
        frozen = _frozen_swin_modules(model, config.freeze_swin_stages) + [model.head.cls_logits]
        frozen_ids = {id(p) for m in frozen for p in m.parameters()}
        names = []
        for name, p in model.named_parameters():
            if id(p) not in frozen_ids:
                p.requires_grad_(True)
                names.append(name)
        return TrainablePlan(names, frozen)
    if config.task == "linear-probe":
        names = []
        for name, p in model.named_parameters():
            if name.startswith(LINEAR_PROBE_PARAMS):
                p.requires_grad_(True)
                names.append(name)
        return TrainablePlan(names, [model.backbone, model.language, model.head.cls_logits])
    # prompt: the model is frozen entirely
    return TrainablePlan([], [model])


def param_groups(named: Iterable[tuple[str, nn.Parameter]], config: TrainConfig) -> list[dict]:
    """Optimiser groups of the trainable parameters: each parameter's lr and weight decay as
    the official per-parameter groups give them, parameters with equal settings grouped (in
    order of first appearance; AdamW treats each parameter alike whatever its group)."""
    groups: dict[tuple[float, float], dict] = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        lr = config.language_lr if name.startswith(("language.", "glip.language.")) else config.lr
        weight_decay = config.weight_decay
        if "bias" in name:
            lr *= config.bias_lr_factor
            weight_decay = config.bias_weight_decay
        group = groups.setdefault((lr, weight_decay), {"params": [], "names": [], "lr": lr,
                                                       "weight_decay": weight_decay})
        group["params"].append(p)
        group["names"].append(name)
    return list(groups.values())
