"""The attribute judge: does a generated image show what its caption asked for? And how close are two image sets?

A generator of captioned scenes ("a large red circle on the left") is right when its image has the caption's
colour, shape, size and position. A person can check a few images; the book checks thousands with a *judge*: a
small CNN classifier (one head per attribute) trained on real rendered scenes (:mod:`mmcourse.data.scenes`), never
on a generator's output, so it measures the generators without being one of them. Its accuracy on real test scenes
says how far its verdicts can be trusted.

The spatial map is flattened before the last layer, not averaged over positions: a global average would throw away
where the object is, and position is one of the attributes. That layer's output, ``features``, is also the space in
which whole sets of images are compared. FID (Heusel et al., 2017) fits a Gaussian to the Inception-v3 features of
real images and another to those of generated ones and reports the Fréchet distance between the two Gaussians,

    d² = ||μ_a - μ_b||² + Tr(Σ_a + Σ_b - 2 (Σ_a Σ_b)^{1/2}).

Inception was trained on 299-px photographs; the book's images are 32-px scenes, so it uses its judge's features
instead (the number is then no FID to compare with papers', only between the book's own models). A Fréchet
distance compares only the first two moments (mean and covariance) of the features: two sets with equal means and
covariances are at distance 0 whatever else differs. ``mean_pairwise_distance`` adds a plain diversity measure: a
generator that draws one image for every caption has a small one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcourse.checks import check_int, check_positive_int, check_stage_widths
from mmcourse.generation import evaluating
from mmcourse.vision import check_images

SYMMETRY_TOLERANCE = 1e-6  # relative: max |M - M^T| <= tolerance · max |M| counts as symmetric


@dataclass(frozen=True)
class JudgeConfig:
    image_size: int = 32
    channels: int = 3
    widths: tuple[int, ...] = (32, 64)  # conv stages, each halving the image: 32x32 images → an 8x8 map
    hidden: int = 128  # width of the feature vector (the penultimate layer)
    heads: tuple[tuple[str, int], ...] = (("colour", 6), ("shape", 3), ("size", 2), ("position", 5))  # name, classes

    def __post_init__(self) -> None:
        for name in ("image_size", "channels", "hidden"):
            check_positive_int(name, getattr(self, name))
        check_stage_widths(self.widths, self.image_size)
        if not isinstance(self.heads, tuple) or not self.heads:
            raise ValueError(f"heads must be a non-empty tuple of (name, classes) pairs, got {self.heads!r}")
        for head in self.heads:
            if not isinstance(head, tuple) or len(head) != 2:
                raise ValueError(f"heads must hold (name, classes) pairs, got {head!r}")
            name, classes = head
            if not isinstance(name, str):
                raise TypeError(f"heads: a head's name must be a str, got {type(name).__name__} {name!r}")
            if not name or "." in name or hasattr(nn.ModuleDict, name):  # it names a submodule: not 'keys' or 'type'
                raise ValueError(f"heads: a head's name must be non-empty, without '.', no nn.Module name: {name!r}")
            check_int(f"heads[{name!r}] classes", classes, minimum=2)
        names = [name for name, _ in self.heads]
        if len(set(names)) != len(names):
            raise ValueError(f"heads has a repeated name: {names}")

    @property
    def map_size(self) -> int:
        """Side of the last stage's feature map."""
        return self.image_size // 2 ** len(self.widths)


# ---------------------------------------------------------------------------------------------------------------
# The classifier
# ---------------------------------------------------------------------------------------------------------------


def conv_stage(in_channels: int, width: int) -> nn.Sequential:
    """3x3 conv → GroupNorm → SiLU, twice, then a 2x2 average pool: (batch, in, H, W) → (batch, width, H/2, W/2).
    GroupNorm (not BatchNorm) so that an image's features never depend on the other images of its batch."""
    groups = math.gcd(8, width)  # divides width
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.GroupNorm(groups, width),
        nn.SiLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.GroupNorm(groups, width),
        nn.SiLU(),
        nn.AvgPool2d(2),
    )


