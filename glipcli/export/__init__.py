"""`glip export`: a prompt (and a fine-tuned or prompt-tuned model) as a standalone ONNX detector."""
