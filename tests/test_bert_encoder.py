"""Our BERT encoder is `transformers.BertModel` (no pooler): same parameter names, same outputs."""

from __future__ import annotations

import pytest
import torch

from glipcli.config import LanguageConfig
from glipcli.modeling.language.bert_layers import BertEncoder


@pytest.mark.parametrize("padded", [False, True])
def test_bert_encoder_equals_transformers_bert(padded):
    from transformers import BertConfig, BertModel

    cfg = LanguageConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, vocab_size=500)
    torch.manual_seed(0)
    ours = BertEncoder(cfg).eval()
    reference = BertModel(BertConfig(vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=cfg.max_position_embeddings,
                                     type_vocab_size=cfg.type_vocab_size, layer_norm_eps=cfg.layer_norm_eps),
                          add_pooling_layer=False).eval()
    state = ours.state_dict()
    own_keys = set(state)
    ref_keys = {k for k in reference.state_dict() if not k.endswith(("position_ids", "token_type_ids"))}
    assert own_keys == ref_keys  # official and hub checkpoints map one to one
    for value in state.values():  # not an initialisation both happen to share
        value.add_(torch.randn_like(value) * 0.1)
    reference.load_state_dict(state, strict=False)
    ids = torch.randint(1, 500, (2, 9))
    mask = torch.ones_like(ids)
    if padded:
        mask[1, 6:] = 0
        ids[1, 6:] = 0
    with torch.inference_mode():
        got = ours(ids, mask)
        want = reference(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], rtol=1e-5, atol=1e-5)
