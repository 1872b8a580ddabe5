"""A procedurally generated image-classification task whose classes need evidence at three ranges.

``make_shapes(count, seed, size=32)`` draws ``count`` RGB images (uint8, ``size x size``) and their labels,
deterministically from ``seed`` (NumPy's PCG64; no global random state is touched, nothing is downloaded).
Every image shows a textured background, two coloured objects and two small distractor dots; its class is
the product of three factors, each needing evidence at a different range:

- **texture** (local, a few pixels): the background carries stripes, horizontal (``stripes-h``) or
  vertical (``stripes-v``), of period ``size / 8`` pixels (4 at 32x32, one period per 4x4 patch), at a
  per-image contrast of 0.08-0.16 (pixel values in [0, 1]) under Gaussian pixel noise of 0.04. Every
  background patch holds the evidence, so one token suffices.
- **shape** (object-scale, several patches): both objects are filled ``disc``s or both are ``ring``s (a
  disc with a concentric hole of 0.55 of its radius, where the background shows through). Telling a ring
  from a disc needs the object's interior together with its outline, 2-4 patches across at 32x32.
- **relation** (long range, across the image): each object's colour is drawn from one of two families,
  warm (hues red to yellow) or cool (cyan to blue), with its own hue, saturation and brightness jitter.
  ``same-colour``: both objects are of the same family; ``diff-colour``: one warm, one cool. The objects
  never overlap and their centres lie at least ``0.3 * size`` apart (usually much further). No single
  location tells the two cases apart: per location the evidence is "a warm object is here", and the
  classes differ only in what lies elsewhere. A model that pools location-wise features without mixing
  tokens cannot separate them (for any per-location feature map ``f``, ``f(warm) + f(cool)`` is the
  midpoint of ``2 f(warm)`` and ``2 f(cool)``, so no linear read-out of the pooled features separates
  same from different: an XOR); it needs token mixing whose reach spans both objects, or a hierarchy of
  downsampling deep enough that one token sees both.

Classes (8): ``SHAPES_CLASSES[label]`` is ``"{shape}/{texture}/{relation}"`` with
``label = (shape * 2 + texture) * 2 + relation`` (shape: disc, ring; texture: stripes-h, stripes-v;
relation: same-colour, diff-colour). Labels cycle through the classes (``i % 8``) and are then shuffled
with the seed, so every class holds ``count // 8`` or one more images.

Nuisance variation, so that no single pixel or statistic gives a class away: the object positions
(uniform over the canvas), the background's grey level (0.2-0.6), a slight colour tint and a linear
brightness gradient in a random direction, the stripe phase, each object's colour within its family,
and two 2x2 (at 32x32) dots of random hue at random places, which disturb any global colour histogram.

**Difficulty continuum.** Each image draws a difficulty ``d = u**3`` (``u`` uniform), so most images are
easy and a tail is hard: the object radius goes from ``0.24 * size`` (easy) down to ``0.11 * size``
(hard), +-10% per object. Small objects make both the shape (a hole of 1-2 pixels at 32x32) and the
relation (few pixels of colour in a coarse token) harder, so accuracy grows with a model's resolution and
capacity rather than jumping once a feature is found.

Design decisions, from pilots (3 epochs, AdamW lr 2e-3, 5,000 training images, tiny archdsl models):

- Edge-based shapes (circle vs square vs triangle, rotated) and texture on small objects were not learned
  at all in 3 epochs by any small model; disc vs ring and full-background textures are. Evidence must
  cover many tokens to be picked up in ~240 steps.
- Hue matching with 6 hues was never learned in 3 epochs; two colour families (effectively an XOR of
  two values) are, by models that mix tokens, while models without token mixing stay at chance.
- The texture factor is easy for every model (it keeps the task multi-range and costs no accuracy); the
  spread between architectures comes from the relation (reach) and the shape (resolution, capacity).
  A third texture (a checker board) was tried and dropped: it is learned late and erratically by models
  that mix tokens early.
- Seed noise is the model's, not the data's: trained without warmup or gradient clipping, a model with
  token mixing in its first stages learned the relation in some training seeds and stayed at chance on
  it in others (0.93 or 0.56 for the same architecture; an earlier draft showed the same on noise-free
  images). With the search's training (one warmup epoch, gradients clipped at norm 1) the same
  architectures are stable: seed std 0.001-0.004 at 8 epochs on ``search/mixer_placement.yaml``.
  Accuracy without any token mixing is about 0.49 (texture and shape learned, relation at chance),
  with it up to about 0.94.
- Geometry scales with ``size``: radii, distances, stripe period (``max(2, round(size / 8))``) and dot
  size (``max(1, round(size / 16))``); below 16 pixels the stripe period and dots no longer resolve, so
  smaller sizes are refused.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MIN_SIZE = 16
SHAPES = ("disc", "ring")
TEXTURES = ("stripes-h", "stripes-v")
RELATIONS = ("same-colour", "diff-colour")
SHAPES_CLASSES: tuple[str, ...] = tuple(f"{s}/{t}/{r}" for s in SHAPES for t in TEXTURES for r in RELATIONS)

NOISE = 0.04                  # std of the Gaussian pixel noise
TEXTURE_CONTRAST = (0.08, 0.16)
RADIUS_EASY, RADIUS_HARD = 0.24, 0.11   # object radius in units of size, at difficulty 0 and 1
DIFFICULTY_POWER = 3.0        # difficulty = uniform ** power: mostly easy images, a hard tail
HOLE = 0.55                   # ring's inner radius / outer radius
MIN_DISTANCE = 0.3            # minimum distance of the object centres, in units of size
DOTS = 2
WARM = (-0.06, 0.14)          # hue ranges (HSV hue in [0, 1)) of the two colour families
COOL = (0.45, 0.67)


@dataclass(frozen=True)
class ShapesSample:
    """Images and labels with the factors and geometry behind them (NumPy arrays, one row per image)."""

    images: torch.Tensor      # uint8 (N, 3, S, S)
    labels: torch.Tensor      # int64 (N,)
    shape: np.ndarray         # (N,) index into SHAPES
    texture: np.ndarray       # (N,) index into TEXTURES
    relation: np.ndarray      # (N,) index into RELATIONS: 0 same colour family, 1 different
    centres: np.ndarray       # (N, 2, 2) object centres (y, x) in pixels
    radii: np.ndarray         # (N, 2) object radii in pixels
    family: np.ndarray        # (N, 2) colour family per object: 0 warm, 1 cool
    colours: np.ndarray       # (N, 2, 3) object colours in [0, 1] (before noise)
    dots: np.ndarray          # (N, DOTS, 2) top-left corners (y, x) of the distractor dots
    dot_size: int
    period: int               # stripe period in pixels


def make_shapes(count: int, seed: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 (count, 3, size, size), labels int64 (count,))``: ``count`` images of the 8
    ``SHAPES_CLASSES`` (shape x background texture x colour relation of the two objects; see the module
    docstring), balanced (class counts differ by at most one) and shuffled, bit-identical for the same
    ``(count, seed, size)``. ``size`` >= 16; geometry scales with it."""
    sample = generate_shapes(count, seed, size)
    return sample.images, sample.labels


