"""Parallel (translation) corpora and the teacher-forcing `tf.data` pipeline.

Two real English-Spanish corpora reachable through package registries:

- `django_translation_pairs`: the short user-interface strings of Django's Spanish
  message catalogs (`pip install django`): about 1,100 pairs.
- `bible_verse_pairs`: the verses of the World English Bible and the Reina-Valera 1909,
  both public domain, aligned by reference: about 31,000 pairs. Needs the Debian
  packages `diatheke`, `sword-text-web` and `sword-text-sparv`.

`translation_dataset` turns `(source, target)` string pairs into the batches that
`Seq2SeqTransformer.fit` reads: the encoder gets `source + [end]`, the decoder
`[start] + target`, and the labels are `target + [end]`.
"""

import ast
import glob
import os
import random
import re
import shutil
import subprocess

import tensorflow as tf

from tfzoo.text.sentencepiece import END_ID, PAD_ID, START_ID  # the ids SentencePiece training reserves


# ------------------------------------------------------------------------- gettext catalogs
def _po_string(quoted):
    """The value of one quoted .po string: `"a \\"b\\""` -> `a "b"`."""
    return ast.literal_eval(quoted) if quoted else ""


def read_po_file(path):
    """The `(msgid, msgstr)` pairs of a gettext `.po` catalog.

    Kept: entries with one source string and a non-empty translation. Skipped: the
    header (empty msgid), plural entries (`msgid_plural`), entries flagged `fuzzy`
    (unreviewed), obsolete ones (`#~`) and untranslated ones. Format placeholders
    such as `%(name)s` are kept as they are.

    Example:
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "django.po")
    >>> _ = open(path, "w").write('msgid "Save"\\nmsgstr "Guardar"\\n\\nmsgid ""\\n"Log "\\n"in"\\nmsgstr "Entrar"\\n')
    >>> read_po_file(path)
    [('Save', 'Guardar'), ('Log in', 'Entrar')]
    """
    with open(path, encoding="utf-8") as file:
        text = file.read()
    pairs = []
    for block in re.split(r"\n\s*\n", text):  # entries are separated by blank lines
        fields, field, fuzzy = {}, None, False
        for line in block.splitlines():
            line = line.strip()
            if line.startswith("#,") and "fuzzy" in line:
                fuzzy = True
            if not line or line.startswith("#"):
                continue
            if line.startswith('"'):  # a continuation of the previous field
                if field is not None:
                    fields[field] += _po_string(line)
                continue
            field, _, rest = line.partition(" ")
            fields[field] = _po_string(rest)
        source, target = fields.get("msgid", ""), fields.get("msgstr", "")
        if source and target and "msgid_plural" not in fields and not fuzzy:
            pairs.append((source, target))
    return pairs


def django_translation_pairs(language="es"):
    """English -> `language` pairs from the message catalogs of the installed Django.

    Reads `django/conf/locale/<language>/LC_MESSAGES/django.po` and every
    `django/contrib/*/locale/<language>/LC_MESSAGES/django.po` (see `read_po_file`),
    in sorted order; a source string that appears twice is kept once.

    Raises:
        ValueError: when Django is not installed or has no catalog for `language`.
    """
    try:
        import django
    except ImportError:
        raise ValueError("Django's message catalogs need Django: pip install 'django>=5'") from None
    root = os.path.dirname(django.__file__)
    paths = sorted(glob.glob(os.path.join(root, "conf", "locale", language, "LC_MESSAGES", "django.po")))
    paths += sorted(glob.glob(os.path.join(root, "contrib", "*", "locale", language, "LC_MESSAGES", "django.po")))
    if not paths:
        raise ValueError(f"Django {django.__version__} has no message catalog for language={language!r}.")
    pairs, seen = [], set()
    for path in paths:
        for source, target in read_po_file(path):
            if source not in seen:
                seen.add(source)
                pairs.append((source, target))
    return pairs


