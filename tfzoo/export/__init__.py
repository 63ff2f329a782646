"""Export: SavedModel in TF Serving's layout."""

from tfzoo.export.layout import existing_versions, version_folder
from tfzoo.export.saved_model import GPTServingModule, export_gpt

__all__ = ["GPTServingModule", "existing_versions", "export_gpt", "version_folder"]
