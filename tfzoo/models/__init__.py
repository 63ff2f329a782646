"""Model families, one per file."""

from tfzoo.models.bert import BertClassifier, BertEncoder, BertMaskedLM, BertSpanQA, BertTokenClassifier
from tfzoo.models.gpt import GPT
from tfzoo.models.presets import BERT_PRESETS, GPT_PRESETS

__all__ = [
    "BERT_PRESETS",
    "BertClassifier",
    "BertEncoder",
    "BertMaskedLM",
    "BertSpanQA",
    "BertTokenClassifier",
    "GPT",
    "GPT_PRESETS",
]
