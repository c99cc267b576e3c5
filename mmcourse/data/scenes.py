"""Generated scenes of coloured shapes and handwritten digits, their captions, and the labels to evaluate with.

A scene is a dark square image holding one or more objects. Each object is a circle, square or triangle, or one
of scikit-learn's 8x8 handwritten digits upscaled and tinted, with a colour, a size (small or large) and a
position: a cell of a 3x3 grid (``POSITION_CELLS``; by default the five cells ``left``, ``right``, ``top``,
``bottom``, ``centre``), the object's centre jittered inside that cell. Objects never overlap (rejection sampling),
and in a multi-object scene each object has its own cell, so a position names one object.

Compositional generalisation (组合泛化): the (colour, shape) pairs in ``SceneConfig.held_out`` never appear in the
``train`` split; ``validation`` and ``test`` draw every pair uniformly, held-out ones included, and flag them
(``Scene.held_out``). Digit images are split too: ``train`` pastes the first 80% of each digit's images,
``validation`` and ``test`` the rest, so evaluation shows handwriting the model has not seen.

Everything is deterministic from a seed: ``generate_scenes`` draws the scenes (the first ``k`` scenes of a larger
draw equal a draw of ``k``), ``render`` draws pixels from the scene alone (its noise from ``Scene.noise_seed``).
Every caption template names every attribute of the object (colour, shape or digit, size, position), so the
attributes a caption names are ``scene_attributes(scene)``; ``caption_matches`` and ``relevance`` turn them into
the hits of attribute-aware retrieval, where captions are not unique.
"""

from __future__ import annotations

import itertools
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

SPLITS = ("train", "validation", "test")

# Named colours, chosen to stay apart on a dark background (the closest pair, blue and purple, are 0.53 apart).
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.92, 0.12, 0.12),
    "green": (0.15, 0.75, 0.20),
    "blue": (0.20, 0.35, 1.00),
    "yellow": (0.95, 0.85, 0.15),
    "purple": (0.70, 0.20, 0.90),
    "cyan": (0.15, 0.85, 0.90),
    "orange": (1.00, 0.55, 0.10),
    "white": (0.95, 0.95, 0.95),
}
SHAPES = ("circle", "square", "triangle")
# Width (= height) of an object's bounding box, as a fraction of the image side.
SIZE_FRACTIONS: dict[str, float] = {"small": 0.22, "medium": 0.31, "large": 0.40}
DIGIT_SCALE = 1.3  # a digit's box is this much wider than a shape's of the same size: 8x8 digits have empty margins
# Position name -> (row, column) of its cell in a 3x3 grid over the image.
POSITION_CELLS: dict[str, tuple[int, int]] = {
    "top left": (0, 0),
    "top": (0, 1),
    "top right": (0, 2),
    "left": (1, 0),
    "centre": (1, 1),
    "right": (1, 2),
    "bottom left": (2, 0),
    "bottom": (2, 1),
    "bottom right": (2, 2),
}
# How a caption says where an object is.
WHERE: dict[str, str] = {
    "top left": "in the top left corner",
    "top": "at the top",
    "top right": "in the top right corner",
    "left": "on the left",
    "centre": "in the centre",
    "right": "on the right",
    "bottom left": "in the bottom left corner",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right corner",
}
ATTRIBUTE_KEYS = ("colour", "shape", "digit", "size", "position")  # what a caption can name about an object
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Sentence templates for one object; each names every attribute: {size} {colour} {name} {where}.
CAPTION_TEMPLATES = (
    "a {size} {colour} {name} {where}",
    "a picture of a {size} {colour} {name} {where}",
    "a photo of a {size} {colour} {name} {where}",
    "there is a {size} {colour} {name} {where}",
    "{where}, a {size} {colour} {name}",
    "{where} there is a {size} {colour} {name}",
    "a {size} {name} in {colour} {where}",
    "the {size} {name} in {colour} {where}",
)
# Class prompts for zero-shot classification over (colour, shape); several of them make a prompt ensemble.
PROMPT_TEMPLATES = (
    "a photo of a {colour} {shape}",
    "a picture of a {colour} {shape}",
    "a {colour} {shape}",
    "a drawing of a {colour} {shape}",
    "there is a {colour} {shape}",
)
_CAPTION_FIELDS = frozenset({"size", "colour", "name", "where"})
_DIGIT_TRAIN_SHARE = 0.8  # of each digit's images, the first 80% are pasted into train scenes


