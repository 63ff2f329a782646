"""One training process for tests/test_distribute.py: a tiny GPT, plain `model.fit`.

    python tests/distributed_worker.py --strategy multi_worker --out DIR   # TF_CONFIG set
    python tests/distributed_worker.py --strategy mirrored --devices 2 --out DIR
    python tests/distributed_worker.py --strategy none --out DIR           # the reference

Writes DIR/<name>.npz (the final weights) and DIR/<name>.json (history, checksums,
replica count), <name> being `--name`, else `worker<task index>` under TF_CONFIG.
Every run trains on the same data at the same *global* batch size, from the same
initial weights, so any two should agree.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GLOBAL_BATCH = 8
SEQUENCE_LENGTH = 32


def parse_args(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", default="none", help="a get_strategy name, or 'none' (no strategy scope)")
    parser.add_argument("--devices", type=int, default=None)
    parser.add_argument("--out", required=True)
    parser.add_argument("--name", default=None)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--windows", type=int, default=32, help="training windows (4 steps per epoch at 32)")
    parser.add_argument("--without-fix", choices=("build", "reduce", "all"), default=None,
                        help="undo (part of) enable_multi_worker_fit, to show keras#20585 still fails without it")
    return parser.parse_args(argv)


def undo_fix(part):
    from tfzoo.training import distribute

    if part == "all":
        distribute.disable_multi_worker_fit()
        return
    module = distribute._ORIGINALS["module"]
    if part == "build":
        module.TensorFlowTrainer._maybe_symbolic_build = distribute._ORIGINALS["build"]
    else:
        module.reduce_per_replica = distribute._ORIGINALS["reduce"]


def windows(count, offset):
    import numpy as np

    window = SEQUENCE_LENGTH + 1
    stream = np.tile(np.arange(5, 45), (count * window) // 40 + 2)[offset:]  # a learnable pattern
    return stream[: count * window]


def main(argv=None):
    args = parse_args(argv)
    # The strategy comes first: it may configure the runtime (TF_CONFIG, a CPU split).
    from tfzoo.training import distribute

    strategy = None
    if args.strategy != "none":
        strategy = distribute.get_strategy(args.strategy, devices=args.devices)
    if args.without_fix:
        undo_fix(args.without_fix)

    import contextlib

    import keras
    import numpy as np

    from tfzoo import GPT
    from tfzoo.data import language_model_dataset

    name = args.name
    if name is None:
        name = f"worker{json.loads(os.environ['TF_CONFIG'])['task']['index']}" if "TF_CONFIG" in os.environ else "run"
    with strategy.scope() if strategy else contextlib.nullcontext():
        keras.utils.set_random_seed(0)
        model = GPT.from_preset("gpt_test")
        model.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=[])  # no keras-hub import
        model.build()
    initial = float(sum(np.sum(w.astype("float64")) for w in model.get_weights()))

    train = language_model_dataset(windows(args.windows, 0), SEQUENCE_LENGTH, GLOBAL_BATCH, shuffle=False)
    validation = language_model_dataset(windows(16, 7), SEQUENCE_LENGTH, GLOBAL_BATCH, shuffle=False)
    history = model.fit(train, validation_data=validation, epochs=args.epochs, verbose=2)

    weights = model.get_weights()
    os.makedirs(args.out, exist_ok=True)
    np.savez(os.path.join(args.out, f"{name}.npz"), *weights)
    result = {
        "history": history.history,
        "initial_checksum": initial,
        "checksum": float(sum(np.sum(w.astype("float64")) for w in weights)),
        "replicas": strategy.num_replicas_in_sync if strategy else 1,
        "strategy": distribute.describe_strategy(strategy) if strategy else "none",
    }
    with open(os.path.join(args.out, f"{name}.json"), "w") as file:
        json.dump(result, file)
    print(f"{name}: done, {result['strategy']}, loss {history.history['loss']}", flush=True)


if __name__ == "__main__":
    main()
