"""Images for the search's trainer and zero-cost proxies, through one interface, :class:`ImageData`:
``train_batches(batch, seed)`` (one shuffled epoch), ``val_batches(batch, count)`` (the whole validation
split, or a fixed subset of ``count`` images, in a fixed order) and ``sample(count)`` (a fixed batch of training images). Batches are CPU tensors, images
float32 ``(N, C, H, W)`` normalised, labels int64; the trainer moves them to its device itself.
:func:`open_data` picks the kind:

* ``"digits"``: scikit-learn's 1,797 8x8 greyscale digits (shipped with scikit-learn, nothing
  downloaded), upscaled bilinearly to the search input, split 80/20 stratified with ``SPLIT_SEED``.
* ``"shapes"``: the procedural data set of :mod:`archdsl.search.shapes`: 5,000 training images
  (``make_shapes`` seed 1) and 10,000 validation images (seed 2), drawn at the input size when the input is
  square, else at ``max(height, width)`` (at least ``SHAPES_MIN_SIZE``) and resized bilinearly.
* any other string: a folder of images, in one of two layouts (a built-in name wins; write ``./digits``
  for a folder of that name):

  - the ImageNet layout, ``DIR/train/<class>/*.jpg`` and ``DIR/val/<class>/*.jpg`` (or
    ``DIR/validation/``), used as the split. The classes are train's; val may lack some, but a val class
    that train lacks is refused. Other folders beside the splits (``test/``, say) are ignored.
  - class folders, ``DIR/<class>/*.jpg``, split 80/20 stratified with ``SPLIT_SEED`` over the file list
    (nothing decoded to split). Images directly in ``DIR`` are ignored, as torchvision's ImageFolder does.

  Class folders and files are found as torchvision's ImageFolder finds them (sorted, recursive, its
  image extensions; hidden entries skipped), and the class index is the position in the sorted list.

Folders are refused with a :class:`DataError` naming the problem (:func:`check_folder` runs these checks
for the command line): a missing path (a :class:`MissingData`, also a ``FileNotFoundError``); the
parent-folder trap, a folder holding ``train/``, ``val/`` or ``validation/`` that is not a whole ImageNet
layout (no train/, no val/, both val/ and validation/, or a split holding images but no class folders),
which would otherwise train a 2-class problem under the search's head; fewer than 2 classes; a class
folder holding no images (named); fewer than ``MIN_IMAGES`` images; a val class that train lacks; and a
model input of other than 1 (read as greyscale) or 3 (RGB) channels.

What is held in memory, and when:

* digits and shapes are always held (:class:`InMemoryImages`): the raw images (digits as float 8x8,
  shapes as uint8 at the drawn size), cached per data set and geometry with ``functools.lru_cache``;
  each batch is resized, matched to the channels (repeated or averaged) and standardised by the training
  split's per-channel mean and std as it is served. ``augment=True`` shifts each training image by up to
  1/8 of its size (zero padding, i.e. the training mean; no flips: digits and shapes need not be
  mirror-symmetric).
* a folder whose images, decoded at the input geometry as uint8, take less than ``memory_limit`` bytes
  and that is opened without ``augment`` is decoded once and held too (an :class:`InMemoryImages`
  serving exactly what streaming would serve).
* any other folder is streamed (:class:`FolderImages`): only the file list is held, and images are
  decoded per batch by a ``torch.utils.data.DataLoader`` with ``workers`` worker processes (pinned
  memory only when CUDA is available), through ``timm.data.create_transform``: without augmentation, a
  plain resize to the input (no crop), ``ToTensor`` and ``Normalize``; with it, timm's training
  transform (random resized crop, flip, colour jitter) on the training split. Folders are normalised
  by ImageNet's mean and std (for 1 channel, those weighted as the luma), whether streamed or held.

Determinism: ``train_batches(batch, seed)`` orders the epoch by a ``torch.Generator`` seeded by ``seed``,
and augments each image from a seed drawn from it, so an epoch is a function of the seed alone (whatever
the number of workers); the global random states are left as they were. ``val_batches`` (a subset:
``SAMPLE_SEED``'s first ``count`` validation images, in split order) and ``sample`` (``SAMPLE_SEED``'s
first ``count`` training images, unaugmented) never change. :func:`open_data` is cached
too, so the trials of one process share one data set.
"""
from __future__ import annotations

