from glipcli.modeling.language.bert import LanguageBackbone, TextFeatures

__all__ = ["LanguageBackbone", "TextFeatures"]
