"""A TF Serving-compatible REST server for the SavedModels under an export root.

    tfzoo serve savedmodels/ --port 8501
    curl -d '{"signature_name": "generate", "inputs": {"prompts": ["def "], "max_new_tokens": 20}}' \\
        http://127.0.0.1:8501/v1/models/gpt:predict

It loads every version of every model under `ROOT/NAME/VERSION/saved_model.pb` with
`tf.saved_model.load` (tensorflow-text imported first, for the tokenizer ops) and speaks
TF Serving's REST API (tensorflow/serving `g3doc/api_rest.md`):

- `POST /v1/models/NAME[/versions/N]:predict`, row format (`"instances"`, answered with
  `"predictions"`) or columnar (`"inputs"`, answered with `"outputs"`); binary strings as
  `{"b64": ...}`. Without a version, the newest loaded one answers.
- `GET /v1/models/NAME[/versions/N]`: version status; `.../metadata`: the signature defs.
- Errors are `{"error": "..."}` with a 4xx status when the request is at fault (bad JSON,
  unknown model, version or signature, missing or extra input, wrong dtype or shape, a
  body over the limit, a value the graph rejects such as an empty prompt).

Row format and rank-0 inputs (e.g. `max_new_tokens`): TF Serving stacks every named
input across the instances, so a scalar input becomes a `[batch]` tensor that a
signature expecting a scalar cannot take. Here a rank-0 input in row format must have
the same value in every instance and is fed once, as a scalar; instances that disagree
get a 400. Columnar format takes scalars as they are.

The model registry is built once at start-up and only read afterwards, so requests can
run concurrently (the WSGI server is waitress, with a thread pool); TensorFlow's
function calls are thread-safe.
"""

import base64
import binascii
import json
import logging
import os
import re
import sys
import time
import traceback

import numpy as np

DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB
DEFAULT_MAX_BATCH_SIZE = 64  # rows (prompts, texts) per request
LOGGER = logging.getLogger("tfzoo.serving")