@dataclass(frozen=True)
class SceneConfig:
    image_size: int = 48
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "cyan")
    shapes: tuple[str, ...] = SHAPES
    sizes: tuple[str, ...] = ("small", "large")
    positions: tuple[str, ...] = ("left", "right", "top", "bottom", "centre")
    digits: bool = True  # paste scikit-learn's handwritten digits in as objects too
    digit_fraction: float = 0.25  # share of objects that are digits when digits is on
    min_objects: int = 1
    max_objects: int = 1
    held_out: tuple[tuple[str, str], ...] = (("green", "triangle"), ("blue", "circle"), ("red", "square"))
    position_jitter: float = 2.0  # pixels, uniform in [-jitter, jitter] on each axis
    size_jitter: float = 0.1  # relative, uniform in [-jitter, jitter]
    colour_jitter: float = 0.05  # per channel, uniform in [-jitter, jitter]
    noise_std: float = 0.02  # Gaussian pixel noise
    background: float = 0.08  # grey level of the background
    antialias: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int) or self.image_size < 24:
            raise ValueError(f"image_size must be an int >= 24, got {self.image_size!r}")
        _check_names("colours", self.colours, PALETTE, minimum=2)
        _check_names("shapes", self.shapes, SHAPES, minimum=1)
        _check_names("sizes", self.sizes, SIZE_FRACTIONS, minimum=1)
        _check_names("positions", self.positions, POSITION_CELLS, minimum=1)
        if not 0.0 <= self.digit_fraction <= 1.0:
            raise ValueError(f"digit_fraction must be in [0, 1], got {self.digit_fraction}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects, got {self.min_objects} and {self.max_objects}")
        if self.max_objects > len(self.positions):
            raise ValueError(
                f"max_objects={self.max_objects} exceeds the {len(self.positions)} positions: each object has its own"
            )
        for pair in self.held_out:
            if len(pair) != 2 or pair[0] not in self.colours or pair[1] not in self.shapes:
                raise ValueError(f"held_out pair {pair!r} must be (colour, shape) from colours and shapes")
        if len(set(self.held_out)) != len(self.held_out):
            raise ValueError(f"held_out has a repeated pair: {self.held_out}")
        if len(self.held_out) >= len(self.colours) * len(self.shapes):
            raise ValueError("held_out holds out every (colour, shape) pair: nothing is left to train on")
        cell = self.image_size / 3
        if not 0.0 <= self.position_jitter < cell / 2:
            raise ValueError(
                f"position_jitter must be in [0, {cell / 2:.1f}) pixels (half a cell), got {self.position_jitter}"
            )
        if not 0.0 <= self.size_jitter < 0.5:
            raise ValueError(f"size_jitter must be in [0, 0.5), got {self.size_jitter}")
        if not 0.0 <= self.colour_jitter <= 0.2:
            raise ValueError(f"colour_jitter must be in [0, 0.2], got {self.colour_jitter}")
        if not 0.0 <= self.noise_std <= 0.5:
            raise ValueError(f"noise_std must be in [0, 0.5], got {self.noise_std}")
        if not 0.0 <= self.background <= 1.0:
            raise ValueError(f"background must be in [0, 1], got {self.background}")


def _check_names(field: str, names: tuple[str, ...], allowed: Sequence[str], minimum: int) -> None:
    """Raise ValueError naming ``field`` unless ``names`` is a tuple of distinct allowed names, long enough."""
    if not isinstance(names, tuple) or len(names) < minimum:
        raise ValueError(f"{field} must be a tuple of at least {minimum} names, got {names!r}")
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise ValueError(f"{field} has unknown names {unknown}; choose from {list(allowed)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{field} has a repeated name: {names}")