import abc
import dataclasses
import functools
import math
import numbers
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

VAL_FRACTION = 0.2
SPLIT_SEED = 0  # the split never changes with the search's seed
SAMPLE_SEED = 0  # nor does the proxies' batch
MIN_IMAGES = 10
BUILTIN_DATASETS = ("digits", "shapes")
SHAPES_TRAIN = (5000, 1)  # (count, make_shapes seed)
SHAPES_VAL = (10000, 2)  # large, so a final accuracy's sampling noise is small (binomial std 0.002 at 0.95)
SHAPES_MIN_SIZE = 16
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
SPLIT_FOLDERS = ("train", "val", "validation")
LUMA = (0.299, 0.587, 0.114)  # PIL's convert("L")

Batch = tuple[torch.Tensor, torch.Tensor]


class DataError(ValueError):
    """A data set that cannot be served, with the reason."""


class MissingData(DataError, FileNotFoundError):
    """The data set's path does not exist."""


class ImageData(abc.ABC):
    """Normalised images and int64 labels in batches, on the CPU; see the module's docstring."""

    name: str
    classes: int
    class_names: list[str]
    train_size: int
    val_size: int
    channels: int
    height: int
    width: int

    @abc.abstractmethod
    def train_batches(self, batch: int, seed: int) -> Iterator[Batch]:
        """One epoch of the training split, shuffled (and augmented if opened so); the order is fixed by
        ``seed``. The last batch may be smaller."""

    @abc.abstractmethod
    def val_batches(self, batch: int, count: int | None = None) -> Iterator[Batch]:
        """The validation split in a fixed order, never augmented: all of it, or (``count`` smaller than
        the split) the same ``count`` images on every call (``val_subset``)."""

    def val_subset(self, count: int | None) -> list[int]:
        """The validation indices ``val_batches(batch, count)`` serves, ascending: all of them when
        ``count`` is None or at least the split's size, else a fixed random choice of ``count``."""
        if count is None or count >= self.val_size:
            return list(range(self.val_size))
        _check_count(count, "count")
        return sorted(_permutation(self.val_size, SAMPLE_SEED)[:count].tolist())

    @abc.abstractmethod
    def sample(self, count: int) -> Batch:
        """A fixed batch of ``count`` training images (all of them if fewer), never augmented, the same
        on every call: for the zero-cost proxies."""

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, {self.classes} classes, "
                f"{self.train_size} train, {self.val_size} val)")


# ------------------------------------------------------------------ in memory

@dataclass(frozen=True)
class _Prepare:
    """Raw stored images to the batch the model sees: to float (divided by ``divisor``), resized to
    ``size``, matched to ``channels``, then standardised if ``mean`` is set."""

    divisor: float
    size: tuple[int, int]
    channels: int
    mean: torch.Tensor | None = None  # (1, C, 1, 1)
    std: torch.Tensor | None = None

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        x = raw.float()
        if self.divisor != 1:
            x = x / self.divisor
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        x = _to_channels(x, self.channels)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x

    def standardised(self, raw_train: torch.Tensor, chunk: int = 256) -> _Prepare:
        """This preparation, standardised by the per-channel mean and std (unbiased) of ``raw_train``."""
        total = torch.zeros(self.channels, dtype=torch.float64)
        squares = torch.zeros(self.channels, dtype=torch.float64)
        count = 0
        plain = dataclasses.replace(self, mean=None, std=None)
        for start in range(0, len(raw_train), chunk):
            x = plain(raw_train[start:start + chunk]).double()
            total += x.sum(dim=(0, 2, 3))
            squares += (x * x).sum(dim=(0, 2, 3))
            count += x.numel() // self.channels
        mean = total / count
        var = (squares - count * mean * mean) / max(count - 1, 1)
        std = var.clamp_min(0).sqrt().clamp_min(1e-6)
        return dataclasses.replace(self, mean=mean.float().view(1, -1, 1, 1), std=std.float().view(1, -1, 1, 1))