class AttributeJudge(nn.Module):
    """Conv stages → flatten the (width, h, w) map → Linear → SiLU: the features (batch, hidden); one linear head per
    attribute on them. ``forward`` returns logits by head name, ``predict`` the predicted classes."""

    def __init__(self, config: JudgeConfig) -> None:
        super().__init__()
        if not isinstance(config, JudgeConfig):
            raise TypeError(f"config must be a JudgeConfig, got {type(config).__name__}")
        self.config = config
        stages, previous = [], config.channels
        for width in config.widths:
            stages.append(conv_stage(previous, width))
            previous = width
        flat = previous * config.map_size**2  # the whole map: position stays visible
        self.body = nn.Sequential(*stages, nn.Flatten(), nn.Linear(flat, config.hidden), nn.SiLU())
        self.heads = nn.ModuleDict({name: nn.Linear(config.hidden, classes) for name, classes in config.heads})

    def features(self, images: Tensor) -> Tensor:
        """images (batch, C, H, W) in [0, 1] → features (batch, hidden)."""
        check_images(images, self.config.channels, self.config.image_size)
        return self.body(images)  # (batch, hidden)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """images (batch, C, H, W) in [0, 1] → {head name: logits (batch, classes)}."""
        features = self.features(images)  # (batch, hidden)
        return {name: head(features) for name, head in self.heads.items()}  # each (batch, classes)

    def predict(self, images: Tensor, batch_size: int = 256) -> dict[str, Tensor]:
        """{head name: predicted class (batch,) int64, on the CPU}, ``batch_size`` images at a time (moved to the
        model's device), in eval mode without gradients; the model's mode is restored afterwards."""
        check_images(images, self.config.channels, self.config.image_size)
        check_positive_int("batch_size", batch_size)
        device = next(self.parameters()).device
        chunks: dict[str, list[Tensor]] = {name: [torch.empty(0, dtype=torch.int64)] for name in self.heads}
        with evaluating(self):
            for chunk in images.split(batch_size):
                for name, logits in self(chunk.to(device)).items():  # logits: (chunk, classes)
                    chunks[name].append(logits.argmax(dim=1).cpu())  # (chunk,)
        return {name: torch.cat(parts) for name, parts in chunks.items()}  # each (batch,)


def _check_labels(name: str, labels: object, wanted: Sequence[str], batch: int | None = None) -> int:
    """TypeError unless ``labels`` is a mapping of int64 tensors; ValueError naming the first of ``wanted`` that is
    missing or not (batch,) (batch: the first one's length when not given). Returns batch."""
    if not isinstance(labels, Mapping):
        raise TypeError(f"{name} must be a mapping of attribute name → tensor, got {type(labels).__name__}")
    for key in wanted:
        if key not in labels:
            raise ValueError(f"{name} has no {key!r}: it needs every one of {list(wanted)}")
        values = labels[key]
        if not isinstance(values, Tensor) or values.dtype != torch.int64:
            kind = f"a {values.dtype} tensor" if isinstance(values, Tensor) else type(values).__name__
            raise TypeError(f"{name}[{key!r}] must be an int64 tensor of class indices, got {kind}")
        if values.dim() != 1 or (batch is not None and len(values) != batch):
            expected = "(batch,)" if batch is None else f"(batch={batch},)"
            raise ValueError(f"{name}[{key!r}] must be {expected}, got shape {tuple(values.shape)}")
        batch = len(values)
    return batch


def judge_loss(model: AttributeJudge, images: Tensor, labels: Mapping[str, Tensor]) -> Tensor:
    """Σ over heads of the mean cross-entropy (交叉熵) of its logits against ``labels[name]`` (batch,), where a label
    -1 ("not applicable": the shape of a digit) gets no loss. A head with no applicable label adds 0, not the NaN of
    a mean over nothing. Extra keys in ``labels`` are ignored."""
    if not isinstance(model, AttributeJudge):
        raise TypeError(f"model must be an AttributeJudge, got {type(model).__name__}")
    check_images(images, model.config.channels, model.config.image_size)
    _check_labels("labels", labels, list(model.heads), len(images))
    total = images.new_zeros(())
    for name, logits in model(images).items():  # logits: (batch, classes)
        target = labels[name]  # (batch,)
        summed = F.cross_entropy(logits, target, ignore_index=-1, reduction="sum")
        total = total + summed / (target != -1).sum().clamp(min=1)  # a mean over the applicable rows, no sync
    return total


