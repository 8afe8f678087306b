"""Training and evaluation: `glip finetune` (full / linear probe), `glip prompt-tune`, COCO AP."""
