"""Export: SavedModel in TF Serving's layout, and an op audit of what an export needs."""

from tfzoo.export.audit import audit_saved_model, format_report, saved_model_ops
from tfzoo.export.layout import existing_versions, version_folder, write_models_config
from tfzoo.export.saved_model import (
    ClassifierServingModule,
    EncoderServingModule,
    GPTServingModule,
    export_gpt,
    export_saved_model,
    serving_module,
)

__all__ = [
    "ClassifierServingModule",
    "EncoderServingModule",
    "GPTServingModule",
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
