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

Our options for full fine-tuning (`TrainConfig.freeze`, `*_lr_factor`): a frozen part (`part_of`)
does not train, is left out of the optimiser and runs in eval mode, as the official frozen parts
do; an lr factor multiplies the base lr of its part (before the bias factor).
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


FUSION_MODULES = ("fusion", "text_layer")  # of each `head.layers[i]`: the X-MHA and its text-side layer


def part_of(name: str) -> str | None:
    """The part (`TrainConfig` PARTS) a parameter name of GLIP (or of the train module, `glip.`
    prefixed) belongs to: `backbone` (Swin + FPN), `language`, `fusion` (each head layer's
    bi-attention and text layer), `head` (the rest of the head); None for anything else."""
    name = name.removeprefix("glip.")
    top, _, rest = name.partition(".")
    if top in ("backbone", "language"):
        return top
    if top == "head":
        pieces = rest.split(".")
        if len(pieces) > 2 and pieces[0] == "layers" and pieces[2] in FUSION_MODULES:
            return "fusion"
        return "head"
    return None


def part_modules(model: GLIP, part: str) -> list[nn.Module]:
    """The modules making up `part` (the head's loose parameters, such as `log_scale`, belong to
    no module and need no mode)."""
    if part == "backbone":
        return [model.backbone]
    if part == "language":
        return [model.language]
    fusion = [getattr(layer, n) for layer in model.head.layers for n in FUSION_MODULES
              if getattr(layer, n, None) is not None]
    if part == "fusion":
        return fusion
    fusion_ids = {id(m) for m in fusion}
    return [m for m in model.head.children() if id(m) not in fusion_ids and m is not model.head.layers] + [
        child for layer in model.head.layers for child in layer.children() if id(child) not in fusion_ids]


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
        parts = config.frozen_parts
        for part in parts:
            frozen.extend(part_modules(model, part))
        frozen_ids = {id(p) for m in frozen for p in m.parameters()}
        names = []
        for name, p in model.named_parameters():
            if id(p) not in frozen_ids and part_of(name) not in parts:
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


def _part_lr(config, part: str | None) -> float:
    """The lr of a parameter of `part` (None: no part of GLIP, e.g. the prompt offset), before the
    bias factor. `config` may be any object with the official rules' fields (pre-training passes
    its own, without part factors)."""
    if part == "language":
        return config.language_lr
    return config.lr * (getattr(config, f"{part}_lr_factor", 1.0) if part is not None else 1.0)


def param_groups(named: Iterable[tuple[str, nn.Parameter]], config: TrainConfig) -> list[dict]:
    """Optimiser groups of the trainable parameters: each parameter's lr and weight decay as
    the official per-parameter groups give them, parameters with equal settings grouped (in
    order of first appearance; AdamW treats each parameter alike whatever its group)."""
    groups: dict[tuple[float, float], dict] = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        lr = _part_lr(config, part_of(name))
        weight_decay = config.weight_decay
        if "bias" in name:
            lr *= config.bias_lr_factor
            weight_decay = config.bias_weight_decay
        group = groups.setdefault((lr, weight_decay), {"params": [], "names": [], "lr": lr,
                                                       "weight_decay": weight_decay})
        group["params"].append(p)
        group["names"].append(name)
    return list(groups.values())