class InMemoryImages(ImageData):
    """Images held in memory as raw tensors (any dtype, any size), prepared per batch by ``prepare``."""

    def __init__(self, name: str, class_names: Sequence[str], train: tuple[torch.Tensor, torch.Tensor],
                 val: tuple[torch.Tensor, torch.Tensor], prepare: _Prepare, *, augment: bool = False):
        self.name = name
        self.class_names = list(class_names)
        self.classes = len(self.class_names)
        self._train_x, self._train_y = train[0], train[1].long()
        self._val_x, self._val_y = val[0], val[1].long()
        self.train_size, self.val_size = len(self._train_y), len(self._val_y)
        self._prepare = prepare
        self.channels = prepare.channels
        self.height, self.width = prepare.size
        self.augment = augment

    def train_batches(self, batch: int, seed: int) -> Iterator[Batch]:
        _check_count(batch, "batch")
        order = _permutation(self.train_size, seed)
        shifts = torch.Generator().manual_seed(_derived_seed(seed)) if self.augment else None
        for start in range(0, self.train_size, batch):
            index = order[start:start + batch]
            x = self._prepare(self._train_x[index])
            if shifts is not None:
                x = _shift(x, shifts)
            yield x, self._train_y[index]

    def val_batches(self, batch: int, count: int | None = None) -> Iterator[Batch]:
        _check_count(batch, "batch")
        index = torch.tensor(self.val_subset(count), dtype=torch.long)
        for start in range(0, len(index), batch):
            chosen = index[start:start + batch]
            yield self._prepare(self._val_x[chosen]), self._val_y[chosen]

    def sample(self, count: int) -> Batch:
        _check_count(count, "count")
        index = _permutation(self.train_size, SAMPLE_SEED)[:count]
        return self._prepare(self._train_x[index]), self._train_y[index]


def _shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image shifted by up to 1/8 of its height and width (at least a pixel), zero-filled."""
    n, _, h, w = x.shape
    ph, pw = max(1, h // 8), max(1, w // 8)
    padded = F.pad(x, (pw, pw, ph, ph)).permute(0, 2, 3, 1)
    dy = torch.randint(0, 2 * ph + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pw + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    return padded[torch.arange(n)[:, None, None], rows, cols].permute(0, 3, 1, 2).contiguous()


def _to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    if images.shape[1] == channels:
        return images
    if images.shape[1] != 1:
        images = images.mean(dim=1, keepdim=True)
    return images.expand(-1, channels, -1, -1).contiguous()


@functools.lru_cache(maxsize=1)
def _digits_raw() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    return images, torch.tensor(digits.target, dtype=torch.long)


def _digits(channels: int, height: int, width: int, augment: bool) -> InMemoryImages:
    images, labels = _digits_raw()
    train, val = _split(labels)
    prepare = _Prepare(1.0, (height, width), channels).standardised(images[train])
    return InMemoryImages(f"digits {height}x{width}", [str(d) for d in range(10)],
                          (images[train], labels[train]), (images[val], labels[val]), prepare, augment=augment)


def _shapes_size(height: int, width: int) -> int:
    """The size the shapes are drawn at: the input's when square (and not tiny), else the larger side."""
    return max(height, width, SHAPES_MIN_SIZE)


