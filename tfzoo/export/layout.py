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


BASE_PATH_COMMENT = "# base_path: "


def write_models_config(export_root, base_path=None):
    """Writes `export_root/models.config` for TF Serving's `--model_config_file`.

    Lists every model folder under `export_root` that holds at least one version.
    `base_path` is where TF Serving will see `export_root` (e.g. `/models` inside its
    container). It is recorded in the file's first line, a comment, and later calls
    without it (every export rewrites the file) keep it; the first default is the
    absolute path of `export_root` on this machine.

    Returns the path of the file.

    Example:
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "gpt", "1"))
    >>> _ = write_models_config(root, base_path="/models")
    >>> print(open(write_models_config(root)).read())  # the base path is kept
    # base_path: /models
    model_config_list {
      config {
        name: "gpt"
        base_path: "/models/gpt"
        model_platform: "tensorflow"
      }
    }
    <BLANKLINE>
    """
    path = os.path.join(export_root, "models.config")
    if base_path is None and os.path.isfile(path):
        with open(path, encoding="utf-8") as file:
            first_line = file.readline().rstrip("\n")
        if first_line.startswith(BASE_PATH_COMMENT):
            base_path = first_line[len(BASE_PATH_COMMENT):]
    base_path = (base_path or os.path.abspath(export_root)).rstrip("/") or "/"
    names = sorted(
        name for name in os.listdir(export_root)
        if os.path.isdir(os.path.join(export_root, name)) and existing_versions(export_root, name)
    )
    entries = "".join(
        "  config {\n"
        f'    name: "{name}"\n'
        f'    base_path: "{os.path.join(base_path, name)}"\n'
        '    model_platform: "tensorflow"\n'
        "  }\n"
        for name in names
    )
    temporary = path + ".partial"
    with open(temporary, "w", encoding="utf-8") as file:
        file.write(f"{BASE_PATH_COMMENT}{base_path}\nmodel_config_list {{\n" + entries + "}\n")
    os.replace(temporary, path)
    return path