class RequestError(Exception):
    """A request the server refuses: answered with `status` and `{"error": message}`."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.message = message
        self.status = status


# ------------------------------------------------------------------ the models


class Servable:
    """One loaded version of one model: its signatures, input specs and metadata."""

    def __init__(self, name, version, path):
        self.name, self.version, self.path = name, version, path
        self.signatures, self.inputs, self.outputs = {}, {}, {}
        self.signature_defs = {}
        self.error = None

    def load(self):
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  registers the tokenizer ops the exports use

        try:
            loaded = tf.saved_model.load(self.path)
            self.signature_defs = _signature_defs(self.path)
        except Exception as error:  # a broken export must not stop the others from serving
            self.error = f"{type(error).__name__}: {error}"
            LOGGER.error("could not load %s version %s from %s: %s", self.name, self.version, self.path, self.error)
            return self
        self._loaded = loaded  # keeps the variables the signatures read alive
        for key, function in loaded.signatures.items():
            _, kwargs = function.structured_input_signature
            self.signatures[key] = function
            self.inputs[key] = dict(sorted(kwargs.items()))
            self.outputs[key] = dict(sorted(function.structured_outputs.items()))
        return self

    @property
    def available(self):
        return self.error is None

    def status(self):
        if self.available:
            return {"version": str(self.version), "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""}}
        return {"version": str(self.version), "state": "END",
                "status": {"error_code": "UNKNOWN", "error_message": self.error}}


def _signature_defs(path):
    """The SavedModel's signature defs as TF Serving's metadata shows them (proto as JSON)."""
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as file:
        saved_model.ParseFromString(file.read())
    signature_defs = {}
    for key, signature in saved_model.meta_graphs[0].signature_def.items():
        try:
            as_dict = json_format.MessageToDict(
                signature, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        except TypeError:  # protobuf < 5 names the option differently
            as_dict = json_format.MessageToDict(
                signature, preserving_proto_field_name=True, including_default_value_fields=True)
        signature_defs[key] = as_dict
    return signature_defs


def find_saved_models(root):
    """`{name: {version: path}}` for every `ROOT/NAME/VERSION/saved_model.pb`."""
    if not os.path.isdir(root):
        raise ValueError(f"No export root at {root!r}: expected a folder of NAME/VERSION/saved_model.pb.")
    found = {}
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        if name.startswith(".") or not os.path.isdir(folder):
            continue
        for version in os.listdir(folder):
            path = os.path.join(folder, version)
            if version.isdigit() and os.path.isfile(os.path.join(path, "saved_model.pb")):
                found.setdefault(name, {})[int(version)] = path
    if not found:
        raise ValueError(f"No SavedModel under {root!r}: expected {root}/NAME/VERSION/saved_model.pb.")
    return found


class ModelRegistry:
    """Every servable under an export root. Built once; read-only while serving."""

    def __init__(self, models):
        self.models = models  # {name: {version: Servable}}

    @classmethod
    def load(cls, root):
        models = {}
        for name, versions in find_saved_models(root).items():
            for version, path in sorted(versions.items()):
                started = time.perf_counter()
                servable = Servable(name, version, path).load()
                if servable.available:
                    LOGGER.info("loaded %s version %d (%s) in %.1f s: signatures %s", name, version, path,
                                time.perf_counter() - started, ", ".join(sorted(servable.signatures)))
                models.setdefault(name, {})[version] = servable
        return cls(models)

    def versions(self, name):
        if name not in self.models:
            raise RequestError(f"Servable not found for request: Latest({name})", 404)
        return self.models[name]

    def get(self, name, version=None):
        """The servable for `name` at `version`, or its newest available version."""
        versions = self.versions(name)
        if version is None:
            available = [v for v, servable in versions.items() if servable.available]
            if not available:
                raise RequestError(f"Servable not found for request: Latest({name})", 404)
            return versions[max(available)]
        servable = versions.get(version)
        if servable is None or not servable.available:
            raise RequestError(f"Servable not found for request: Specific({name}, {version})", 404)
        return servable


# ------------------------------------------------------------------ JSON <-> tensors


def _dtype_name(dtype):
    return "DT_" + dtype.name.upper()


def _shape_text(shape):
    if shape.rank is None:
        return "unknown rank"
    return "[" + ", ".join("-1" if d is None else str(d) for d in shape.as_list()) + "]"


def _json_type(value):
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if value is None:
        return "null"
    return type(value).__name__


def _is_b64(value):
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _leaf(value, dtype, name):
    """One JSON scalar as a Python value of `dtype`, or a RequestError."""
    if dtype.name == "string":
        if isinstance(value, str):
            return value.encode("utf-8")
        if _is_b64(value) and isinstance(value["b64"], str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (binascii.Error, ValueError):
                raise RequestError(f"Input '{name}': invalid base64 in {{\"b64\": ...}}.") from None
        raise RequestError(f"Input '{name}' expects strings (DT_STRING); got {_json_type(value)}.")
    if dtype.is_bool:
        if isinstance(value, bool):
            return value
    elif dtype.is_integer:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if not dtype.min <= value <= dtype.max:
                raise RequestError(f"Input '{name}': {value} is out of range for {_dtype_name(dtype)}.")
            return value
    elif dtype.is_floating:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    else:
        raise RequestError(f"Input '{name}' has dtype {_dtype_name(dtype)}, which this server cannot parse.")
    raise RequestError(f"Input '{name}' expects {_dtype_name(dtype)}; got {_json_type(value)}.")


def _flatten(value, dtype, name, flat):
    """Appends `value`'s leaves to `flat` and returns its shape; nested lists must be rectangular."""
    if isinstance(value, list):
        shapes = {_flatten(item, dtype, name, flat) for item in value}
        if len(shapes) > 1:
            raise RequestError(f"Input '{name}': nested lists of different lengths (ragged) are not a tensor.")
        return (len(value),) + (shapes.pop() if shapes else ())
    flat.append(_leaf(value, dtype, name))
    return ()


def to_tensor(value, spec, name):
    """A JSON value as a tensor matching `spec` (a tf.TensorSpec), or a RequestError."""
    import tensorflow as tf

    flat = []
    shape = _flatten(value, spec.dtype, name, flat)
    if not spec.shape.is_compatible_with(shape):
        raise RequestError(
            f"Input '{name}' expects shape {_shape_text(spec.shape)} ({_dtype_name(spec.dtype)}); "
            f"got shape [{', '.join(map(str, shape))}]."
        )
    array = np.array(flat, dtype=object if spec.dtype == tf.string else spec.dtype.as_numpy_dtype)
    return tf.constant(array.reshape(shape), dtype=spec.dtype)


def _text_or_b64(value):
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(value).decode("ascii")}


def to_json(array):
    """A NumPy array (or scalar) as JSON values; byte strings as UTF-8 text, else {"b64": ...}."""
    if array.dtype == object or array.dtype.kind == "S":
        def convert(item):
            return [convert(x) for x in item] if isinstance(item, list) else _text_or_b64(item)
        return convert(array.tolist())
    return array.tolist()


