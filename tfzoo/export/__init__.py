"""Export: SavedModel in TF Serving's layout, TFLite beside it, and an op audit of what an export needs."""

from tfzoo.export.audit import (
    audit_saved_model,
    audit_tflite,
    check_export,
    format_report,
    format_tflite_report,
    saved_model_ops,
    tflite_ops,
)
from tfzoo.export.layout import existing_versions, version_folder, write_models_config
from tfzoo.export.saved_model import (
    ClassifierServingModule,
    EncoderServingModule,
    GPTServingModule,
    Seq2SeqServingModule,
    export_gpt,
    export_saved_model,
    serving_module,
)
from tfzoo.export.tflite import convert_to_tflite, export_tflite, tflite_interpreter

__all__ = [
    "audit_tflite",
    "check_export",
    "convert_to_tflite",
    "export_tflite",
    "format_tflite_report",
    "tflite_interpreter",
    "tflite_ops",
    "ClassifierServingModule",
    "EncoderServingModule",
    "GPTServingModule",
    "Seq2SeqServingModule",
    "audit_saved_model",
    "existing_versions",
    "export_gpt",
    "export_saved_model",
    "format_report",
    "saved_model_ops",
    "serving_module",
    "version_folder",
    "write_models_config",
]