# ------------------------------------------------------------------------- Bible verses
# One verse per line in diatheke's OSIS output: "[heading  ]Book C:V: text<milestone .../>".
_VERSE = re.compile(r"(?:^|\s)((?:[1-4] )?[A-Z][A-Za-z ]*? \d+:\d+): (.*)$")
_TAG = re.compile(r"<[^>]*>")


def parse_diatheke_verses(text):
    """`{reference: verse}` from `diatheke -f OSIS` output, markup removed.

    Words marked up back to back (`<w>God</w><w>created</w>`) get a space between them;
    section headings printed before a verse's reference are dropped.

    Example:
    >>> parse_diatheke_verses("Genesis 1:1: <w>In</w> <w>the</w> <w>beginning</w>, <w>God</w><w>created</w>.\\n")
    {'Genesis 1:1': 'In the beginning, God created.'}
    """
    verses = {}
    for line in text.splitlines():
        match = _VERSE.search(line)
        if not match:
            continue
        reference, body = match.groups()
        body = body.replace("</w><w", "</w> <w")
        body = " ".join(_TAG.sub("", body).split())
        if body:
            verses[reference] = body
    return verses


def _diatheke(module, key):
    executable = shutil.which("diatheke")
    if executable is None:
        raise ValueError(
            "diatheke is not installed: apt-get install diatheke sword-text-web sword-text-sparv"
        )
    result = subprocess.run([executable, "-b", module, "-f", "OSIS", "-k", key],
                            capture_output=True, text=True, timeout=600)
    verses = parse_diatheke_verses(result.stdout)
    if result.returncode != 0 or not verses:
        raise ValueError(
            f"diatheke returned no verses for module {module!r} (is its package installed? "
            f"sword-text-web gives engWEB2015eb, sword-text-sparv gives spaRV1909eb): {result.stderr.strip()[:200]}"
        )
    return verses


def bible_verse_pairs(english_module="engWEB2015eb", spanish_module="spaRV1909eb", key="Gen 1:1-Rev 22:21"):
    """English -> Spanish verse pairs, aligned by reference, in canonical order.

    Defaults: the World English Bible (2015, Debian `sword-text-web`) and the
    Reina-Valera 1909 (`sword-text-sparv`), both public domain, read with `diatheke`.
    Verses present in only one of them are dropped, and so are the few whose two sides
    differ in length more than threefold (a verse with appended front or back matter,
    such as the glossary after Revelation 22:21 in the WEB module).

    Raises:
        ValueError: naming what is missing when diatheke or a module is not installed.
    """
    english = _diatheke(english_module, key)
    spanish = _diatheke(spanish_module, key)
    pairs = []
    for reference, source in english.items():
        target = spanish.get(reference)
        if target and max(len(source), len(target)) <= 3 * min(len(source), len(target)):
            pairs.append((source, target))
    return pairs


def read_parallel_tsv(path):
    """`source<TAB>target` lines of a UTF-8 file as pairs; blank lines are skipped.

    Raises:
        ValueError: naming the file, or the first line without exactly one tab.
    """
    if not os.path.isfile(path):
        raise ValueError(f"Parallel corpus file not found: {path!r}")
    pairs = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
                raise ValueError(f"{path}:{number}: expected 'source<TAB>target', got {line[:80]!r}")
            pairs.append((parts[0].strip(), parts[1].strip()))
    if not pairs:
        raise ValueError(f"Parallel corpus file is empty: {path!r}")
    return pairs


