"""TF Serving's folder layout: `ROOT/NAME/VERSION/saved_model.pb`."""

import os


def existing_versions(export_root, name):
    """The integer versions already exported under `export_root/name`, sorted."""
    folder = os.path.join(export_root, name)
    if not os.path.isdir(folder):
        return []
    return sorted(int(entry) for entry in os.listdir(folder) if entry.isdigit())


def version_folder(export_root, name, version=None, overwrite=False):
    """The folder to export into: `version`, or the next free version when None.

    Raises:
        ValueError: when `version` exists and `overwrite` is False (never clobber
            silently), or when `name` or `version` is malformed.
    """
    if not name or os.sep in name or name.startswith("."):
        raise ValueError(f"Model name must be a plain folder name. Received: name={name!r}")
    versions = existing_versions(export_root, name)
    if version is None:
        version = (versions[-1] + 1) if versions else 1
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"`version` must be a positive integer. Received: version={version!r}")
    path = os.path.join(export_root, name, str(version))
    if os.path.exists(path) and not overwrite:
        raise ValueError(
            f"Version {version} of {name!r} already exists at {path}. Choose another version or "
            "pass overwrite=True (--overwrite)."
        )
    return path