def parse_inputs(body, specs):
    """`(tensors, row_format)` from a predict body, given the signature's input specs."""
    has_instances, has_inputs = "instances" in body, "inputs" in body
    if has_instances == has_inputs:
        raise RequestError("Missing 'inputs' or 'instances' key" if not has_instances
                           else "Request body may have 'inputs' or 'instances', not both.")
    names = list(specs)
    if has_inputs:
        inputs = body["inputs"]
        named = isinstance(inputs, dict) and not _is_b64(inputs)
        if not named:
            if len(names) != 1:
                raise RequestError(f"'inputs' must be an object keyed by input name: this signature takes "
                                   f"{', '.join(names)}.")
            inputs = {names[0]: inputs}
        _check_names(inputs, names, "'inputs'")
        return {name: to_tensor(inputs[name], specs[name], name) for name in names}, False

    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise RequestError("'instances' must be a non-empty list.")
    rows = []
    for index, instance in enumerate(instances):
        if isinstance(instance, dict) and not _is_b64(instance):
            _check_names(instance, names, f"instance {index}")
            rows.append(instance)
        elif len(names) == 1:
            rows.append({names[0]: instance})
        else:
            raise RequestError(f"Instance {index} must be an object keyed by input name: this signature "
                               f"takes {', '.join(names)}.")
    tensors = {}
    for name in names:
        spec = specs[name]
        if spec.shape.rank == 0:
            values = [row[name] for row in rows]
            if any(value != values[0] for value in values[1:]):
                raise RequestError(f"Input '{name}' is a scalar: in row format every instance must give it "
                                   "the same value (or use the columnar 'inputs' format).")
            tensors[name] = to_tensor(values[0], spec, name)
        else:
            tensors[name] = to_tensor([row[name] for row in rows], spec, name)
    return tensors, True


def _check_names(given, names, where):
    missing = [name for name in names if name not in given]
    extra = sorted(name for name in given if name not in names)
    if missing:
        raise RequestError(f"{where} lacks input(s) {', '.join(missing)}: this signature takes {', '.join(names)}.")
    if extra:
        raise RequestError(f"{where} has unknown input(s) {', '.join(extra)}: this signature takes "
                           f"{', '.join(names)}.")


def format_outputs(outputs, row_format):
    """Signature outputs (`{name: ndarray}`) as TF Serving's `predictions` or `outputs`."""
    names = sorted(outputs)
    if not row_format:
        if len(names) == 1:
            return {"outputs": to_json(outputs[names[0]])}
        return {"outputs": {name: to_json(outputs[name]) for name in names}}
    sizes = {name: (outputs[name].shape[0] if outputs[name].ndim else None) for name in names}
    if None in sizes.values() or len(set(sizes.values())) > 1:
        raise RequestError(f"Outputs have inconsistent batch sizes {sizes} for the row format: use the columnar "
                           "'inputs' format for this signature.")
    columns = {name: to_json(outputs[name]) for name in names}
    if len(names) == 1:
        return {"predictions": columns[names[0]]}
    return {"predictions": [{name: columns[name][i] for name in names} for i in range(sizes[names[0]])]}


def _tf_error_text(error):
    """The line of a TF runtime error that says what was wrong, without the graph's source trace."""
    lines = [line for line in (error.message or str(error)).splitlines()
             if line.strip() and not line[0].isspace()
             and not line.startswith(("Graph execution error", "Detected at node"))]
    # Assert messages come through with their quotes escaped (model\\'s).
    return lines[-1].replace("\\'", "'") if lines else "The model rejected the request's values."


def check_batch_size(tensors, max_batch_size):
    """A 400 when an input holds more rows than the server takes in one request.

    A small body can still ask for a lot of work (a thousand one-word prompts, each
    generating): the batch is bounded as well as the bytes.
    """
    for name, tensor in tensors.items():
        if tensor.shape.rank and tensor.shape[0] > max_batch_size:
            raise RequestError(f"Input '{name}' has a batch of {tensor.shape[0]} rows: this server takes at most "
                               f"{max_batch_size} per request (tfzoo serve --max-batch-size).")


def predict(servable, body, max_batch_size=DEFAULT_MAX_BATCH_SIZE):
    """Runs a predict request body on `servable`; returns the JSON response."""
    import tensorflow as tf

    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object.")
    signature_name = body.get("signature_name") or "serving_default"
    if not isinstance(signature_name, str) or signature_name not in servable.signatures:
        raise RequestError(f'Serving signature name: "{signature_name}" not found in signature def. '
                           f"Available: {', '.join(sorted(servable.signatures))}.")
    tensors, row_format = parse_inputs(body, servable.inputs[signature_name])
    check_batch_size(tensors, max_batch_size)
    try:
        outputs = servable.signatures[signature_name](**tensors)
    except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as error:
        # Assertions in the graph (an empty prompt, a prompt longer than the model's
        # context) and bad values raise these: the request's fault.
        raise RequestError(_tf_error_text(error)) from None
    except (TypeError, ValueError) as error:  # a mismatch the checks above did not catch
        raise RequestError(str(error)) from None
    return format_outputs({name: value.numpy() for name, value in outputs.items()}, row_format)


