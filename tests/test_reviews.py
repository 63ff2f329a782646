"""The movie-review snippets read from VADER's source distribution."""

import io
import tarfile

import numpy as np
import pytest

from tfzoo.data import movie_review_snippets
from tfzoo.data.reviews import ARCHIVE_NAME, _default_archive

SNIPPETS = (  # the real file's format: id, mean rating, text; tab-separated, CRLF line ends
    "1\t2.26666666667\tA splash of a film.\r\n"
    "2\t-0.6\tEffective but too tepid biopic\r\n"
    "3\t0.0\tNeither here nor there.\r\n"
    "4\t-2.5\tCrummy.\r\n"
)


def _tar_gz(members):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _fake_sdist(folder, snippets=SNIPPETS):
    """A tarball shaped like the vadersentiment sdist: the data tarball nested inside."""
    inner = _tar_gz({"hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt": snippets.encode("utf-8")})
    path = folder / ARCHIVE_NAME
    path.write_bytes(_tar_gz({"vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz": inner}))
    return path


def test_reads_nested_tarball_and_drops_neutral_snippets(tmp_path):
    texts, labels = movie_review_snippets(_fake_sdist(tmp_path))
    assert texts == ["A splash of a film.", "Effective but too tepid biopic", "Crummy."]
    assert labels.tolist() == [1, 0, 0]
    assert labels.dtype == np.int32


def test_nothing_is_extracted_to_disk(tmp_path):
    _fake_sdist(tmp_path)
    movie_review_snippets(str(tmp_path / ARCHIVE_NAME))
    assert [path.name for path in tmp_path.iterdir()] == [ARCHIVE_NAME]


def test_data_dir_environment_variable_sets_the_default(tmp_path, monkeypatch):
    _fake_sdist(tmp_path)
    monkeypatch.setenv("TFZOO_DATA_DIR", str(tmp_path))
    assert _default_archive() == tmp_path / ARCHIVE_NAME
    assert len(movie_review_snippets()[0]) == 3


def test_missing_archive_says_how_to_download_it(tmp_path, monkeypatch):
    command = "pip download --no-deps --no-binary :all: vadersentiment==3.3.2 -d .data"
    with pytest.raises(ValueError, match="not found") as error:
        movie_review_snippets(tmp_path / "missing.tar.gz")
    assert command in str(error.value)
    monkeypatch.setenv("TFZOO_DATA_DIR", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="TFZOO_DATA_DIR"):
        movie_review_snippets()


def test_other_archives_are_rejected(tmp_path):
    wrong = tmp_path / "wrong.tar.gz"
    wrong.write_bytes(_tar_gz({"README": b"hello"}))
    with pytest.raises(ValueError, match="hutto_ICWSM_2014.tar.gz"):
        movie_review_snippets(wrong)
    not_a_tar = tmp_path / "not_a_tar.tar.gz"
    not_a_tar.write_bytes(b"hello")
    with pytest.raises(ValueError, match="not a readable tar archive"):
        movie_review_snippets(not_a_tar)


def test_real_snippets():
    try:
        texts, labels = movie_review_snippets()
    except ValueError as error:
        pytest.skip(str(error))
    # 10,605 rated snippets, minus the 37 rated exactly 0.
    assert (len(texts), int(labels.sum()), int((labels == 0).sum())) == (10568, 5242, 5326)
    assert abs(labels.mean() - 0.5) < 0.01  # balanced
    assert set(np.unique(labels).tolist()) == {0, 1}
    assert all(isinstance(text, str) and text.strip() == text and text for text in texts)
    assert texts[2] == "Effective but too tepid biopic" and labels[2] == 0
    again_texts, again_labels = movie_review_snippets()  # deterministic
    assert again_texts == texts and np.array_equal(again_labels, labels)
