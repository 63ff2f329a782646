"""Named model shapes. Each preset is the keyword arguments of a model's constructor."""

GPT_PRESETS = {
    # Small enough for unit tests: builds and trains in seconds.
    "gpt_test": dict(
        vocabulary_size=512, num_layers=2, num_heads=2, hidden_dim=64, intermediate_dim=128,
        max_sequence_length=128,
    ),
    # The design brief's "tiny GPT": the shapes the benchmarks compare.
    "gpt_tiny": dict(
        vocabulary_size=8192, num_layers=4, num_heads=4, hidden_dim=256, intermediate_dim=1024,
        max_sequence_length=256,
    ),
    # GPT-2 small (124M parameters) with GPT-2's own vocabulary size.
    "gpt2_small": dict(
        vocabulary_size=50257, num_layers=12, num_heads=12, hidden_dim=768, intermediate_dim=3072,
        max_sequence_length=1024,
    ),
}


def preset_arguments(presets, name, family):
    """The constructor arguments of preset `name`, or a ValueError listing the known ones."""
    if name not in presets:
        raise ValueError(f"Unknown {family} preset {name!r}. Known presets: {sorted(presets)}")
    return dict(presets[name])

BERT_PRESETS = {
    # Small enough for unit tests.
    "bert_test": dict(
        vocabulary_size=512, num_layers=2, num_heads=2, hidden_dim=64, intermediate_dim=128,
        max_sequence_length=128,
    ),
    # The design brief's "tiny BERT": the shapes the benchmarks compare.
    "bert_tiny": dict(
        vocabulary_size=8192, num_layers=4, num_heads=4, hidden_dim=256, intermediate_dim=1024,
        max_sequence_length=512,
    ),
    # all-MiniLM-L6-v2's shapes (a BERT with 6 layers, 384 wide).
    "minilm_l6": dict(
        vocabulary_size=30522, num_layers=6, num_heads=12, hidden_dim=384, intermediate_dim=1536,
        max_sequence_length=512,
    ),
    # BERT-base (110M parameters).
    "bert_base": dict(
        vocabulary_size=30522, num_layers=12, num_heads=12, hidden_dim=768, intermediate_dim=3072,
        max_sequence_length=512,
    ),
}
