"""Op audit of an export: which ops it needs, and whether a stock runtime has them.

TF Serving links TensorFlow's core ops and tensorflow-text's op library, nothing else.
The audit reads every op of a SavedModel (the graph and all its functions) and sorts
them by who registers them, asking a fresh Python process that imports only
TensorFlow, then tensorflow-text: the answer does not depend on what this process
has imported. `Xla*` ops are flagged too: the stock TF Serving runs without XLA.
"""

import json
import os
import subprocess
import sys

_CLASSIFY = r"""
import json, sys
from tensorflow.python.framework import op_def_registry
names = json.loads(sys.stdin.read())
core = [n for n in names if op_def_registry.get(n) is not None]
import tensorflow_text  # noqa: F401
text = [n for n in names if n not in core and op_def_registry.get(n) is not None]
print(json.dumps({"core": core, "text": text}))
"""


def saved_model_ops(path):
    """The set of op types a SavedModel's graph and functions use."""
    from tensorflow.core.protobuf import saved_model_pb2

    pb_path = os.path.join(path, "saved_model.pb")
    if not os.path.isfile(pb_path):
        raise ValueError(f"No SavedModel at {path!r} (saved_model.pb is missing).")
    saved_model = saved_model_pb2.SavedModel()
    with open(pb_path, "rb") as file:
        saved_model.ParseFromString(file.read())
    ops, function_names = set(), set()
    for meta_graph in saved_model.meta_graphs:
        ops |= {node.op for node in meta_graph.graph_def.node}
        for function in meta_graph.graph_def.library.function:
            function_names.add(function.signature.name)
            ops |= {node.op for node in function.node_def}
    return ops - function_names  # calls to the SavedModel's own functions are not ops


def audit_saved_model(path):
    """Sorts the ops of a SavedModel into tensorflow core, tensorflow-text and unknown.

    Returns a dict with `core`, `text`, `unknown` and `xla` (sorted lists) and `ok`:
    true when every op is core or tensorflow-text and none needs XLA.
    """
    ops = sorted(saved_model_ops(path))
    result = subprocess.run(
        [sys.executable, "-c", _CLASSIFY], input=json.dumps(ops), capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    if result.returncode != 0:
        raise RuntimeError(f"The op audit's TensorFlow process failed:\n{result.stderr[-2000:]}")
    classes = json.loads(result.stdout.strip().splitlines()[-1])
    known = set(classes["core"]) | set(classes["text"])
    report = {
        "core": sorted(classes["core"]),
        "text": sorted(classes["text"]),
        "unknown": sorted(op for op in ops if op not in known),
        "xla": sorted(op for op in ops if op.startswith("Xla")),
    }
    report["ok"] = not report["unknown"] and not report["xla"]
    return report


def format_report(path, report):
    lines = [
        f"{path}: {len(report['core'])} TensorFlow core ops, {len(report['text'])} tensorflow-text ops",
        f"  tensorflow-text: {', '.join(report['text']) or '-'}",
    ]
    if report["unknown"]:
        lines.append(f"  NOT in TensorFlow core or tensorflow-text: {', '.join(report['unknown'])}")
    if report["xla"]:
        lines.append(f"  need XLA (TF Serving disables it by default): {', '.join(report['xla'])}")
    lines.append("  OK for TF Serving" if report["ok"] else "  NOT servable by a stock TF Serving")
    return "\n".join(lines)
