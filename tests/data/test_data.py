import dataclasses
import hashlib
import io
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from mmcourse.data import ChecksumError, DataMissingError, cache_dir, install_command, package_dir, verify_sha256
from mmcourse.data.digits import load_digits
from mmcourse.data.models import minilm_dir, smollm2_gguf
from mmcourse.data.sentiment import DOMAINS, fetch_sentiment, load_sentiment, sentiment_dir
from mmcourse.data.shakespeare import load_shakespeare
from mmcourse.data.sources import SENTIMENT, SdistSource


def _tar_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def fake_sdist() -> bytes:
    """An sdist shaped like vaderSentiment's: the ratings inside an inner archive."""
    lines = {name: f"1\t2.5\tgood {name}\r\n2\t-1.0\tbad {name}\r\n".encode() for name in DOMAINS.values()}
    inner = _tar_bytes({f"hutto_ICWSM_2014/{name}": data for name, data in lines.items()})
    return _tar_bytes({"vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz": inner})


def downloader(payload: bytes):
    calls = []

    def download(source: SdistSource, directory: Path) -> Path:
        calls.append(source.requirement)
        path = directory / source.filename
        path.write_bytes(payload)
        return path

    return download, calls


def test_cache_dir_follows_environment(data_dir: Path) -> None:
    assert cache_dir() == data_dir


def test_fetch_verifies_unpacks_and_skips_second_time(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = fake_sdist()
    checksum = hashlib.sha256(payload).hexdigest()
    monkeypatch.setattr("mmcourse.data.sentiment.SENTIMENT", dataclasses.replace(SENTIMENT, sha256=checksum))
    download, calls = downloader(payload)
    assert fetch_sentiment(download) == sentiment_dir()
    snippets = load_sentiment("tweets")
    assert [(s.id, s.rating, s.text) for s in snippets] == [
        ("1", 2.5, "good tweets_GroundTruth.txt"),
        ("2", -1.0, "bad tweets_GroundTruth.txt"),
    ]
    fetch_sentiment(download)
    assert len(calls) == 1, "a second fetch must reuse the unpacked files"


def test_corrupt_download_is_deleted_with_a_clear_message(data_dir: Path) -> None:
    download, _ = downloader(b"truncated")
    with pytest.raises(ChecksumError, match=r"corrupt or truncated and was deleted; fetch it again with: .* install"):
        fetch_sentiment(download)
    assert not sentiment_dir().exists()


def test_verify_sha256_deletes_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "file.bin"
    path.write_bytes(b"abc")
    with pytest.raises(ChecksumError, match="file.bin: sha256 is ba7816bf"):
        verify_sha256(path, "0" * 64)
    assert not path.exists()


def test_missing_data_names_the_command(data_dir: Path) -> None:
    with pytest.raises(DataMissingError) as error:
        load_sentiment("movies")
    assert install_command() in str(error.value)
    assert install_command() == f"{sys.executable} -m mmcourse.data install"


def test_missing_package_names_the_command() -> None:
    with pytest.raises(DataMissingError, match="'no_such_data_package' is not installed. Install it with: .*"):
        package_dir("no_such_data_package")


def test_bad_domain_is_rejected() -> None:
    with pytest.raises(ValueError, match="domain='imdb' is not one of movies, amazon, nyt, tweets"):
        load_sentiment("imdb")


def test_real_sentiment_snippets() -> None:
    """The set-up fetched the real data into the default cache: four domains, ratings in [-4, 4]."""
    counts = {domain: len(load_sentiment(domain)) for domain in DOMAINS}
    assert counts == {"movies": 10605, "amazon": 3708, "nyt": 5190, "tweets": 4200}
    ratings = [s.rating for s in load_sentiment("movies")]
    assert min(ratings) >= -4 and max(ratings) <= 4 and min(ratings) < 0 < max(ratings)


def test_real_shakespeare() -> None:
    works = load_shakespeare()
    assert len(works) == 42 and "hamlet" in works
    assert works["hamlet"].startswith("HAMLET, PRINCE OF DENMARK")
    assert sum(len(text) for text in works.values()) > 4_000_000


def test_digits_and_model_files() -> None:
    images, labels = load_digits()
    assert images.shape == (1797, 8, 8) and labels.shape == (1797,)
    assert 0.0 <= images.min() and images.max() <= 1.0 and set(labels.tolist()) == set(range(10))
    assert images.dtype == torch.float32
    assert (minilm_dir() / "config.json").is_file()
    assert smollm2_gguf().stat().st_size > 50_000_000
