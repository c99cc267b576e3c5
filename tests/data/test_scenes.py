import itertools
import re

import numpy as np
import pytest
import torch

from mmcourse.data.digits import load_digits
from mmcourse.data.scenes import (
    CAPTION_TEMPLATES,
    PALETTE,
    POSITION_CELLS,
    WHERE,
    Scene,
    SceneCaptionDataset,
    SceneConfig,
    SceneObject,
    caption_matches,
    class_prompts,
    colour_shape_classes,
    describe,
    generate_scenes,
    is_held_out_object,
    object_coverage,
    relevance,
    render,
    render_scenes,
    scene_attributes,
    scene_labels,
)

MULTI = SceneConfig(min_objects=2, max_objects=3)


@pytest.fixture(scope="module", autouse=True)
def digit_images() -> None:
    """Import scikit-learn once up front (about 1.5 s), so that no single test pays for it."""
    load_digits()


def shape_object(
    colour: str = "red", shape: str = "circle", size: str = "small", position: str = "left"
) -> SceneObject:
    """A hand-made object at the centre of its cell."""
    row, column = POSITION_CELLS[position]
    centre = ((column + 0.5) * 16, (row + 0.5) * 16)
    return SceneObject(
        "shape", colour, shape, None, size, position, centre, 12.0 if size == "small" else 19.0, PALETTE[colour]
    )


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text))


# ---------------------------------------------------------------------------------------------------------------
# Determinism and splits
# ---------------------------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_scenes_images_and_captions() -> None:
    first = SceneCaptionDataset(60, seed=7, split="train")
    second = SceneCaptionDataset(60, seed=7, split="train")
    assert first.scenes == second.scenes
    assert torch.equal(first.images, second.images)
    assert first.captions == second.captions


def test_different_seed_or_split_gives_different_scenes() -> None:
    base = generate_scenes(30, seed=0, split="test")
    assert generate_scenes(30, seed=1, split="test") != base
    assert generate_scenes(30, seed=0, split="validation") != base
    assert not torch.equal(render_scenes(base), render_scenes(generate_scenes(30, seed=1, split="test")))


def test_a_longer_draw_starts_with_the_shorter_one() -> None:
    assert generate_scenes(50, MULTI, seed=3)[:20] == generate_scenes(20, MULTI, seed=3)


def test_rendering_is_deterministic_and_in_range() -> None:
    scene = generate_scenes(1, seed=5)[0]
    image = render(scene)  # (3, H, W)
    assert image.shape == (3, 48, 48) and image.dtype == torch.float32
    assert torch.equal(image, render(scene))
    assert image.min() >= 0 and image.max() <= 1
    assert render_scenes([scene]).shape == (1, 3, 48, 48)
    assert torch.equal(render_scenes([scene])[0], image)


def test_held_out_combinations_never_appear_in_train() -> None:
    config = SceneConfig()
    for scenes in (generate_scenes(3000, config, seed=0, split="train"), generate_scenes(500, MULTI, seed=1)):
        pairs = {(obj.colour, obj.shape) for scene in scenes for obj in scene.objects if obj.kind == "shape"}
        assert not pairs & set(config.held_out)
        assert len(pairs) == 18 - len(config.held_out), "every seen pair is drawn"
        assert not any(scene.held_out for scene in scenes)


@pytest.mark.parametrize("split", ["validation", "test"])
def test_evaluation_splits_hold_seen_and_held_out_combinations_flagged(split: str) -> None:
    config = SceneConfig()
    scenes = generate_scenes(600, config, seed=0, split=split)
    pairs = {(obj.colour, obj.shape) for scene in scenes for obj in scene.objects if obj.kind == "shape"}
    assert pairs == set(colour_shape_classes(config)), "all 18 pairs, held-out ones included"
    assert all(scene.held_out == any(is_held_out_object(obj, config) for obj in scene.objects) for scene in scenes)
    held_out = sum(scene.held_out for scene in scenes)
    assert 0.08 < held_out / len(scenes) < 0.2, "held-out pairs are drawn like the others: 3/18 of shapes"


