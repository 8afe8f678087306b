from glipcli.modeling.language.bert import LanguageBackbone, TextFeatures, bert_config

__all__ = ["LanguageBackbone", "TextFeatures", "bert_config"]
