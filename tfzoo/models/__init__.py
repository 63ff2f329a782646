"""Model families, one per file."""

from tfzoo.models.bert import BertClassifier, BertEncoder, BertMaskedLM, BertSpanQA, BertTokenClassifier
from tfzoo.models.gpt import GPT
from tfzoo.models.presets import BERT_PRESETS, GPT_PRESETS
from tfzoo.models.seq2seq import SEQ2SEQ_PRESETS, LabelSmoothedCrossEntropy, MaskedAccuracy, Seq2SeqTransformer

__all__ = [
    "BERT_PRESETS",
    "BertClassifier",
    "BertEncoder",
    "BertMaskedLM",
    "BertSpanQA",
    "BertTokenClassifier",
    "GPT",
    "GPT_PRESETS",
    "LabelSmoothedCrossEntropy",
    "MaskedAccuracy",
    "SEQ2SEQ_PRESETS",
    "Seq2SeqTransformer",
]