def test_train_and_test_paste_different_handwriting() -> None:
    train = {scene.objects[0].digit_image for scene in generate_scenes(800, seed=0, split="train")} - {None}
    test = {scene.objects[0].digit_image for scene in generate_scenes(800, seed=0, split="test")} - {None}
    assert train and test and not train & test


def test_digits_can_be_turned_off() -> None:
    scenes = generate_scenes(200, SceneConfig(digits=False), seed=0)
    assert all(obj.kind == "shape" for scene in scenes for obj in scene.objects)
    assert any(obj.kind == "digit" for scene in generate_scenes(200, seed=0) for obj in scene.objects)


# ---------------------------------------------------------------------------------------------------------------
# Geometry and colour
# ---------------------------------------------------------------------------------------------------------------


def test_objects_sit_in_their_named_cell_and_inside_the_image() -> None:
    for scene in generate_scenes(300, MULTI, seed=2, split="test"):
        positions = [obj.position for obj in scene.objects]
        assert len(set(positions)) == len(positions), "one object per cell"
        for obj in scene.objects:
            row, column = POSITION_CELLS[obj.position]
            x, y = obj.centre
            assert column * 16 <= x < (column + 1) * 16 and row * 16 <= y < (row + 1) * 16
            assert obj.extent / 2 <= x <= 48 - obj.extent / 2 and obj.extent / 2 <= y <= 48 - obj.extent / 2


def test_objects_do_not_overlap() -> None:
    config = MULTI
    scenes = generate_scenes(300, config, seed=4, split="test")
    assert {len(scene.objects) for scene in scenes} == {2, 3}
    for scene in scenes:
        for first, second in itertools.combinations(scene.objects, 2):
            overlap = (object_coverage(first, config) > 0) & (object_coverage(second, config) > 0)  # (H, W)
            assert not overlap.any()


def test_large_objects_are_larger_than_small_ones() -> None:
    objects = [scene.objects[0] for scene in generate_scenes(400, SceneConfig(digits=False), seed=0)]
    small = max(obj.extent for obj in objects if obj.size == "small")
    large = min(obj.extent for obj in objects if obj.size == "large")
    assert large > 1.4 * small


def test_rendered_colour_is_closest_to_the_named_colour() -> None:
    config = MULTI
    for scene in generate_scenes(150, config, seed=0, split="test"):
        image = render(scene, config).numpy()  # (3, H, W)
        for obj in scene.objects:
            inside = object_coverage(obj, config) > 0.95  # (H, W)
            assert inside.sum() >= 4
            mean = image[:, inside].mean(axis=1)  # (3,)
            distances = {name: np.linalg.norm(mean - np.array(PALETTE[name])) for name in config.colours}
            assert min(distances, key=distances.get) == obj.colour


def test_shapes_cover_the_expected_area() -> None:
    config = SceneConfig(antialias=False)
    areas = {}
    for shape in ("circle", "square", "triangle"):
        obj = shape_object(shape=shape, size="large", position="centre")
        areas[shape] = object_coverage(obj, config).sum() / obj.extent**2
    assert areas["square"] == pytest.approx(1.0, abs=0.12)
    assert areas["circle"] == pytest.approx(np.pi / 4, abs=0.08)
    assert areas["triangle"] == pytest.approx(0.5, abs=0.08)


# ---------------------------------------------------------------------------------------------------------------
# Captions, attributes, labels
# ---------------------------------------------------------------------------------------------------------------


def assert_caption_names(caption: str, scene: Scene, config: SceneConfig) -> None:
    """Every attribute of every object is in the caption, and no colour, shape or size the scene lacks."""
    for obj in scene.objects:
        assert obj.colour in words(caption) and obj.size in words(caption)
        assert obj.name in caption and WHERE[obj.position] in caption
    named = words(caption)
    assert named & set(config.colours) == {obj.colour for obj in scene.objects}
    assert named & set(config.shapes) == {obj.shape for obj in scene.objects} - {None}
    assert named & set(config.sizes) == {obj.size for obj in scene.objects}