@dataclass(frozen=True)
class SceneObject:
    kind: str  # "shape" or "digit"
    colour: str
    shape: str | None  # "circle" | "square" | "triangle" for a shape, None for a digit
    digit: int | None  # 0..9 for a digit, None for a shape
    size: str  # "small" | "large"
    position: str  # a key of POSITION_CELLS, e.g. "left"
    centre: tuple[float, float]  # (x, y) in pixels: x to the right, y down, pixel i spans [i, i + 1)
    extent: float  # width = height of the bounding box, in pixels
    rgb: tuple[float, float, float]  # the colour drawn: the named colour plus jitter
    digit_image: int | None = None  # index into load_digits() for a digit

    def __post_init__(self) -> None:
        if self.kind == "shape" and (self.shape not in SHAPES or self.digit is not None):
            raise ValueError(f"a shape object needs shape in {SHAPES} and digit=None, got {self.shape}, {self.digit}")
        if self.kind == "digit" and (self.digit not in range(10) or self.shape is not None or self.digit_image is None):
            raise ValueError(f"a digit object needs digit in 0..9, shape=None and a digit_image, got {self.digit}")
        if self.kind not in ("shape", "digit"):
            raise ValueError(f"kind must be 'shape' or 'digit', got {self.kind!r}")

    @property
    def name(self) -> str:
        """What a caption calls it: 'triangle' or 'digit seven'."""
        return self.shape if self.kind == "shape" else f"digit {DIGIT_WORDS[self.digit]}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    noise_seed: int  # seeds render()'s pixel noise, so rendering is a function of the scene alone
    held_out: bool  # some object is a held-out (colour, shape) combination


def is_held_out_object(obj: SceneObject, config: SceneConfig) -> bool:
    """Whether this object's (colour, shape) is one of config.held_out (digits never are)."""
    return obj.kind == "shape" and (obj.colour, obj.shape) in config.held_out


# ---------------------------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as numpy, loaded once: (images (1797, 8, 8) in [0, 1], labels (1797,))."""
    from mmcourse.data.digits import load_digits

    images, labels = load_digits()
    return images.numpy(), labels.numpy()


@lru_cache(maxsize=len(SPLITS))
def _digit_pools(split: str) -> tuple[np.ndarray, ...]:
    """For each digit 0..9, the indices of its images this split may paste: train the first 80%, others the rest."""
    _, labels = _digit_images()
    pools = []
    for digit in range(10):
        indices = np.flatnonzero(labels == digit)
        cut = int(round(len(indices) * _DIGIT_TRAIN_SHARE))
        pools.append(indices[:cut] if split == "train" else indices[cut:])
    return tuple(pools)


@lru_cache(maxsize=16)
def drawable_pairs(config: SceneConfig, split: str) -> tuple[tuple[str, str], ...]:
    """The (colour, shape) pairs a split draws from, uniformly: train leaves out config.held_out."""
    pairs = [(colour, shape) for colour in config.colours for shape in config.shapes]
    return tuple(pair for pair in pairs if split != "train" or pair not in config.held_out)


def _sample_object(rng: np.random.Generator, config: SceneConfig, split: str, position: str) -> SceneObject:
    """One object at ``position``: kind, attributes, jittered centre, size and colour."""
    if config.digits and rng.random() < config.digit_fraction:
        kind, shape = "digit", None
        digit = int(rng.integers(10))
        pool = _digit_pools(split)[digit]
        digit_image = int(pool[rng.integers(len(pool))])
        colour = config.colours[rng.integers(len(config.colours))]
    else:
        kind, digit, digit_image = "shape", None, None
        pairs = drawable_pairs(config, split)
        colour, shape = pairs[rng.integers(len(pairs))]
    size = config.sizes[rng.integers(len(config.sizes))]
    extent = SIZE_FRACTIONS[size] * config.image_size * (1 + rng.uniform(-config.size_jitter, config.size_jitter))
    extent *= DIGIT_SCALE if kind == "digit" else 1.0
    row, column = POSITION_CELLS[position]
    cell = config.image_size / 3
    jitter = rng.uniform(-config.position_jitter, config.position_jitter, size=2)  # (2,)
    half = extent / 2 + 1  # keep a pixel of background between the object and the border
    x = float(np.clip((column + 0.5) * cell + jitter[0], half, config.image_size - half))
    y = float(np.clip((row + 0.5) * cell + jitter[1], half, config.image_size - half))
    base = np.array(PALETTE[colour])  # (3,)
    rgb = np.clip(base + rng.uniform(-config.colour_jitter, config.colour_jitter, size=3), 0.0, 1.0)  # (3,)
    return SceneObject(
        kind=kind,
        colour=colour,
        shape=shape,
        digit=digit,
        size=size,
        position=position,
        centre=(x, y),
        extent=float(extent),
        rgb=(float(rgb[0]), float(rgb[1]), float(rgb[2])),
        digit_image=digit_image,
    )


