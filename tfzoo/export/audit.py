"""Op audit of an export: which ops it needs, and whether a stock runtime has them.

TF Serving links TensorFlow's core ops and tensorflow-text's op library, nothing else.
The audit reads every op of a SavedModel (the graph and all its functions) and sorts
them by who registers them, asking a fresh Python process that imports only
TensorFlow, then tensorflow-text: the answer does not depend on what this process
has imported. `Xla*` ops are flagged too: the stock TF Serving runs without XLA.

A TFLite model is audited from its flatbuffer: every builtin op is fine, and so is a
custom op that tensorflow-text ships a TFLite kernel for; a Flex op (TensorFlow ops
run through the Flex delegate, which no runtime here has) or any other custom op is
flagged.

A function traced with `jit_compile=True` is flagged as well: it carries the
`_XlaMustCompile` attribute, not an `Xla*` op, and fails in a server without XLA.
The audit also names the signatures that reach XLA (through the functions they call),
so that an export whose only XLA is an opt-in signature such as GPT's `generate_xla`
can be told apart from one that needs XLA everywhere.
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


def _read_saved_model(path):
    from tensorflow.core.protobuf import saved_model_pb2

    pb_path = os.path.join(path, "saved_model.pb")
    if not os.path.isfile(pb_path):
        raise ValueError(f"No SavedModel at {path!r} (saved_model.pb is missing).")
    saved_model = saved_model_pb2.SavedModel()
    with open(pb_path, "rb") as file:
        saved_model.ParseFromString(file.read())
    return saved_model


def xla_compiled_functions(path):
    """The names of a SavedModel's functions that must be compiled with XLA (`jit_compile=True`)."""
    return sorted(
        function.signature.name
        for meta_graph in _read_saved_model(path).meta_graphs
        for function in meta_graph.graph_def.library.function
        if "_XlaMustCompile" in function.attr and function.attr["_XlaMustCompile"].b
    )


def _called_functions(node):
    """Names of the functions a node calls: `f` of a call, `body`/`cond` of a loop, branches..."""
    names = []
    for value in node.attr.values():
        if value.HasField("func"):
            names.append(value.func.name)
        names += [function.name for function in value.list.func]
    return names


def _reachable(starts, neighbours):
    """Every item reached from `starts` by following `neighbours(item)`, the starts included."""
    seen, pending = set(), list(starts)
    while pending:
        item = pending.pop()
        if item not in seen:
            seen.add(item)
            pending += neighbours(item)
    return seen


def xla_signatures(path):
    """The signatures of a SavedModel that reach an `Xla*` op or a function compiled with XLA."""
    needing_xla = set()
    for meta_graph in _read_saved_model(path).meta_graphs:
        library = {function.signature.name: function for function in meta_graph.graph_def.library.function}
        graph_nodes = {node.name: node for node in meta_graph.graph_def.node}

        def node_inputs(name):
            node = graph_nodes.get(name)
            return [source.lstrip("^").split(":")[0] for source in node.input] if node else []

        def functions_called(name):
            function = library.get(name)
            return [called for node in function.node_def for called in _called_functions(node)] if function else []

        def needs_xla(function):
            must_compile = "_XlaMustCompile" in function.attr and function.attr["_XlaMustCompile"].b
            return must_compile or any(node.op.startswith("Xla") for node in function.node_def)

        for signature_name, signature in meta_graph.signature_def.items():
            # Back from the signature's outputs through the graph, then into every function called.
            nodes = _reachable([info.name.split(":")[0] for info in signature.outputs.values()], node_inputs)
            first_calls = [called for name in nodes if name in graph_nodes
                           for called in _called_functions(graph_nodes[name])]
            functions = _reachable(first_calls, functions_called)
            if any(needs_xla(library[name]) for name in functions if name in library):
                needing_xla.add(signature_name)
    return sorted(needing_xla)