@pytest.mark.parametrize("config", [SceneConfig(), MULTI], ids=["one object", "several objects"])
def test_captions_name_every_attribute_and_nothing_else(config: SceneConfig) -> None:
    rng = np.random.default_rng(0)
    for scene in generate_scenes(200, config, seed=0, split="test"):
        for _ in range(3):
            assert_caption_names(describe(scene, rng), scene, config)


def test_every_template_is_used_and_names_every_attribute() -> None:
    scene = Scene((shape_object("yellow", "triangle", "large", "top"),), noise_seed=0, held_out=False)
    rng = np.random.default_rng(0)
    for template in CAPTION_TEMPLATES:
        caption = describe(scene, rng, (template,))
        assert_caption_names(caption, scene, SceneConfig())
    assert len({describe(scene, rng) for _ in range(200)}) == len(CAPTION_TEMPLATES)


def test_digit_captions_name_the_digit_in_words() -> None:
    digit = SceneObject("digit", "blue", None, 7, "large", "centre", (24.0, 24.0), 25.0, PALETTE["blue"], 7)
    caption = describe(Scene((digit,), 0, False), np.random.default_rng(0))
    assert "digit seven" in caption and "blue" in caption


def test_relation_captions_are_true() -> None:
    rng = np.random.default_rng(0)
    relations = {"to the left of": (0, -1), "to the right of": (0, 1), "above": (1, -1), "below": (1, 1)}
    seen = set()
    for scene in generate_scenes(200, SceneConfig(min_objects=2, max_objects=2), seed=0):
        caption = describe(scene, rng)
        for relation, (axis, sign) in relations.items():
            if f", {relation} " in caption:
                first, second = scene.objects
                assert sign * (first.centre[axis] - second.centre[axis]) > 0, caption
                seen.add(relation)
    assert seen == set(relations)


def test_captions_use_an_before_vowels() -> None:
    config = SceneConfig(colours=("orange", "red"), held_out=())
    scene = Scene((shape_object("orange", "circle", "small", "left"),), noise_seed=0, held_out=False)
    assert describe(scene, np.random.default_rng(0), ("a {colour} {name}, {size}, {where}",)).startswith("an orange")
    assert class_prompts(config, "a {colour} {shape}")[0] == "an orange circle"


def test_describe_rejects_a_template_that_leaves_out_an_attribute() -> None:
    scene = generate_scenes(1)[0]
    with pytest.raises(ValueError, match=r"templates\[1\]"):
        describe(scene, np.random.default_rng(0), ("a {size} {colour} {name} {where}", "a {colour} {name}"))


def test_caption_matches_and_relevance() -> None:
    small_red_circle = Scene((shape_object("red", "circle", "small", "left"),), 0, False)
    large_red_circle = Scene((shape_object("red", "circle", "large", "right"),), 0, False)
    pair = Scene(
        (shape_object("blue", "square", "small", "left"), shape_object("red", "triangle", "large", "right")), 0, False
    )
    assert caption_matches({"colour": "red", "shape": "circle"}, small_red_circle)
    assert not caption_matches({"colour": "red", "size": "large"}, small_red_circle)
    assert caption_matches(scene_attributes(pair), pair)
    assert caption_matches({"colour": "red", "position": "right"}, pair)
    assert not caption_matches({"colour": "red", "position": "left"}, pair), "attributes of one object, not any"
    assert not caption_matches([{"shape": "square"}, {"shape": "circle"}], pair)
    queries = [{"colour": "red", "shape": "circle"}, scene_attributes(small_red_circle)[0], {"shape": "triangle"}]
    expected = torch.tensor([[True, True, False], [True, False, False], [False, False, True]])
    assert torch.equal(relevance(queries, [small_red_circle, large_red_circle, pair]), expected)
    with pytest.raises(ValueError, match="unknown keys"):
        caption_matches({"color": "red"}, pair)