def attribute_accuracy(predictions: Mapping[str, Tensor], labels: Mapping[str, Tensor], names: Sequence[str]) -> Tensor:
    """(batch,) bool: True where every attribute in ``names`` is predicted right, e.g. ("colour", "shape"). Every
    named label must apply (no -1): pass only the rows where they do, e.g. shapes and not digits."""
    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
        raise ValueError(f"names must be a non-empty sequence of attribute names, got {names!r}")
    batch = _check_labels("labels", labels, names)
    _check_labels("predictions", predictions, names, batch)
    right = torch.ones(batch, dtype=torch.bool)  # (batch,)
    for name in names:
        if bool((labels[name] == -1).any()):
            raise ValueError(f"labels[{name!r}] holds -1 (not applicable): pass only the rows where {name} applies")
        right &= predictions[name].cpu() == labels[name].cpu()  # (batch,)
    return right


# ---------------------------------------------------------------------------------------------------------------
# Fréchet distance between Gaussians fitted to features
# ---------------------------------------------------------------------------------------------------------------


def _check_square_symmetric(name: str, matrix: object) -> None:
    """TypeError unless a float tensor; ValueError unless (d, d) and symmetric (to SYMMETRY_TOLERANCE, relative)."""
    if not isinstance(matrix, Tensor) or not matrix.is_floating_point():
        kind = f"a {matrix.dtype} tensor" if isinstance(matrix, Tensor) else type(matrix).__name__
        raise TypeError(f"{name} must be a float tensor, got {kind}")
    if matrix.dim() != 2 or matrix.size(0) != matrix.size(1):
        raise ValueError(f"{name} must be a square matrix (d, d), got shape {tuple(matrix.shape)}")
    scale = matrix.abs().max().item() if matrix.numel() else 0.0
    asymmetry = (matrix - matrix.T).abs().max().item() if matrix.numel() else 0.0
    if asymmetry > SYMMETRY_TOLERANCE * scale:
        raise ValueError(f"{name} must be symmetric, but differs from its transpose by up to {asymmetry:.3g}")


def _psd_sqrt(matrix: Tensor) -> Tensor:
    """psd_sqrt without the checks, in float64."""
    symmetric = matrix.double()
    symmetric = (symmetric + symmetric.T) / 2  # (d, d): exactly symmetric
    eigenvalues, eigenvectors = torch.linalg.eigh(symmetric)  # (d,), (d, d)
    return eigenvectors * eigenvalues.clamp(min=0).sqrt() @ eigenvectors.T  # (d, d): V diag(√λ) V^T


def psd_sqrt(matrix: Tensor) -> Tensor:
    """The symmetric positive semi-definite square root S of a symmetric PSD ``matrix`` (d, d), S @ S = matrix:
    with matrix = V diag(λ) V^T (``torch.linalg.eigh``), S = V diag(√λ) V^T. Eigenvalues a rounding error below 0 are
    clamped to 0. Computed in float64, returned in the matrix's dtype."""
    _check_square_symmetric("matrix", matrix)
    return _psd_sqrt(matrix).to(matrix.dtype)