def objects_overlap(first: SceneObject, second: SceneObject, config: SceneConfig, gap: int = 1) -> bool:
    """Whether the two objects' drawn pixels touch or come within ``gap`` pixels of each other."""
    reach = (first.extent + second.extent) / 2 * 9 / 8 + gap + 1  # drawn pixels stay this close to the centres
    if max(abs(first.centre[0] - second.centre[0]), abs(first.centre[1] - second.centre[1])) >= reach:
        return False  # far apart: no need to draw them
    grown = object_coverage(first, config) > 0  # (H, W) bool: first's pixels, then dilated by ``gap``
    for _ in range(gap):
        step = grown.copy()
        step[1:, :] |= grown[:-1, :]
        step[:-1, :] |= grown[1:, :]
        step[:, 1:] |= grown[:, :-1]
        step[:, :-1] |= grown[:, 1:]
        grown = step
    return bool((grown & (object_coverage(second, config) > 0)).any())


def generate_scenes(
    count: int, config: SceneConfig = SceneConfig(), seed: int = 0, split: str = "train"
) -> list[Scene]:
    """``count`` scenes drawn from ``seed`` and ``split``; train never holds a held-out (colour, shape)."""
    if not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be a non-negative int, got {count!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    return [_sample_scene(rng, config, split) for _ in range(count)]


def _sample_scene(rng: np.random.Generator, config: SceneConfig, split: str, attempts: int = 500) -> Scene:
    """One scene by rejection sampling: objects drawn independently, one per cell, redrawn until none overlap."""
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    for _ in range(attempts):
        cells = rng.choice(len(config.positions), size=count, replace=False)  # (count,)
        objects = tuple(_sample_object(rng, config, split, config.positions[int(cell)]) for cell in cells)
        if not any(objects_overlap(first, second, config) for first, second in itertools.combinations(objects, 2)):
            held_out = any(is_held_out_object(obj, config) for obj in objects)
            return Scene(objects=objects, noise_seed=int(rng.integers(2**31)), held_out=held_out)
    raise RuntimeError(
        f"could not place {count} objects without overlap in {attempts} attempts: lower max_objects, "
        f"use smaller sizes or a larger image_size than {config.image_size}"
    )


# ---------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------


def _pixel_centres(size: int) -> np.ndarray:
    """Coordinates of the pixel centres along one axis: 0.5, 1.5, ..."""
    return np.arange(size, dtype=np.float32) + 0.5  # (size,)


def object_coverage(obj: SceneObject, config: SceneConfig) -> np.ndarray:
    """How much of each pixel the object covers, in [0, 1]: (H, W). Shapes from signed distances, digits upscaled."""
    centres = _pixel_centres(config.image_size)  # (H,)
    dx = centres[None, :] - obj.centre[0]  # (1, W)
    dy = centres[:, None] - obj.centre[1]  # (H, 1)
    half = obj.extent / 2
    if obj.kind == "digit":
        return _digit_coverage(obj, config, dx[0], dy[:, 0])
    if obj.shape == "circle":
        distance = np.sqrt(dx**2 + dy**2) - half  # (H, W): signed distance, negative inside
    elif obj.shape == "square":
        distance = np.maximum(np.abs(dx), np.abs(dy)) - half  # (H, W)
    else:  # triangle, apex up, filling the bounding box: the maximum of three edges' signed distances
        bottom = dy - half  # (H, 1)
        left = (-2 * (dx + half) - (dy - half)) / np.sqrt(5)  # (H, W)
        right = (2 * (dx - half) - (dy - half)) / np.sqrt(5)  # (H, W)
        distance = np.maximum(np.maximum(left, right), bottom)  # (H, W)
    if config.antialias:
        return np.clip(0.5 - distance, 0.0, 1.0).astype(np.float32)  # a one-pixel ramp across the edge
    return (distance <= 0).astype(np.float32)


def _digit_coverage(obj: SceneObject, config: SceneConfig, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """The 8x8 digit resampled onto the object's box: rows_weights (H, 8) @ digit (8, 8) @ column_weights (8, W)."""
    images, _ = _digit_images()
    digit = images[obj.digit_image]  # (8, 8) in [0, 1]
    scale = 8 / obj.extent  # digit pixels per image pixel
    u = (dx + obj.extent / 2) * scale - 0.5  # (W,): position in digit pixels, 0 at the centre of the first
    v = (dy + obj.extent / 2) * scale - 0.5  # (H,)
    steps = np.arange(8, dtype=np.float32)  # (8,)
    if config.antialias:  # bilinear: tent weights, zero outside the digit
        column_weights = np.maximum(0.0, 1 - np.abs(u[:, None] - steps[None, :]))  # (W, 8)
        row_weights = np.maximum(0.0, 1 - np.abs(v[:, None] - steps[None, :]))  # (H, 8)
    else:  # nearest digit pixel
        column_weights = (np.abs(u[:, None] - steps[None, :]) < 0.5).astype(np.float32)  # (W, 8)
        row_weights = (np.abs(v[:, None] - steps[None, :]) < 0.5).astype(np.float32)  # (H, 8)
    coverage = row_weights @ digit @ column_weights.T  # (H, W)
    return np.clip(coverage * 1.5, 0.0, 1.0).astype(np.float32)  # bolder strokes: upscaled 8x8 ink looks faint


def _render_array(scene: Scene, config: SceneConfig) -> np.ndarray:
    """render() in numpy: (3, H, W) float32 in [0, 1]."""
    size = config.image_size
    image = np.full((3, size, size), config.background, dtype=np.float32)  # (3, H, W)
    for obj in scene.objects:
        coverage = object_coverage(obj, config)[None]  # (1, H, W)
        colour = np.asarray(obj.rgb, dtype=np.float32)[:, None, None]  # (3, 1, 1)
        image = image * (1 - coverage) + colour * coverage  # (3, H, W): paint the object over what is there
    if config.noise_std > 0:
        noise = np.random.default_rng(scene.noise_seed).standard_normal((3, size, size), dtype=np.float32)
        image = image + config.noise_std * noise  # (3, H, W)
    return np.clip(image, 0.0, 1.0)


def render(scene: Scene, config: SceneConfig = SceneConfig()) -> Tensor:
    """Draw the scene: (3, H, W) float in [0, 1]; the same scene always gives the same pixels."""
    return torch.from_numpy(_render_array(scene, config))  # (3, H, W)


def render_scenes(scenes: Sequence[Scene], config: SceneConfig = SceneConfig()) -> Tensor:
    """Draw many scenes into one tensor: (N, 3, H, W) float in [0, 1]."""
    images = np.empty((len(scenes), 3, config.image_size, config.image_size), dtype=np.float32)  # (N, 3, H, W)
    for index, scene in enumerate(scenes):
        images[index] = _render_array(scene, config)
    return torch.from_numpy(images)


# ---------------------------------------------------------------------------------------------------------------
# Captions and attributes
# ---------------------------------------------------------------------------------------------------------------


def _with_articles(text: str) -> str:
    """'a orange' -> 'an orange'."""
    return re.sub(r"\ba ([aeiou])", r"an \1", text)


def _template_fields(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field}


@lru_cache(maxsize=64)
def _check_caption_templates(templates: tuple[str, ...]) -> None:
    """Raise ValueError unless every template uses exactly {size} {colour} {name} {where} (checked once per tuple)."""
    if not templates:
        raise ValueError("templates is empty")
    for index, template in enumerate(templates):
        if _template_fields(template) != _CAPTION_FIELDS:
            raise ValueError(f"templates[{index}] {template!r} must use exactly the fields {sorted(_CAPTION_FIELDS)}")


def _object_phrase(obj: SceneObject) -> str:
    """'small red triangle' or 'large blue digit seven'."""
    return f"{obj.size} {obj.colour} {obj.name}"


def _relation(first: SceneObject, second: SceneObject) -> str:
    """Where ``first`` is relative to ``second``, along the axis where they are further apart."""
    dx = first.centre[0] - second.centre[0]
    dy = first.centre[1] - second.centre[1]
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


def describe(scene: Scene, rng: np.random.Generator, templates: Sequence[str] = CAPTION_TEMPLATES) -> str:
    """A caption naming every attribute of every object; one object: a random template, more: a list or relation."""
    _check_caption_templates(tuple(templates))
    objects = scene.objects
    if len(objects) == 1:
        obj = objects[0]
        template = templates[rng.integers(len(templates))]
        text = template.format(size=obj.size, colour=obj.colour, name=obj.name, where=WHERE[obj.position])
    elif len(objects) == 2 and rng.random() < 0.5:  # "a small red circle at the top, above a large blue square ..."
        first, second = objects
        text = f"a {_object_phrase(first)} {WHERE[first.position]}, {_relation(first, second)} "
        text += f"a {_object_phrase(second)} {WHERE[second.position]}"
    else:  # "a small red circle on the left, a large blue square at the top and ..."
        parts = [f"a {_object_phrase(obj)} {WHERE[obj.position]}" for obj in objects]
        text = ", ".join(parts[:-1]) + " and " + parts[-1]
    return _with_articles(text)


def object_attributes(obj: SceneObject) -> dict[str, str | int]:
    """The attributes a caption names: colour, shape or digit, size, position."""
    attributes: dict[str, str | int] = {"colour": obj.colour, "size": obj.size, "position": obj.position}
    if obj.kind == "shape":
        attributes["shape"] = obj.shape
    else:
        attributes["digit"] = obj.digit
    return attributes


def scene_attributes(scene: Scene) -> tuple[dict[str, str | int], ...]:
    """One attribute dict per object: what ``describe`` names (every template names every attribute)."""
    return tuple(object_attributes(obj) for obj in scene.objects)


def _as_attribute_dicts(
    caption_attributes: Mapping[str, object] | Sequence[Mapping[str, object]],
) -> list[Mapping[str, object]]:
    """One dict (a single object named) or several, checked: a list of dicts."""
    wanted = [caption_attributes] if isinstance(caption_attributes, Mapping) else list(caption_attributes)
    if not wanted:
        raise ValueError("caption_attributes is empty")
    for attributes in wanted:
        unknown = set(attributes) - set(ATTRIBUTE_KEYS)
        if unknown:
            raise ValueError(f"caption_attributes has unknown keys {sorted(unknown)}; choose from {ATTRIBUTE_KEYS}")
    return wanted


def caption_matches(caption_attributes: Mapping[str, object] | Sequence[Mapping[str, object]], scene: Scene) -> bool:
    """Whether the scene has, for each attribute dict, an object with all of its attributes (relations ignored)."""
    objects = [object_attributes(obj) for obj in scene.objects]
    return all(
        any(all(attributes.get(key) == value for key, value in wanted.items()) for attributes in objects)
        for wanted in _as_attribute_dicts(caption_attributes)
    )


def relevance(
    queries: Sequence[Mapping[str, object] | Sequence[Mapping[str, object]]], scenes: Sequence[Scene]
) -> Tensor:
    """relevant[q, i] = caption_matches(queries[q], scenes[i]): (Q, N) bool, for recall_at_k. Vectorised over scenes."""
    objects = [object_attributes(obj) for scene in scenes for obj in scene.objects]
    owner = np.repeat(np.arange(len(scenes)), [len(scene.objects) for scene in scenes])  # (objects,): its scene
    columns = {key: np.array([attributes.get(key) for attributes in objects], dtype=object) for key in ATTRIBUTE_KEYS}
    relevant = np.ones((len(queries), len(scenes)), dtype=bool)  # (Q, N)
    for index, query in enumerate(queries):
        for wanted in _as_attribute_dicts(query):
            match = np.ones(len(objects), dtype=bool)  # (objects,): has every wanted attribute
            for key, value in wanted.items():
                match &= columns[key] == value
            relevant[index] &= np.bincount(owner, weights=match, minlength=len(scenes)) > 0  # (N,): some object does
    return torch.from_numpy(relevant)  # (Q, N)


def colour_shape_classes(config: SceneConfig = SceneConfig()) -> list[tuple[str, str]]:
    """The (colour, shape) classes of zero-shot classification, colour-major: class c = colour * n_shapes + shape."""
    return [(colour, shape) for colour in config.colours for shape in config.shapes]


def class_prompts(config: SceneConfig = SceneConfig(), template: str = PROMPT_TEMPLATES[0]) -> list[str]:
    """One prompt per (colour, shape) class, in colour_shape_classes order: 'a photo of a red circle', ..."""
    if _template_fields(template) != {"colour", "shape"}:
        raise ValueError(f"template {template!r} must use exactly the fields {{colour}} and {{shape}}")
    return [_with_articles(template.format(colour=c, shape=s)) for c, s in colour_shape_classes(config)]


def scene_labels(scenes: Sequence[Scene], config: SceneConfig = SceneConfig()) -> dict[str, Tensor]:
    """Integer labels of each scene's first object (its only one when max_objects=1), each (N,); -1 = not applicable.

    colour, shape (-1 for digits), digit (-1 for shapes), size, position: indices into the config's tuples;
    class_index: colour * len(shapes) + shape, the zero-shot class (-1 for digits); held_out: bool.
    """
    rows = []
    for scene in scenes:
        obj = scene.objects[0]
        colour = config.colours.index(obj.colour)
        shape = config.shapes.index(obj.shape) if obj.kind == "shape" else -1
        rows.append(
            (
                colour,
                shape,
                obj.digit if obj.kind == "digit" else -1,
                config.sizes.index(obj.size),
                config.positions.index(obj.position),
                colour * len(config.shapes) + shape if shape >= 0 else -1,
            )
        )
    table = torch.tensor(rows, dtype=torch.int64).reshape(len(scenes), 6)  # (N, 6)
    names = ("colour", "shape", "digit", "size", "position", "class_index")
    labels = {name: table[:, column] for column, name in enumerate(names)}  # each (N,)
    labels["held_out"] = torch.tensor([scene.held_out for scene in scenes], dtype=torch.bool)  # (N,)
    return labels


class SceneCaptionDataset(Dataset):
    """Rendered scenes with ``captions_per_image`` captions each and their labels; item i is a dict.

    Images are rendered once and cached as one (N, 3, H, W) tensor. The captions of each image are drawn once, from
    distinct templates where there are enough; epoch e serves caption ``e % captions_per_image`` of every image
    (call ``set_epoch``), so each epoch pairs an image with another wording, deterministically, in any worker.
    """

    def __init__(
        self,
        count: int,
        config: SceneConfig = SceneConfig(),
        seed: int = 0,
        split: str = "train",
        captions_per_image: int = 5,
        templates: Sequence[str] = CAPTION_TEMPLATES,
    ) -> None:
        if not isinstance(captions_per_image, int) or captions_per_image < 1:
            raise ValueError(f"captions_per_image must be an int >= 1, got {captions_per_image!r}")
        self.config = config
        self.split = split
        self.scenes = generate_scenes(count, config, seed, split)
        self.images = render_scenes(self.scenes, config)  # (N, 3, H, W)
        rng = np.random.default_rng([seed, SPLITS.index(split), 1])  # captions: a stream apart from the scenes'
        self.captions: list[list[str]] = []
        for scene in self.scenes:
            order = rng.permutation(len(templates))  # distinct templates first
            chosen = [templates[order[j % len(templates)]] for j in range(captions_per_image)]
            self.captions.append([describe(scene, rng, (template,)) for template in chosen])
        self.attributes = [scene_attributes(scene) for scene in self.scenes]
        self.labels = scene_labels(self.scenes, config)  # each (N,)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Serve caption ``epoch % captions_per_image`` of every image from now on."""
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> dict[str, Tensor | str | int]:
        captions = self.captions[index]
        item: dict[str, Tensor | str | int] = {
            "image": self.images[index],  # (3, H, W)
            "caption": captions[self.epoch % len(captions)],
            "index": index,
        }
        item.update({name: values[index] for name, values in self.labels.items()})
        return item