@functools.lru_cache(maxsize=8)  # train and val at 4 sizes
def _generate_shapes(count: int, seed: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from .shapes import make_shapes
    images, labels = make_shapes(count, seed=seed, size=size)
    images, labels = torch.as_tensor(images), torch.as_tensor(labels).long()
    if images.dim() != 4 or len(images) != len(labels):
        raise DataError(f"make_shapes gave images {tuple(images.shape)} and labels {tuple(labels.shape)}; "
                        f"expected (N, 3, {size}, {size}) and (N,)")
    return images, labels


def _shapes_classes() -> tuple[str, ...]:
    from .shapes import SHAPES_CLASSES
    return tuple(SHAPES_CLASSES)


def _shapes(channels: int, height: int, width: int, augment: bool) -> InMemoryImages:
    size = _shapes_size(height, width)
    train = _generate_shapes(*SHAPES_TRAIN, size)
    val = _generate_shapes(*SHAPES_VAL, size)
    divisor = 255.0 if train[0].dtype == torch.uint8 else 1.0
    prepare = _Prepare(divisor, (height, width), channels).standardised(train[0])
    return InMemoryImages(f"shapes {height}x{width}", _shapes_classes(), train, val, prepare, augment=augment)


# ------------------------------------------------------------------ folders: layouts and checks

@dataclass(frozen=True)
class _Folder:
    """A folder data set's file lists, split; nothing decoded."""

    root: str
    layout: str  # "ImageNet layout" or "class folders, 80/20 split"
    class_names: tuple[str, ...]
    train_files: tuple[str, ...]
    train_labels: tuple[int, ...]
    val_files: tuple[str, ...]
    val_labels: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.train_files) + len(self.val_files)


def _subfolders(path: Path) -> list[str]:
    with os.scandir(path) as entries:
        return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _loose_images(path: Path) -> int:
    with os.scandir(path) as entries:
        return sum(1 for e in entries if _is_image(e.name) and e.is_file())


def _images_under(folder: Path) -> list[str]:
    found = []
    for top, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(top, f) for f in sorted(files) if _is_image(f)]
    return found


def _loose_note(path: Path) -> str:
    loose = _loose_images(path)
    return f" ({loose} image{'s' if loose != 1 else ''} directly in it)" if loose else ""