def metadata(servable):
    """TF Serving's `GET .../metadata` answer."""
    return {
        "model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
        "metadata": {"signature_def": {"signature_def": servable.signature_defs}},
    }


# ------------------------------------------------------------------ HTTP

ROUTE = re.compile(
    r"^(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<action>/metadata|:[A-Za-z]+)?$"
)


def _parse_version(text):
    if text is None:
        return None
    if not text.isdigit():
        raise RequestError(f"Version must be a positive integer. Received: {text!r}", 400)
    return int(text)


def create_app(registry, max_body_bytes=DEFAULT_MAX_BODY_BYTES, max_batch_size=DEFAULT_MAX_BATCH_SIZE):
    """The Flask app serving `registry` (a ModelRegistry)."""
    from flask import Flask, Response, request
    from werkzeug.exceptions import HTTPException

    app = Flask("tfzoo.serving")
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes

    def reply(payload, status=200):
        return Response(json.dumps(payload, ensure_ascii=False), status=status, mimetype="application/json")

    @app.errorhandler(RequestError)
    def request_error(error):
        return reply({"error": error.message}, error.status)

    @app.errorhandler(HTTPException)
    def http_error(error):
        message = error.description or error.name
        if error.code == 413:
            message = f"Request body larger than the server's limit of {max_body_bytes} bytes."
        return reply({"error": message}, error.code)

    @app.errorhandler(Exception)
    def internal_error(error):
        LOGGER.error("internal error: %s", traceback.format_exc())
        return reply({"error": f"Internal error: {type(error).__name__}: {error}"}, 500)

    @app.route("/v1/models/<path:rest>", methods=["GET", "POST"])
    def models(rest):
        match = ROUTE.match(rest)
        if match is None:
            raise RequestError(f"Malformed request: {request.method} {request.path}", 404)
        name, action = match["name"], match["action"]
        if match["label"] is not None:
            raise RequestError("Version labels are not supported by this server: use /versions/N.", 404)
        version = _parse_version(match["version"])
        if action in (None, "/metadata"):
            if request.method != "GET":
                raise RequestError(f"Use GET for {request.path}.", 405)
            if action is None:
                if version is None:
                    servables = sorted(registry.versions(name).values(), key=lambda s: -s.version)
                else:
                    servable = registry.versions(name).get(version)
                    if servable is None:
                        raise RequestError(f"Servable not found for request: Specific({name}, {version})", 404)
                    servables = [servable]
                return reply({"model_version_status": [servable.status() for servable in servables]})
            return reply(metadata(registry.get(name, version)))
        if action != ":predict":
            raise RequestError(f"Unsupported method {action!r}: this server implements :predict only.", 400)
        if request.method != "POST":
            raise RequestError(f"Use POST for {request.path}.", 405)
        servable = registry.get(name, version)
        data = request.get_data(cache=False)  # raises 413 past MAX_CONTENT_LENGTH
        try:
            body = json.loads(data)
        except (UnicodeDecodeError, ValueError) as error:
            raise RequestError(f"JSON Parse error: {error}") from None
        return reply(predict(servable, body, max_batch_size))

    @app.route("/", defaults={"rest": ""}, methods=["GET", "POST"])
    @app.route("/<path:rest>", methods=["GET", "POST"])
    def not_found(rest):
        raise RequestError(f"Malformed request: {request.method} {request.path}", 404)

    return app


def serve(root, host="127.0.0.1", port=8501, threads=8, max_body_bytes=DEFAULT_MAX_BODY_BYTES,
          max_batch_size=DEFAULT_MAX_BATCH_SIZE):
    """Loads every model under `root` and serves them until interrupted (port 0: any free port)."""
    import waitress

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    registry = ModelRegistry.load(root)
    if not any(servable.available for versions in registry.models.values() for servable in versions.values()):
        raise RuntimeError(f"No SavedModel under {root!r} could be loaded.")
    app = create_app(registry, max_body_bytes, max_batch_size)
    # Waitress buffers a body before the app sees it. Its own cap answers in plain text,
    # so it sits above the app's: the app's limit answers a too-large body with JSON.
    server = waitress.create_server(app, host=host, port=port, threads=threads,
                                    max_request_body_size=2 * max_body_bytes + (1 << 16), ident="tfzoo")
    names = ", ".join(f"{name} (versions {', '.join(map(str, sorted(versions)))})"
                      for name, versions in registry.models.items())
    print(f"tfzoo serve: {names}", flush=True)
    print(f"tfzoo serve: listening on http://{host}:{server.effective_port}", flush=True)
    sys.stdout.flush()
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0