def test_relevance_agrees_with_caption_matches_on_many_scenes() -> None:
    scenes = generate_scenes(120, MULTI, seed=6, split="test")
    queries = [scene_attributes(scene) for scene in scenes[:20]] + [scene_attributes(scene)[0] for scene in scenes[:20]]
    queries += [{"colour": "red"}, {"digit": 3}, {"shape": "circle", "size": "large"}]
    expected = torch.tensor([[caption_matches(query, scene) for scene in scenes] for query in queries])
    relevant = relevance(queries, scenes)
    assert torch.equal(relevant, expected)
    assert relevant[:40].any(dim=-1).all(), "a scene's own attributes always match it"


def test_class_prompts_follow_the_class_index_of_the_labels() -> None:
    config = SceneConfig()
    prompts = class_prompts(config)
    assert len(prompts) == 18 and prompts[0] == "a photo of a red circle" and len(set(prompts)) == 18
    scenes = generate_scenes(200, config, seed=0, split="test")
    labels = scene_labels(scenes, config)
    for scene, class_index in zip(scenes, labels["class_index"].tolist(), strict=True):
        obj = scene.objects[0]
        if obj.kind == "digit":
            assert class_index == -1
        else:
            assert prompts[class_index] == f"a photo of a {obj.colour} {obj.shape}"
    with pytest.raises(ValueError, match="template"):
        class_prompts(config, "a photo of a {colour}")


def test_dataset_items_labels_and_caption_per_epoch() -> None:
    dataset = SceneCaptionDataset(40, seed=0, split="test", captions_per_image=3)
    assert len(dataset) == 40 and dataset.images.shape == (40, 3, 48, 48)
    item = dataset[5]
    assert item["image"].shape == (3, 48, 48) and item["caption"] == dataset.captions[5][0]
    assert len(set(dataset.captions[5])) == 3, "distinct templates"
    obj = dataset.scenes[5].objects[0]
    config = dataset.config
    assert item["colour"] == config.colours.index(obj.colour)
    assert item["size"] == config.sizes.index(obj.size) and item["position"] == config.positions.index(obj.position)
    assert bool(item["held_out"]) == dataset.scenes[5].held_out
    dataset.set_epoch(4)
    assert dataset[5]["caption"] == dataset.captions[5][1]
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=8)))
    assert batch["image"].shape == (8, 3, 48, 48) and len(batch["caption"]) == 8 and batch["class_index"].shape == (8,)
    assert dataset.attributes[5] == scene_attributes(dataset.scenes[5])
    with pytest.raises(ValueError, match="epoch"):
        dataset.set_epoch(-1)
    with pytest.raises(ValueError, match="captions_per_image"):
        SceneCaptionDataset(4, captions_per_image=0)


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("image_size", 8),
        ("colours", ("red", "mauve")),
        ("colours", ("red", "red")),
        ("shapes", ("hexagon",)),
        ("sizes", ("huge",)),
        ("positions", ("middle",)),
        ("digit_fraction", 1.5),
        ("max_objects", 0),
        ("max_objects", 6),
        ("held_out", (("green", "hexagon"),)),
        ("position_jitter", 20.0),
        ("size_jitter", 0.9),
        ("colour_jitter", -0.1),
        ("noise_std", 2.0),
        ("background", 1.5),
    ],
)
def test_config_errors_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        SceneConfig(**{field: value})


def test_holding_out_every_pair_is_an_error() -> None:
    with pytest.raises(ValueError, match="held_out"):
        SceneConfig(colours=("red", "green"), shapes=("circle",), held_out=(("red", "circle"), ("green", "circle")))


@pytest.mark.parametrize(
    ("arguments", "field"), [({"count": -1}, "count"), ({"split": "dev"}, "split"), ({"seed": -3}, "seed")]
)
def test_generate_scenes_errors_name_the_argument(arguments: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        generate_scenes(**{"count": 2, **arguments})


def test_an_impossible_layout_says_so() -> None:
    crowded = SceneConfig(
        shapes=("square",),
        sizes=("large",),
        positions=("left", "centre", "right"),
        held_out=(),
        digits=False,
        max_objects=3,
    )
    with pytest.raises(RuntimeError, match="could not place"):
        generate_scenes(1, SceneConfig(**{**crowded.__dict__, "min_objects": 3}))
