"""The dataset's classes: the prompt file's class names, in its order.

The prompt file maps each class name to what the model reads (`text`, `prefix`, `suffix`); only
the name reaches the dataset. COCO category ids are 1..N and YOLO class ids 0..N-1, both in
prompt order.
"""

from __future__ import annotations

from dataclasses import dataclass

from glipcli.prompts.prompt_file import PromptSpec


@dataclass(frozen=True)
class Ontology:
    """Class names (the dataset's categories) and the prompt spec the model reads."""

    spec: PromptSpec

    @property
    def names(self) -> list[str]:
        return self.spec.names

    def coco_categories(self) -> list[dict]:
        return [{"id": i + 1, "name": name} for i, name in enumerate(self.names)]

    def prompt_yaml(self) -> str:
        """The prompt file to fine-tune with (`glip finetune --prompt-file`): each category's
        text as the labelling model read it."""
        return self.spec.to_yaml(header="The prompt this dataset was labelled with (glip label).")