def gaussian_frechet_distance(mean_a: Tensor, cov_a: Tensor, mean_b: Tensor, cov_b: Tensor) -> float:
    """Fréchet distance between N(mean_a, cov_a) and N(mean_b, cov_b), means (d,), covariances (d, d), in float64:
    ||μ_a - μ_b||² + Tr(Σ_a + Σ_b - 2 (Σ_a Σ_b)^{1/2}).

    Σ_a Σ_b is not symmetric, so its square root needs a general matrix function (scipy's ``sqrtm``, complex on the
    way). Instead Tr((Σ_a Σ_b)^{1/2}) = Tr((√Σ_a Σ_b √Σ_a)^{1/2}): √Σ_a Σ_b √Σ_a = √Σ_a^{-1} (Σ_a Σ_b) √Σ_a is
    similar to Σ_a Σ_b, so the two have the same eigenvalues λ_i ≥ 0 and both traces are Σ √λ_i (for a singular Σ_a
    by continuity); and √Σ_a Σ_b √Σ_a is symmetric PSD, so ``psd_sqrt`` takes its root. Rounding can make the
    result a hair below 0: it is clamped at 0."""
    _check_square_symmetric("cov_a", cov_a)
    _check_square_symmetric("cov_b", cov_b)
    dim = cov_a.size(0)
    for name, value in (("mean_a", mean_a), ("mean_b", mean_b)):
        if not isinstance(value, Tensor) or not value.is_floating_point():
            kind = f"a {value.dtype} tensor" if isinstance(value, Tensor) else type(value).__name__
            raise TypeError(f"{name} must be a float tensor, got {kind}")
        if tuple(value.shape) != (dim,):
            raise ValueError(f"{name} must be (d={dim},) to match cov_a, got shape {tuple(value.shape)}")
    if cov_b.size(0) != dim:
        raise ValueError(f"cov_b must be (d, d) = {(dim, dim)} to match cov_a, got shape {tuple(cov_b.shape)}")
    return _gaussian_frechet_distance(mean_a, cov_a, mean_b, cov_b)


def _gaussian_frechet_distance(mean_a: Tensor, cov_a: Tensor, mean_b: Tensor, cov_b: Tensor) -> float:
    """gaussian_frechet_distance without the checks."""
    mean_a, cov_a, mean_b, cov_b = (value.double() for value in (mean_a, cov_a, mean_b, cov_b))
    root_a = _psd_sqrt(cov_a)  # (d, d)
    trace_root = _psd_sqrt(root_a @ cov_b @ root_a).trace()  # Tr((Σ_a Σ_b)^{1/2})
    distance = (mean_a - mean_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * trace_root
    return max(distance.item(), 0.0)


def _fit_gaussian(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (d,) and unbiased covariance (d, d) of the rows of ``features`` (N, d), in float64. Unchecked: callers
    pass (N, d) float tensors with N >= 2."""
    features = features.double()  # (N, d)
    mean = features.mean(dim=0)  # (d,)
    centred = features - mean  # (N, d)
    return mean, centred.T @ centred / (len(features) - 1)  # (d,), (d, d)


def _check_features(name: str, features: object, minimum_rows: int = 2) -> None:
    """TypeError unless a float tensor; ValueError unless (N, d) with N >= minimum_rows."""
    if not isinstance(features, Tensor) or not features.is_floating_point():
        kind = f"a {features.dtype} tensor" if isinstance(features, Tensor) else type(features).__name__
        raise TypeError(f"{name} must be a float tensor, got {kind}")
    if features.dim() != 2 or len(features) < minimum_rows:
        raise ValueError(f"{name} must be (N, d) with N >= {minimum_rows} rows, got shape {tuple(features.shape)}")


def frechet_distance(features_a: Tensor, features_b: Tensor) -> float:
    """The Fréchet distance between Gaussians fitted to two samples of features, (N, d) and (M, d): each its mean and
    unbiased covariance, then :func:`gaussian_frechet_distance`. With the judge's features: the book's FID.
    A covariance from N rows has rank < N: use many more rows than d for a stable number."""
    _check_features("features_a", features_a)
    _check_features("features_b", features_b)
    if features_a.size(1) != features_b.size(1):
        raise ValueError(f"features_a and features_b must have the same width d, got {features_a.size(1)} "
                         f"and {features_b.size(1)}")  # fmt: skip
    return _gaussian_frechet_distance(*_fit_gaussian(features_a), *_fit_gaussian(features_b))


def mean_pairwise_distance(features: Tensor) -> float:
    """Diversity of a sample: the mean Euclidean distance ||x_i - x_j|| over all pairs i < j of the rows of
    ``features`` (N, d), N >= 2. N (N - 1) / 2 distances: fine for thousands of rows."""
    _check_features("features", features)
    return torch.pdist(features.double()).mean().item()  # pdist: (N (N - 1) / 2,) distances, i < j