def split_pairs(pairs, test_size, seed=0):
    """A reproducible `(train, test)` split: `test_size` pairs (an int, or a fraction) held out.

    Example:
    >>> train, test = split_pairs([(str(i), str(i)) for i in range(10)], test_size=0.2)
    >>> len(train), len(test)
    (8, 2)
    """
    pairs = list(pairs)
    if isinstance(test_size, float):
        if not 0.0 < test_size < 1.0:
            raise ValueError(f"A fractional `test_size` must be in (0, 1). Received: test_size={test_size}")
        test_size = max(1, round(len(pairs) * test_size))
    if not 0 < test_size < len(pairs):
        raise ValueError(f"`test_size`={test_size} leaves no pairs to train on (there are {len(pairs)}).")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    test = [pairs[index] for index in sorted(order[:test_size])]
    train = [pairs[index] for index in sorted(order[test_size:])]
    return train, test


# ------------------------------------------------------------------------- tf.data
def encode_pairs(sources, targets, source_tokenizer, target_tokenizer, max_sequence_length):
    """Tokenizes a batch of string pairs into the model's inputs and labels.

    Sources and targets longer than `max_sequence_length - 1` tokens are truncated,
    so that the end (or start) token fits.

    Returns:
        `(inputs, labels)`: `encoder_token_ids`, `encoder_padding_mask`,
        `decoder_token_ids`, `decoder_padding_mask` `(batch, length)` and labels
        `(batch, target_length)`, padded with 0 to the longest in the batch.
    """
    keep = max_sequence_length - 1
    source_ids = tf.cast(source_tokenizer(sources), tf.int32)[:, :keep]  # (batch, None) ragged
    target_ids = tf.cast(target_tokenizer(targets), tf.int32)[:, :keep]
    source_ids, target_ids = (ids.with_row_splits_dtype(tf.int64) for ids in (source_ids, target_ids))
    batch = tf.shape(sources)[0]

    def column(value):
        return tf.RaggedTensor.from_tensor(tf.fill([batch, 1], value))

    encoder_token_ids = tf.concat([source_ids, column(END_ID)], axis=1).to_tensor(PAD_ID)
    decoder_token_ids = tf.concat([column(START_ID), target_ids], axis=1).to_tensor(PAD_ID)
    labels = tf.concat([target_ids, column(END_ID)], axis=1).to_tensor(PAD_ID)
    inputs = {
        "encoder_token_ids": encoder_token_ids,
        "encoder_padding_mask": encoder_token_ids != PAD_ID,
        "decoder_token_ids": decoder_token_ids,
        "decoder_padding_mask": decoder_token_ids != PAD_ID,
    }
    return inputs, labels


def translation_dataset(pairs, source_tokenizer, target_tokenizer=None, batch_size=32, max_sequence_length=128,
                        shuffle=True, seed=0, drop_remainder=False):
    """`(inputs, labels)` batches for teacher-forced training of a `Seq2SeqTransformer`.

    Args:
        pairs: `(source, target)` string pairs.
        source_tokenizer: an in-graph tokenizer (e.g. `tfzoo.text.SentencePieceTokenizer`).
        target_tokenizer: the target's; None uses the source tokenizer (shared vocabulary).
        batch_size: pairs per batch; each batch is padded to its longest sentence.
        max_sequence_length: the model's; longer sentences are truncated.
        shuffle, seed: shuffle the pairs (again at every epoch).

    Raises:
        ValueError: when `pairs` is empty or holds an empty sentence.
    """
    pairs = list(pairs)
    if not pairs:
        raise ValueError("No sentence pairs were given.")
    for index, (source, target) in enumerate(pairs):
        if not source.strip() or not target.strip():
            raise ValueError(f"Pair {index} has an empty sentence: {(source, target)!r}")
    target_tokenizer = target_tokenizer or source_tokenizer
    sources = tf.constant([source for source, _ in pairs])
    targets = tf.constant([target for _, target in pairs])
    dataset = tf.data.Dataset.from_tensor_slices((sources, targets))
    if shuffle:
        dataset = dataset.shuffle(len(pairs), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder and len(pairs) >= batch_size)
    dataset = dataset.map(
        lambda s, t: encode_pairs(s, t, source_tokenizer, target_tokenizer, max_sequence_length),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return dataset.prefetch(tf.data.AUTOTUNE)
