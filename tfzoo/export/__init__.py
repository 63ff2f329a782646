"""Export: SavedModel in TF Serving's layout, and an op audit of what an export needs."""

from tfzoo.export.audit import audit_saved_model, format_report, saved_model_ops
from tfzoo.export.layout import existing_versions, version_folder
from tfzoo.export.saved_model import GPTServingModule, export_gpt

__all__ = ["GPTServingModule", "audit_saved_model", "format_report", "saved_model_ops", "existing_versions", "export_gpt", "version_folder"]