def generate_shapes(count: int, seed: int, size: int = 32) -> ShapesSample:
    """``make_shapes`` with the factors and geometry of every image (for tests and inspection)."""
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} pixels (got {size}): below that the stripe "
                         "texture and the distractor dots no longer resolve")
    if count < 0:
        raise ValueError(f"count must be non-negative (got {count})")
    rng = np.random.Generator(np.random.PCG64(seed))
    n, s = int(count), int(size)
    labels = rng.permutation(np.arange(n) % len(SHAPES_CLASSES))
    relation = labels % 2
    texture = (labels // 2) % len(TEXTURES)
    shape = labels // (2 * len(TEXTURES))

    yy, xx = np.mgrid[0:s, 0:s]
    yc = (yy + 0.5).astype(np.float32)
    xc = (xx + 0.5).astype(np.float32)

    # background: grey level with a slight tint, a linear gradient, and the texture
    grey = rng.uniform(0.2, 0.6, (n, 1, 1, 1)).astype(np.float32)
    tint = rng.uniform(-0.04, 0.04, (n, 3, 1, 1)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    slope = rng.uniform(0, 0.12, n).astype(np.float32)
    gy = (np.sin(angle) * slope)[:, None, None]
    gx = (np.cos(angle) * slope)[:, None, None]
    gradient = gy * (yc / s - 0.5) + gx * (xc / s - 0.5)                # (n, s, s)
    period = max(2, round(s / 8))
    half = period // 2
    phase = rng.integers(0, period, (n, 2))
    rows = ((yy[None] + phase[:, 0, None, None]) % period) < half
    cols = ((xx[None] + phase[:, 1, None, None]) % period) < half
    pattern = np.where((texture == 0)[:, None, None], rows, cols)
    contrast = rng.uniform(*TEXTURE_CONTRAST, n).astype(np.float32)[:, None, None]
    luminance = gradient + np.where(pattern, contrast / 2, -contrast / 2)
    img = grey + tint + luminance[:, None]                             # (n, 3, s, s)

    # two objects: radii from the difficulty, placed apart, colours from the families
    difficulty = rng.random(n) ** DIFFICULTY_POWER
    base = RADIUS_EASY + (RADIUS_HARD - RADIUS_EASY) * difficulty
    radii = (base[:, None] * rng.uniform(0.9, 1.1, (n, 2)) * s).astype(np.float32)
    centres = _place(rng, radii, s, MIN_DISTANCE * s)
    first = rng.integers(0, 2, n)
    family = np.stack([first, np.where(relation == 0, first, 1 - first)], axis=1)
    hue = np.where(family == 0, rng.uniform(*WARM, (n, 2)), rng.uniform(*COOL, (n, 2))) % 1.0
    colours = _hsv_to_rgb(hue, rng.uniform(0.65, 1.0, (n, 2)), rng.uniform(0.7, 1.0, (n, 2)))
    ring = (shape == 1)[:, None, None]
    for k in range(2):
        d2 = (yc[None] - centres[:, k, 0, None, None]) ** 2 + (xc[None] - centres[:, k, 1, None, None]) ** 2
        r2 = (radii[:, k] ** 2)[:, None, None]
        inside = (d2 <= r2) & ~(ring & (d2 < HOLE * HOLE * r2))
        img = np.where(inside[:, None], colours[:, k, :, None, None], img)

    # distractor dots of any hue
    dot = max(1, round(s / 16))
    dots = rng.integers(0, s - dot + 1, (n, DOTS, 2))
    dot_colours = _hsv_to_rgb(rng.random((n, DOTS)), rng.uniform(0.65, 1.0, (n, DOTS)), rng.uniform(0.7, 1.0, (n, DOTS)))
    index = np.arange(n)
    for k in range(DOTS):
        for dy in range(dot):
            for dx in range(dot):
                img[index, :, dots[:, k, 0] + dy, dots[:, k, 1] + dx] = dot_colours[:, k]

    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(NOISE)
    images = torch.from_numpy(np.rint(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8))
    return ShapesSample(images, torch.from_numpy(labels.astype(np.int64)), shape, texture, relation, centres, radii,
                        family, colours, dots, dot, period)


def _place(rng: np.random.Generator, radii: np.ndarray, size: int, min_distance: float, draws: int = 64,
           rounds: int = 50) -> np.ndarray:
    """Centres ``(N, 2, 2)`` (y, x) for two discs of ``radii`` (N, 2): inside the canvas, not overlapping (a
    pixel apart), at least ``min_distance`` apart. Vectorised rejection sampling; an image still unplaced
    after ``rounds`` gets its discs in opposite corners (always valid for the radii used here)."""
    n = len(radii)
    centres = np.zeros((n, 2, 2))
    todo = np.arange(n)
    for _ in range(rounds):
        if not len(todo):
            return centres
        r = radii[todo].astype(np.float64)
        lo = r[:, None, :, None]                                           # (m, 1, 2, 1)
        trial = lo + (size - 2 * lo) * rng.random((len(todo), draws, 2, 2))
        gap = np.hypot(*(trial[:, :, 0] - trial[:, :, 1]).transpose(2, 0, 1))   # (m, draws)
        ok = gap >= np.maximum(min_distance, r.sum(axis=1) + 1)[:, None]
        pick = np.argmax(ok, axis=1)
        good = ok[np.arange(len(todo)), pick]
        centres[todo[good]] = trial[np.arange(len(todo)), pick][good]
        todo = todo[~good]
    for i in todo:
        a, b = radii[i]
        centres[i] = [[a, a], [size - b, size - b]]
    return centres


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """HSV in [0, 1] to RGB, elementwise over any shape; a trailing axis of 3 added."""
    i = np.floor(h * 6).astype(np.int64) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], axis=-1).astype(np.float32)
