"""Serving: a TF Serving-compatible REST server (`tfzoo serve`) over an export root."""

from tfzoo.serving.server import (
    DEFAULT_MAX_BODY_BYTES,
    ModelRegistry,
    RequestError,
    create_app,
    find_saved_models,
    serve,
)

__all__ = ["DEFAULT_MAX_BODY_BYTES", "ModelRegistry", "RequestError", "create_app", "find_saved_models", "serve"]
