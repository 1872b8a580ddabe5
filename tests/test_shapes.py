"""The procedural shapes task: determinism, format, balance, sizes, and what each factor means."""
import numpy as np
import pytest
import torch

from archdsl.search.shapes import (HOLE, MIN_DISTANCE, RELATIONS, SHAPES, SHAPES_CLASSES, TEXTURES, generate_shapes,
                                   make_shapes)


@pytest.fixture(scope="module")
def sample():
    return generate_shapes(600, seed=7, size=32)


def test_same_seed_is_bit_identical_and_other_seeds_differ():
    x1, y1 = make_shapes(96, seed=3)
    x2, y2 = make_shapes(96, seed=3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x3, y3 = make_shapes(96, seed=4)
    assert not torch.equal(x1, x3)
    assert not torch.equal(y1, y3)


def test_global_random_state_untouched():
    torch.manual_seed(0)
    np.random.seed(0)
    expected_torch, expected_numpy = torch.rand(3), np.random.rand(3)
    torch.manual_seed(0)
    np.random.seed(0)
    make_shapes(24, seed=1)
    assert torch.equal(torch.rand(3), expected_torch)
    assert np.array_equal(np.random.rand(3), expected_numpy)


def test_shapes_dtypes_and_values(sample):
    x, y = sample.images, sample.labels
    assert x.shape == (600, 3, 32, 32) and x.dtype == torch.uint8
    assert y.shape == (600,) and y.dtype == torch.int64
    assert int(y.min()) >= 0 and int(y.max()) < len(SHAPES_CLASSES)
    assert int(x.min()) < 30 and int(x.max()) > 225      # the range is used, not a constant image
    assert float(x.float().std(dim=(1, 2, 3)).min()) > 5  # every image has structure


def test_classes_balanced_and_all_present():
    _, y = make_shapes(1000, seed=0)
    counts = torch.bincount(y, minlength=len(SHAPES_CLASSES))
    k = len(SHAPES_CLASSES)
    assert int(counts.min()) >= 1000 // k and int(counts.max()) <= 1000 // k + 1
    _, y = make_shapes(k, seed=5)
    assert sorted(y.tolist()) == list(range(k))
    assert len(set(SHAPES_CLASSES)) == k == len(SHAPES) * len(TEXTURES) * len(RELATIONS) == 8


def test_labels_are_shuffled():
    _, y = make_shapes(120, seed=2)
    assert not torch.equal(y, torch.arange(120) % len(SHAPES_CLASSES))


def test_class_names_match_factors(sample):
    for label, shape, texture, relation in zip(sample.labels.tolist(), sample.shape, sample.texture, sample.relation):
        assert SHAPES_CLASSES[label] == f"{SHAPES[shape]}/{TEXTURES[texture]}/{RELATIONS[relation]}"


@pytest.mark.parametrize("size", [16, 64])
def test_other_sizes(size):
    x, y = make_shapes(24, seed=1, size=size)
    assert x.shape == (24, 3, size, size) and x.dtype == torch.uint8
    assert sorted(torch.bincount(y).tolist()) == [3] * 8


@pytest.mark.parametrize("size", [0, 8, 15])
def test_small_sizes_refused(size):
    with pytest.raises(ValueError, match="at least 16"):
        make_shapes(4, seed=0, size=size)


def test_zero_count():
    x, y = make_shapes(0, seed=0)
    assert x.shape == (0, 3, 32, 32) and y.shape == (0,)


def test_relation_is_colour_family_match(sample):
    """same-colour: both objects from one family (warm or cool); diff-colour: one of each."""
    same = sample.family[:, 0] == sample.family[:, 1]
    assert np.array_equal(same, sample.relation == 0)
    # the families are what they say: warm colours redder than blue, cool ones bluer than red
    warm = sample.colours[sample.family == 0]
    cool = sample.colours[sample.family == 1]
    assert (warm[:, 0] > warm[:, 2]).all() and (cool[:, 2] > cool[:, 0]).all()


def test_objects_apart_and_inside(sample):
    c, r = sample.centres, sample.radii
    distance = np.hypot(*(c[:, 0] - c[:, 1]).T)
    assert (distance >= r.sum(axis=1) + 1 - 1e-9).all()          # never overlapping
    assert (distance >= MIN_DISTANCE * 32 - 1e-9).all()          # far apart
    assert (c - r[..., None] >= -1e-9).all() and (c + r[..., None] <= 32 + 1e-9).all()


def _pixel(sample, i, y, x):
    return sample.images[i, :, int(y), int(x)].float().numpy() / 255


def test_shape_disc_filled_ring_hollow(sample):
    """At an object's centre a disc shows its colour, a ring the background through its hole; halfway
    between the hole and the rim both show the colour."""
    centre_match, rim_match = [], []
    for i in range(len(sample.labels)):
        for k in range(2):
            y, x = sample.centres[i, k]
            if sample.radii[i, k] < 4.5 or _near_dot(sample, i, y, x):
                continue
            colour = sample.colours[i, k]
            centre_match.append((sample.shape[i], np.abs(_pixel(sample, i, y, x) - colour).max() < 0.2))
            rim = y + sample.radii[i, k] * (1 + HOLE) / 2
            rim_match.append(np.abs(_pixel(sample, i, rim, x) - colour).max() < 0.2)
    centre_match = np.array(centre_match)
    discs, rings = centre_match[centre_match[:, 0] == 0, 1], centre_match[centre_match[:, 0] == 1, 1]
    assert len(discs) > 50 and len(rings) > 50
    assert discs.mean() > 0.95 and rings.mean() < 0.1
    assert np.mean(rim_match) > 0.95


def _near_dot(sample, i, y, x, margin=2):
    d = sample.dots[i]
    return bool(((np.abs(d[:, 0] + sample.dot_size / 2 - y) < margin + sample.dot_size)
                 & (np.abs(d[:, 1] + sample.dot_size / 2 - x) < margin + sample.dot_size)).any())


def test_texture_orientation(sample):
    """On the background, horizontal stripes vary down the columns and not along the rows, vertical
    stripes the reverse."""
    x = sample.images.float()
    down = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs()   # neighbours one row apart
    across = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs()
    # background only: leave out every pixel within reach of an object or a dot
    yy, xx = np.mgrid[0:32, 0:32] + 0.5
    mask = np.ones((len(x), 32, 32), bool)
    for k in range(2):
        d = np.hypot(yy[None] - sample.centres[:, k, 0, None, None], xx[None] - sample.centres[:, k, 1, None, None])
        mask &= d > sample.radii[:, k, None, None] + 2
    for k in range(sample.dots.shape[1]):
        near = ((np.abs(yy[None] - sample.dots[:, k, 0, None, None]) < 4) & (np.abs(xx[None] - sample.dots[:, k, 1, None, None]) < 4))
        mask &= ~near
    m = torch.from_numpy(mask)
    md, ma = (m[:, 1:, :] & m[:, :-1, :]).float()[:, None], (m[:, :, 1:] & m[:, :, :-1]).float()[:, None]
    ratio = ((down * md).sum(dim=(1, 2, 3)) / md.sum(dim=(1, 2, 3)).clamp_min(1)
             / ((across * ma).sum(dim=(1, 2, 3)) / ma.sum(dim=(1, 2, 3)).clamp_min(1))).numpy()
    stripes_h, stripes_v = (ratio[sample.texture == t] for t in range(len(TEXTURES)))
    assert len(stripes_h) > 200 and len(stripes_v) > 200
    assert (stripes_h > 1.2).mean() > 0.95
    assert (stripes_v < 1 / 1.2).mean() > 0.95


def test_stripe_period_scales_with_size():
    assert generate_shapes(1, seed=0, size=16).period == 2
    assert generate_shapes(1, seed=0, size=32).period == 4
    assert generate_shapes(1, seed=0, size=64).period == 8