def saved_model_ops(path):
    """The set of op types a SavedModel's graph and functions use."""
    saved_model = _read_saved_model(path)
    ops, function_names = set(), set()
    for meta_graph in saved_model.meta_graphs:
        ops |= {node.op for node in meta_graph.graph_def.node}
        for function in meta_graph.graph_def.library.function:
            function_names.add(function.signature.name)
            ops |= {node.op for node in function.node_def}
    return ops - function_names  # calls to the SavedModel's own functions are not ops


def audit_saved_model(path):
    """Sorts the ops of a SavedModel into tensorflow core, tensorflow-text and unknown.

    Returns a dict with `core`, `text`, `unknown`, `xla` (ops), `xla_functions`
    (functions compiled with XLA) and `xla_signatures` (signatures reaching either),
    sorted lists, and `ok`: true when every op is core or tensorflow-text and nothing
    needs XLA.
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
        "xla_functions": xla_compiled_functions(path),
        "xla_signatures": xla_signatures(path),
    }
    report["ok"] = not report["unknown"] and not report["xla"] and not report["xla_functions"]
    return report


def _format_lines(header, text_ops, problems, verdict):
    """An audit in a few lines: what was found, each non-empty problem list, the verdict."""
    lines = [header, f"  tensorflow-text: {', '.join(text_ops) or '-'}"]
    lines += [f"  {label}: {', '.join(ops)}" for label, ops in problems if ops]
    return "\n".join(lines + [verdict])


def only_opt_in_xla(report):
    """True when the one thing between an export and a stock TF Serving is XLA in opt-in
    signatures (named `*_xla`, e.g. GPT's `generate_xla`): the other signatures serve as they are."""
    return (not report["unknown"] and bool(report["xla_signatures"])
            and all(name.endswith("_xla") for name in report["xla_signatures"]))


def format_report(path, report):
    """The SavedModel audit in a few lines, as `tfzoo export --check` prints it."""
    if report["ok"]:
        verdict = "  OK for TF Serving"
    elif only_opt_in_xla(report):
        verdict = (f"  OK for TF Serving but for {', '.join(report['xla_signatures'])}, which needs XLA "
                   "(tensorflow_model_server --xla_cpu_compilation_enabled=true, or tfzoo serve)")
    else:
        verdict = "  NOT servable by a stock TF Serving"
    return _format_lines(
        f"{path}: {len(report['core'])} TensorFlow core ops, {len(report['text'])} tensorflow-text ops",
        report["text"],
        [("NOT in TensorFlow core or tensorflow-text", report["unknown"]),
         ("need XLA (TF Serving disables it by default)", report["xla"]),
         ("functions compiled with XLA (jit_compile=True)", report["xla_functions"]),
         ("signatures that need XLA", report["xla_signatures"])],
        verdict,
    )


# Custom ops with TFLite kernels in tensorflow-text (`tensorflow_text.tflite_registrar`),
# by the names the converter writes into the model.
TENSORFLOW_TEXT_TFLITE_OPS = frozenset({
    "FastBertNormalize",
    "FastWordpieceTokenizeWithOffsets",
    "RaggedTensorToTensor",
    "SentenceFragmentsV2",
    "TFText>ByteSplitByOffsets",
    "TFText>ByteSplitWithOffsets",
    "TFText>FastSentencepieceDetokenize",
    "TFText>FastSentencepieceTokenize",
    "TFText>FastWordpieceDetokenize",
    "TFText>NgramsStringJoin",
    "TFText>RoundRobinGenerateMasks",
    "TFText>RoundRobinTrim",
    "TFText>Utf8Binarize",
    "TFText>WhitespaceTokenizeWithOffsetsV2",
})
# Ops whose tensorflow-text kernel crashes (segfault) in ai-edge-litert 2.3 and
# tf.lite 2.21: flagged although a kernel is registered.
TFLITE_KERNELS_THAT_CRASH = frozenset({"TFText>FastSentencepieceDetokenize"})


def tflite_ops(path):
    """How often each op occurs in a `.tflite` file, over all its subgraphs.

    Builtin ops are named as in TFLite's schema (`FULLY_CONNECTED`, `WHILE`), custom
    ops by their custom name (`TFText>FastSentencepieceTokenize`, `FlexStringJoin`).
    Returns `({name: count}, custom_names)`.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    if not os.path.isfile(path):
        raise ValueError(f"No TFLite model at {path!r}.")
    with open(path, "rb") as file:
        content = file.read()
    try:
        model = schema.Model.GetRootAs(content, 0)
        subgraph_count = model.SubgraphsLength()
    except Exception as error:  # a truncated or foreign file fails deep in flatbuffers
        raise ValueError(f"{path!r} is not a TFLite model: {error}") from None
    builtin_names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    codes, custom = [], set()
    for index in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(index)
        # Codes below 127 may sit in the deprecated field only (older writers).
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            name = code.CustomCode().decode("utf-8")
            custom.add(name)
        else:
            name = builtin_names.get(builtin, f"BUILTIN_{builtin}")
        codes.append(name)
    counts = {}
    for subgraph_index in range(subgraph_count):
        subgraph = model.Subgraphs(subgraph_index)
        for operator_index in range(subgraph.OperatorsLength()):
            name = codes[subgraph.Operators(operator_index).OpcodeIndex()]
            counts[name] = counts.get(name, 0) + 1
    return counts, custom


def audit_tflite(path):
    """Sorts a TFLite model's ops into builtin, tensorflow-text, Flex and unknown custom ops.

    Returns a dict with `builtin`, `text`, `flex`, `unknown` and `crashing` (sorted
    lists of op names), `counts` (`{name: count}`) and `ok`: true when a TFLite runtime
    with only tensorflow-text's kernels registered can run every op.
    """
    counts, custom = tflite_ops(path)
    report = {
        "builtin": sorted(name for name in counts if name not in custom),
        "text": sorted(name for name in custom if name in TENSORFLOW_TEXT_TFLITE_OPS),
        "flex": sorted(name for name in custom if name.startswith("Flex")),
        "unknown": sorted(
            name for name in custom if name not in TENSORFLOW_TEXT_TFLITE_OPS and not name.startswith("Flex")
        ),
        "crashing": sorted(name for name in custom if name in TFLITE_KERNELS_THAT_CRASH),
        "counts": counts,
    }
    report["ok"] = not report["flex"] and not report["unknown"] and not report["crashing"]
    return report


def format_tflite_report(path, report):
    """The TFLite audit in a few lines, as `tfzoo export --check` prints it."""
    return _format_lines(
        f"{path}: {len(report['builtin'])} TFLite builtin ops, {len(report['text'])} tensorflow-text custom ops",
        report["text"],
        [("Flex (need TensorFlow's Flex delegate)", report["flex"]),
         ("custom ops no known kernel provides", report["unknown"]),
         ("custom ops whose kernel crashes this runtime", report["crashing"])],
        "  OK for TFLite (builtins + tensorflow-text)" if report["ok"]
        else "  NOT runnable by TFLite with builtins + tensorflow-text",
    )


def check_export(path, allow_xla_signatures=False):
    """Audits what `tfzoo export --check PATH` names: a `.tflite` file, or an export folder.

    A folder's SavedModel is audited for TF Serving and each `.tflite` file in it for
    TFLite. Returns `(text, ok)`: the reports, and whether every one passed. With
    `allow_xla_signatures`, XLA confined to opt-in `*_xla` signatures passes.
    """
    if path.endswith(".tflite"):
        report = audit_tflite(path)
        return format_tflite_report(path, report), report["ok"]
    report = audit_saved_model(path)
    texts, ok = [format_report(path, report)], report["ok"] or (allow_xla_signatures and only_opt_in_xla(report))
    for name in sorted(os.listdir(path)):
        if name.endswith(".tflite"):
            tflite_report = audit_tflite(os.path.join(path, name))
            texts.append(format_tflite_report(os.path.join(path, name), tflite_report))
            ok = ok and tflite_report["ok"]
    return "\n".join(texts), ok
