"""Labelled movie-review snippets for sentiment classification, read from VADER's sdist.

VADER's source distribution (`vadersentiment==3.3.2` on PyPI) carries the data set of
its paper (Hutto & Gilbert, ICWSM 2014) as a tarball inside the tarball. Its
`movieReviewSnippets_GroundTruth.txt` holds 10,605 sentences from Rotten Tomatoes
reviews (the sentences of Pang & Lee's movie reviews), each with the mean sentiment
rating of about 20 human raters on a -4 (extremely negative) to +4 scale.
"""

import io
import os
import tarfile
from pathlib import Path

import numpy as np

ARCHIVE_NAME = "vaderSentiment-3.3.2.tar.gz"
DATA_DIR_VARIABLE = "TFZOO_DATA_DIR"
_INNER_ARCHIVE = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
_SNIPPETS_FILE = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
_REPO_ROOT = Path(__file__).resolve().parents[2]
_DOWNLOAD_COMMAND = "pip download --no-deps --no-binary :all: vadersentiment==3.3.2 -d .data"


def _default_archive():
    folder = os.environ.get(DATA_DIR_VARIABLE)
    return Path(folder) / ARCHIVE_NAME if folder else _REPO_ROOT / ".data" / ARCHIVE_NAME


def _read_member(archive, name, fileobj=None):
    """The bytes of `name` inside a (gzipped) tar, read in memory."""
    with tarfile.open(name=None if fileobj else archive, fileobj=fileobj, mode="r:*") as tar:
        try:
            member = tar.extractfile(name)
        except KeyError:
            member = None
        if member is None:
            raise ValueError(f"{archive}: {name!r} is missing; expected the vadersentiment 3.3.2 sdist.")
        return member.read()


def movie_review_snippets(archive=None):
    """Movie-review sentences labelled positive or negative by human raters.

    Reads `movieReviewSnippets_GroundTruth.txt` (tab-separated `id`, mean rating, text)
    straight from the vadersentiment 3.3.2 source tarball, without extracting anything
    to disk. A snippet whose mean rating is above 0 is positive (label 1), below 0
    negative (label 0). The 37 snippets whose mean rating is exactly 0 are neutral and
    dropped, which leaves 5,242 positive and 5,326 negative snippets (10,568 in all).
    Two texts appear twice, with the same polarity both times; both copies are kept.

    The snippets come in the file's order (by id), so every call returns the same lists:
    shuffle and split them yourself, e.g. with `keras.utils.split_dataset(..., seed=...)`.

    Args:
        archive: path of `vaderSentiment-3.3.2.tar.gz`. Default: that file in the folder
            named by the `TFZOO_DATA_DIR` environment variable if it is set, else in
            `.data/` at the root of the tfzoo repository (where `scripts/setup.sh` puts it).

    Returns:
        `(texts, labels)`: a list of strings and a NumPy int32 array of 0s and 1s.

    Raises:
        ValueError: if the archive is missing (saying how to download it) or is not
            the expected sdist.

    Example:
    >>> texts, labels = movie_review_snippets()
    >>> len(texts), int(labels.sum())
    (10568, 5242)
    """
    archive = Path(archive) if archive is not None else _default_archive()
    if not archive.is_file():
        raise ValueError(
            f"The movie-review data was not found at {str(archive)!r}. It ships in VADER's source "
            f"distribution; download it from the repository root with\n    {_DOWNLOAD_COMMAND}\n"
            f"or put {ARCHIVE_NAME} in a folder named by the {DATA_DIR_VARIABLE} environment variable."
        )
    try:
        inner = _read_member(archive, _INNER_ARCHIVE)
        raw = _read_member(f"{archive}!{_INNER_ARCHIVE}", _SNIPPETS_FILE, fileobj=io.BytesIO(inner))
    except tarfile.TarError as error:
        raise ValueError(f"{archive}: not a readable tar archive ({error}).") from error

    texts, labels = [], []
    for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t", 2)
        if len(fields) != 3:
            raise ValueError(f"{archive}!{_SNIPPETS_FILE}, line {number}: expected id, rating and text.")
        rating, text = float(fields[1]), fields[2].strip()
        if rating == 0 or not text:
            continue  # neutral: neither label fits
        texts.append(text)
        labels.append(1 if rating > 0 else 0)
    return texts, np.array(labels, dtype="int32")