def _class_files(folder: Path) -> dict[str, list[str]]:
    """Each class folder's image files; refuses class folders without images."""
    files = {name: _images_under(folder / name) for name in _subfolders(folder)}
    empty = [f"{name}/" for name, found in files.items() if not found]
    if empty:
        raise DataError(f"{folder}: class folder{'s' if len(empty) > 1 else ''} {', '.join(empty)} "
                        f"hold{'s' if len(empty) == 1 else ''} no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def _check_classes(root: Path, where: Path, files: dict[str, list[str]]) -> None:
    if not files:
        raise DataError(f"{where} holds no class folders{_loose_note(where)}; expected {where}/<class>/*.jpg, "
                        f"one folder per class (or {root}/train/<class>/ and {root}/val/<class>/)")
    if len(files) < 2:
        raise DataError(f"{where} holds one class folder ({next(iter(files))}/); a classifier needs at least "
                        f"2 classes: {where}/<class>/*.jpg, one folder per class")


@functools.lru_cache(maxsize=8)
def _scan(path: str) -> _Folder:
    root = Path(path)
    if not root.exists():
        raise MissingData(f"no such folder: {path}")
    if not root.is_dir():
        raise DataError(f"{path} is not a folder; expected a folder of class folders, {path}/<class>/*.jpg, "
                        f"or the ImageNet layout, {path}/train/<class>/*.jpg and {path}/val/<class>/*.jpg")
    splits = [name for name in _subfolders(root) if name.lower() in SPLIT_FOLDERS]
    folder = _split_folder(root, splits) if splits else _flat_folder(root)
    if folder.size < MIN_IMAGES:
        raise DataError(f"{path} holds {folder.size} images; a search needs at least {MIN_IMAGES}")
    return folder


def _split_folder(root: Path, splits: list[str]) -> _Folder:
    found = ", ".join(f"{name}/" for name in splits)
    trap = f"{root} looks like a split data set ({found})"
    expected = (f"expected the ImageNet layout, {root}/train/<class>/*.jpg and {root}/val/<class>/*.jpg, "
                f"or class folders with no split folders among them, {root}/<class>/*.jpg")
    train = [name for name in splits if name.lower() == "train"]
    val = [name for name in splits if name.lower() != "train"]
    if not train:
        raise DataError(f"{trap} but has no train/; {expected}")
    if not val:
        raise DataError(f"{trap} but has no val/ or validation/; {expected} (to split {root}/train 80/20, "
                        f"pass {root}/train)")
    if len(train) > 1 or len(val) > 1:
        raise DataError(f"{trap}: more than one train or validation split; keep one train/ and one val/")
    train_dir, val_dir = root / train[0], root / val[0]
    for split in (train_dir, val_dir):
        if not _subfolders(split):
            raise DataError(f"{trap} but {split} holds no class folders{_loose_note(split)}; {expected}")
    train_files, val_files = _class_files(train_dir), _class_files(val_dir)
    _check_classes(root, train_dir, train_files)
    unknown = [f"{name}/" for name in val_files if name not in train_files]
    if unknown:
        raise DataError(f"{val_dir} holds class folder{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                        f"that {train_dir} lacks; the classes are train's, and val may only lack some")
    names = tuple(train_files)
    index = {name: i for i, name in enumerate(names)}

    def flat(files):
        pairs = [(f, index[name]) for name, found in files.items() for f in found]
        return tuple(f for f, _ in pairs), tuple(y for _, y in pairs)

    return _Folder(str(root), "ImageNet layout", names, *flat(train_files), *flat(val_files))


def _flat_folder(root: Path) -> _Folder:
    files = _class_files(root)
    _check_classes(root, root, files)
    names = tuple(files)
    paths = [f for found in files.values() for f in found]
    labels = torch.tensor([i for i, found in enumerate(files.values()) for _ in found], dtype=torch.long)
    if len(paths) < MIN_IMAGES:
        raise DataError(f"{root} holds {len(paths)} images; a search needs at least {MIN_IMAGES}")
    train, val = _split(labels)

    def pick(index: torch.Tensor) -> tuple[tuple[str, ...], tuple[int, ...]]:
        return tuple(paths[i] for i in index.tolist()), tuple(labels[index].tolist())

    return _Folder(str(root), "class folders, 80/20 split", names, *pick(train), *pick(val))


def _split(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """80/20, stratified when every class has 2 images and val can hold every class, with SPLIT_SEED."""
    from sklearn.model_selection import train_test_split
    index = torch.arange(len(labels)).numpy()
    counts = torch.bincount(labels)
    stratify = labels.numpy() if int(counts[counts > 0].min()) >= 2 else None
    try:
        train, val = train_test_split(index, test_size=VAL_FRACTION, random_state=SPLIT_SEED, stratify=stratify)
    except ValueError:  # fewer validation images than classes
        train, val = train_test_split(index, test_size=VAL_FRACTION, random_state=SPLIT_SEED)
    return torch.as_tensor(train), torch.as_tensor(val)


def check_folder(path: str | os.PathLike) -> None:
    """Raise a :class:`DataError` naming the problem if ``path`` is not a folder data set that
    :func:`open_data` can serve (see the module's docstring); lists files, decodes nothing."""
    _scan(os.fspath(path))


# ------------------------------------------------------------------ folders: streamed and held

def _folder_stats(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    if channels == 3:
        return tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)
    return ((sum(w * m for w, m in zip(LUMA, IMAGENET_DEFAULT_MEAN)),),
            (sum(w * s for w, s in zip(LUMA, IMAGENET_DEFAULT_STD)),))


def _folder_transform(channels: int, height: int, width: int, training: bool):
    from timm.data import create_transform
    mean, std = _folder_stats(channels)
    if training:
        return create_transform(input_size=(channels, height, width), is_training=True, mean=mean, std=std)
    return create_transform(input_size=(channels, height, width), is_training=False, crop_pct=1.0,
                            crop_mode="squash", interpolation="bilinear", mean=mean, std=std)


class _Files(torch.utils.data.Dataset):
    """Image files decoded one at a time; an item is ``(index, seed)``, and a seed >= 0 makes the
    transform's randomness a function of it (the global random states are restored afterwards)."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], transform, mode: str):
        self.paths, self.labels, self.transform, self.mode = paths, labels, transform, mode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        path = self.paths[index]
        try:
            from PIL import Image
            with open(path, "rb") as f:
                image = Image.open(f).convert(self.mode)
        except OSError as exc:
            raise DataError(f"cannot read the image {path}: {exc}") from None
        return (self.transform(image) if seed < 0 else _seeded(self.transform, image, seed)), self.labels[index]


def _seeded(transform, image, seed: int):
    import numpy as np
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)  # the CPU generator only; CUDA's are left alone
    try:
        return transform(image)
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


class _Batches:
    """A batch sampler over ``order``, each index paired with its augmentation seed (-1: none)."""

    def __init__(self, order: list[int], seeds: list[int] | None, batch: int):
        self.order, self.seeds, self.batch = order, seeds, batch

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch)

    def __iter__(self):
        for start in range(0, len(self.order), self.batch):
            stop = min(start + self.batch, len(self.order))
            seeds = self.seeds[start:stop] if self.seeds is not None else [-1] * (stop - start)
            yield list(zip(self.order[start:stop], seeds))


def _seed_worker(_worker: int) -> None:
    import numpy as np
    np.random.seed(torch.initial_seed() % 2**32)  # torch and random are seeded by the DataLoader


def _loader(dataset: _Files, batches: _Batches, workers: int, seed: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=workers, pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(seed), worker_init_fn=_seed_worker if workers else None)


class FolderImages(ImageData):
    """A folder data set streamed from disk: only the file lists are held; images are decoded per batch
    by a DataLoader with ``workers`` processes through timm's transforms."""

    def __init__(self, folder: _Folder, channels: int, height: int, width: int, *, augment: bool = False,
                 workers: int = 2):
        self.name = f"{folder.root} {height}x{width} ({folder.layout})"
        self.root = folder.root
        self.class_names = list(folder.class_names)
        self.classes = len(self.class_names)
        self.train_size, self.val_size = len(folder.train_files), len(folder.val_files)
        self.channels, self.height, self.width = channels, height, width
        self.augment, self.workers = augment, workers
        mode = "L" if channels == 1 else "RGB"
        plain = _folder_transform(channels, height, width, training=False)
        train_transform = _folder_transform(channels, height, width, training=True) if augment else plain
        self._train = _Files(folder.train_files, folder.train_labels, train_transform, mode)
        self._train_plain = _Files(folder.train_files, folder.train_labels, plain, mode)
        self._val = _Files(folder.val_files, folder.val_labels, plain, mode)
        self._samples: dict[int, Batch] = {}

    def train_batches(self, batch: int, seed: int) -> Iterator[Batch]:
        _check_count(batch, "batch")
        order = _permutation(self.train_size, seed).tolist()
        seeds = None
        if self.augment:
            draw = torch.Generator().manual_seed(_derived_seed(seed))
            seeds = torch.randint(0, 2**62, (self.train_size,), generator=draw).tolist()
        yield from _loader(self._train, _Batches(order, seeds, batch), self.workers, seed)

    def val_batches(self, batch: int, count: int | None = None) -> Iterator[Batch]:
        _check_count(batch, "batch")
        yield from _loader(self._val, _Batches(self.val_subset(count), None, batch), self.workers, 0)

    def sample(self, count: int) -> Batch:
        _check_count(count, "count")
        count = min(count, self.train_size)
        if count not in self._samples:
            index = _permutation(self.train_size, SAMPLE_SEED)[:count].tolist()
            items = [self._train_plain[(i, -1)] for i in index]
            self._samples[count] = (torch.stack([x for x, _ in items]),
                                    torch.tensor([y for _, y in items], dtype=torch.long))
        x, y = self._samples[count]
        return x.clone(), y.clone()


def _held_folder(folder: _Folder, channels: int, height: int, width: int,
                 workers: int) -> InMemoryImages:
    """The folder decoded once at the input geometry (uint8), serving what FolderImages without
    augmentation serves: the same resize, ``ToTensor``'s division and ``Normalize``."""
    from torchvision import transforms
    bilinear = transforms.InterpolationMode.BILINEAR
    decode = transforms.Compose([transforms.Resize((height, width), interpolation=bilinear), transforms.PILToTensor()])
    mode = "L" if channels == 1 else "RGB"

    def load(paths, labels):
        images = torch.empty((len(paths), channels, height, width), dtype=torch.uint8)
        batches = _Batches(list(range(len(paths))), None, 256)
        at = 0
        for x, _ in _loader(_Files(paths, labels, decode, mode), batches, workers, 0):
            images[at:at + len(x)] = x
            at += len(x)
        return images, torch.tensor(labels, dtype=torch.long)

    mean, std = _folder_stats(channels)
    prepare = _Prepare(255.0, (height, width), channels, torch.tensor(mean).view(1, -1, 1, 1),
                       torch.tensor(std).view(1, -1, 1, 1))
    return InMemoryImages(f"{folder.root} {height}x{width} ({folder.layout})", folder.class_names,
                          load(folder.train_files, folder.train_labels), load(folder.val_files, folder.val_labels),
                          prepare)


# ------------------------------------------------------------------ entry points

def open_data(dataset: str | os.PathLike, channels: int, height: int, width: int, *, augment: bool = False,
              workers: int = 2, memory_limit: int = 2**30) -> ImageData:
    """The data set ``dataset`` ("digits", "shapes" or a folder) at the model input ``channels x height x
    width``; cached, so that repeated calls (one per trial) share it. ``augment`` augments the training
    batches; ``workers`` DataLoader processes decode a folder's images; a folder below ``memory_limit``
    bytes (decoded, uint8) without ``augment`` is held in memory. See the module's docstring."""
    for value, what in ((channels, "channels"), (height, "height"), (width, "width")):
        _check_count(value, what)
    if workers < 0:
        raise ValueError(f"workers must be >= 0, not {workers}")
    return _open_data(os.fspath(dataset), channels, height, width, bool(augment), workers, memory_limit)


@functools.lru_cache(maxsize=4)
def _open_data(dataset: str, channels: int, height: int, width: int, augment: bool, workers: int,
               memory_limit: int) -> ImageData:
    if dataset == "digits":
        return _digits(channels, height, width, augment)
    if dataset == "shapes":
        return _shapes(channels, height, width, augment)
    folder = _scan(dataset)
    if channels not in (1, 3):
        raise DataError(f"{dataset}: images are read as RGB (3 channels) or greyscale (1 channel); the model "
                        f"takes {channels} channels")
    if not augment and folder.size * channels * height * width < memory_limit:
        return _held_folder(folder, channels, height, width, workers)
    return FolderImages(folder, channels, height, width, augment=augment, workers=workers)


def class_count(dataset: str | os.PathLike) -> int:
    """The number of classes, decoding no images (for the ImageNet layout: train's classes)."""
    dataset = os.fspath(dataset)
    if dataset == "digits":
        return 10
    if dataset == "shapes":
        return len(_shapes_classes())
    return len(_scan(dataset).class_names)


def clear_caches() -> None:
    """Forget cached data sets, generated shapes and folder scans (for tests, or after a folder changes)."""
    for cached in (_open_data, _scan, _generate_shapes, _digits_raw):
        cached.cache_clear()


def _permutation(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def _derived_seed(seed: int) -> int:
    """A second seed for the augmentation, so that the order does not depend on whether it is on."""
    return (seed * 6364136223846793005 + 1442695040888963407) % 2**63


def _check_count(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{what} must be a positive whole number, not {value!r}")
