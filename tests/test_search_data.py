"""The search's data: digits, shapes (a fake generator, and the real one when it exists) and image folders
in both layouts, held in memory or streamed; the refusals; determinism; augmentation."""
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from archdsl.search import data
from archdsl.search.data import DataError, FolderImages, InMemoryImages, MissingData, class_count, open_data

pytestmark = pytest.mark.usefixtures("one_thread")

COLOURS = [(220, 40, 40), (40, 200, 60), (50, 70, 230), (230, 210, 40)]


@pytest.fixture(autouse=True)
def _fresh_caches():
    data.clear_caches()
    yield
    data.clear_caches()


def write_images(folder, count, colour, size=(16, 12), start=0):
    """``count`` PNGs of one colour with noise (no two alike), in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        noise = np.random.default_rng(hash((folder.name, i)) % 2**32).integers(-30, 30, (size[1], size[0], 3))
        pixels = np.clip(np.array(colour)[None, None] + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")


def class_folders(root, counts: dict[str, int]):
    for k, (name, count) in enumerate(counts.items()):
        write_images(root / name, count, COLOURS[k % len(COLOURS)])
    return root


def epoch(images, batch, seed):
    xs, ys = zip(*images.train_batches(batch, seed))
    return torch.cat(xs), torch.cat(ys)


def validation(images, batch=7, count=None):
    xs, ys = zip(*images.val_batches(batch, count))
    return torch.cat(xs), torch.cat(ys)


# ------------------------------------------------------------------ digits

def test_digits_interface():
    digits = open_data("digits", 1, 16, 16)
    assert isinstance(digits, InMemoryImages)
    assert (digits.name, digits.classes, digits.class_names) == ("digits 16x16", 10, [str(d) for d in range(10)])
    assert (digits.train_size, digits.val_size) == (1437, 360)
    assert class_count("digits") == 10
    x, y = next(digits.train_batches(64, seed=0))
    assert x.shape == (64, 1, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.device.type == "cpu"
    train_x, train_y = epoch(digits, 64, seed=0)
    assert len(train_y) == 1437 and set(train_y.tolist()) == set(range(10))
    assert abs(train_x.mean().item()) < 1e-3 and abs(train_x.std().item() - 1) < 1e-3
    again_x, again_y = epoch(digits, 64, seed=0)
    assert torch.equal(train_x, again_x) and torch.equal(train_y, again_y)
    other_x, other_y = epoch(digits, 64, seed=1)
    assert not torch.equal(train_y, other_y)
    assert torch.allclose(train_x.sum(0), other_x.sum(0), atol=1e-2)  # the same images, reordered
    val_x, _ = validation(digits, 50)
    assert val_x.shape == (360, 1, 16, 16) and torch.equal(validation(digits, 64)[0], val_x)
    sample_x, sample_y = digits.sample(32)
    assert sample_x.shape == (32, 1, 16, 16) and len(set(sample_y.tolist())) > 3
    assert torch.equal(digits.sample(32)[0], sample_x)
    assert open_data("digits", 1, 16, 16) is digits  # cached


def test_digits_channels_and_geometry():
    digits = open_data("digits", 3, 12, 20)
    x, _ = digits.sample(8)
    assert x.shape == (8, 3, 12, 20) and torch.equal(x[:, 0], x[:, 2])


def test_digits_augment_shifts_training_images_only():
    plain = open_data("digits", 1, 16, 16)
    shifted = open_data("digits", 1, 16, 16, augment=True)
    plain_x, plain_y = epoch(plain, 100, seed=3)
    shifted_x, shifted_y = epoch(shifted, 100, seed=3)
    assert torch.equal(plain_y, shifted_y)  # the order is the seed's, augmented or not
    assert not torch.equal(plain_x, shifted_x)
    assert torch.equal(epoch(shifted, 100, seed=3)[0], shifted_x)
    assert torch.equal(validation(plain)[0], validation(shifted)[0])
    assert torch.equal(plain.sample(16)[0], shifted.sample(16)[0])


# ------------------------------------------------------------------ shapes

@pytest.fixture
def fake_shapes(monkeypatch):
    calls = []

    def make_shapes(count, seed, size=32):
        calls.append((count, seed, size))
        generator = torch.Generator().manual_seed(seed)
        labels = torch.randint(0, 3, (count,), generator=generator)
        images = torch.randint(0, 256, (count, 3, size, size), generator=generator, dtype=torch.uint8)
        images[:, 0] = (labels * 100).to(torch.uint8)[:, None, None]
        return images, labels

    module = types.ModuleType("archdsl.search.shapes")
    module.make_shapes, module.SHAPES_CLASSES = make_shapes, ("circle", "square", "triangle")
    monkeypatch.setitem(sys.modules, "archdsl.search.shapes", module)
    return calls


def test_shapes_from_the_generator(fake_shapes):
    assert class_count("shapes") == 3
    shapes = open_data("shapes", 3, 32, 32)
    assert fake_shapes == [(5000, 1, 32), (10000, 2, 32)]
    assert (shapes.name, shapes.class_names) == ("shapes 32x32", ["circle", "square", "triangle"])
    assert (shapes.classes, shapes.train_size, shapes.val_size) == (3, 5000, 10000)
    train_x, train_y = epoch(shapes, 1000, seed=0)
    assert train_x.shape == (5000, 3, 32, 32) and train_x.dtype == torch.float32
    assert torch.allclose(train_x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-3)
    assert torch.allclose(train_x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)
    assert not torch.equal(train_y, epoch(shapes, 1000, seed=1)[1])
    assert validation(shapes, 500)[0].shape == (10000, 3, 32, 32)
    open_data("shapes", 1, 32, 32)
    assert len(fake_shapes) == 2  # generated once per geometry


def test_shapes_not_square_drawn_at_the_larger_side(fake_shapes):
    shapes = open_data("shapes", 1, 24, 40)
    assert fake_shapes == [(5000, 1, 40), (10000, 2, 40)]
    assert shapes.sample(4)[0].shape == (4, 1, 24, 40)
    assert next(shapes.val_batches(10))[0].shape == (10, 1, 24, 40)


def test_validation_subset_is_fixed_and_part_of_the_split(fake_shapes):
    shapes = open_data("shapes", 3, 32, 32)
    full_x, full_y = validation(shapes, 500)
    index = shapes.val_subset(300)
    assert len(index) == len(set(index)) == 300 and index == sorted(index) and index != list(range(300))
    x, y = validation(shapes, 64, count=300)
    assert torch.equal(x, full_x[index]) and torch.equal(y, full_y[index])
    assert torch.equal(validation(shapes, 7, count=300)[0], x)  # the same images whatever the batch
    assert shapes.val_subset(None) == shapes.val_subset(10000) == shapes.val_subset(10**6) == list(range(10000))
    with pytest.raises(ValueError, match="count"):
        shapes.val_subset(0)


def test_shapes_real_generator():
    from archdsl.search.shapes import SHAPES_CLASSES
    shapes = open_data("shapes", 3, 16, 16)
    assert shapes.classes == class_count("shapes") == len(SHAPES_CLASSES)
    assert (shapes.train_size, shapes.val_size) == (5000, 10000)
    x, y = shapes.sample(64)
    assert x.shape == (64, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert int(y.max()) < shapes.classes
    assert abs(epoch(shapes, 1000, seed=0)[0].mean().item()) < 1e-2


# ------------------------------------------------------------------ folders: layouts

def test_imagenet_layout_used_as_split(tmp_path):
    root = tmp_path / "imnet"
    class_folders(root / "train", {"cat": 8, "dog": 8, "eel": 8})
    class_folders(root / "val", {"cat": 2, "eel": 3})  # val may lack a class
    class_folders(root / "test", {"unlabelled": 2})  # ignored
    images = open_data(root, 3, 8, 8)
    assert images.name == f"{root} 8x8 (ImageNet layout)"
    assert images.class_names == ["cat", "dog", "eel"] and class_count(root) == 3
    assert (images.train_size, images.val_size) == (24, 5)
    _, val_y = validation(images)
    assert sorted(val_y.tolist()) == [0, 0, 2, 2, 2]  # train's indices


def test_imagenet_layout_validation_folder(tmp_path):
    class_folders(tmp_path / "train", {"a": 6, "b": 6})
    class_folders(tmp_path / "validation", {"a": 2, "b": 2})
    images = open_data(tmp_path, 3, 8, 8, memory_limit=0)
    assert isinstance(images, FolderImages) and (images.train_size, images.val_size) == (12, 4)


def test_val_class_missing_from_train_refused(tmp_path):
    class_folders(tmp_path / "train", {"cat": 8, "dog": 8})
    class_folders(tmp_path / "val", {"cat": 2, "dog": 2, "owl": 2})
    with pytest.raises(DataError, match="owl/.* that .*train lacks"):
        open_data(tmp_path, 3, 8, 8)


def test_flat_folder_split_80_20_stratified(tmp_path):
    root = class_folders(tmp_path / "flat", {"a": 10, "b": 10, "c": 10})
    images = open_data(root, 3, 8, 8)
    assert images.name == f"{root} 8x8 (class folders, 80/20 split)"
    assert (images.classes, images.train_size, images.val_size) == (3, 24, 6)
    assert torch.bincount(epoch(images, 5, seed=0)[1]).tolist() == [8, 8, 8]
    assert torch.bincount(validation(images)[1]).tolist() == [2, 2, 2]
    data.clear_caches()
    assert torch.equal(validation(open_data(root, 3, 8, 8))[0], validation(images)[0])  # a fixed split


# ------------------------------------------------------------------ folders: refusals

def test_parent_folder_trap_refused(tmp_path):
    write_images(tmp_path / "train", 20, COLOURS[0])  # images straight in the splits: no class folders
    write_images(tmp_path / "val", 5, COLOURS[1])
    with pytest.raises(DataError) as caught:
        data.check_folder(tmp_path)
    message = str(caught.value)
    assert f"{tmp_path} looks like a split data set (train/, val/)" in message
    assert f"{tmp_path / 'train'} holds no class folders (20 images directly in it)" in message
    assert f"expected the ImageNet layout, {tmp_path}/train/<class>/*.jpg" in message
    with pytest.raises(DataError, match="looks like a split data set"):
        open_data(tmp_path, 3, 8, 8)
    with pytest.raises(DataError, match="looks like a split data set"):
        class_count(tmp_path)


def test_parent_folder_with_classes_beside_a_split_refused(tmp_path):
    class_folders(tmp_path, {"cats": 8, "dogs": 8})
    class_folders(tmp_path / "train", {"cats": 8, "dogs": 8})
    with pytest.raises(DataError, match=r"split data set \(train/\) but has no val/ or validation/"):
        data.check_folder(tmp_path)


def test_empty_class_folder_refused(tmp_path):
    class_folders(tmp_path, {"a": 8, "b": 8})
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("no images")
    with pytest.raises(DataError, match="class folder c/ holds no images"):
        data.check_folder(tmp_path)


def test_one_class_refused(tmp_path):
    class_folders(tmp_path, {"only": 12})
    with pytest.raises(DataError, match="at least 2 classes"):
        open_data(tmp_path, 3, 8, 8)


def test_no_class_folders_refused(tmp_path):
    write_images(tmp_path, 12, COLOURS[0])
    with pytest.raises(DataError, match=r"holds no class folders \(12 images directly in it\)"):
        data.check_folder(tmp_path)


def test_too_few_images_refused(tmp_path):
    class_folders(tmp_path, {"a": 4, "b": 4})
    with pytest.raises(DataError, match="holds 8 images; a search needs at least 10"):
        data.check_folder(tmp_path)


def test_missing_path_refused(tmp_path):
    with pytest.raises(MissingData, match="no such folder") as caught:
        data.check_folder(tmp_path / "nowhere")
    assert isinstance(caught.value, FileNotFoundError) and isinstance(caught.value, DataError)
    with pytest.raises(FileNotFoundError):
        class_count(tmp_path / "nowhere")
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(DataError, match="is not a folder"):
        data.check_folder(tmp_path / "file.png")


def test_other_channel_counts_refused_for_folders(tmp_path):
    class_folders(tmp_path, {"a": 6, "b": 6})
    with pytest.raises(DataError, match="RGB .*greyscale"):
        open_data(tmp_path, 2, 8, 8)


# ------------------------------------------------------------------ folders: held or streamed

def test_folder_streamed_matches_held(tmp_path, monkeypatch):
    root = class_folders(tmp_path, {"a": 10, "b": 10, "c": 10})
    held = open_data(root, 3, 8, 12)
    assert isinstance(held, InMemoryImages)
    streamed = open_data(root, 3, 8, 12, memory_limit=0, workers=0)
    assert isinstance(streamed, FolderImages)
    assert (streamed.name, streamed.class_names, streamed.train_size) == (held.name, held.class_names, 24)
    assert not any(isinstance(v, torch.Tensor) for v in vars(streamed).values())  # only file lists held

    decoded = []
    original = data._Files.__getitem__
    monkeypatch.setattr(data._Files, "__getitem__", lambda self, item: decoded.append(item) or original(self, item))
    x, _ = next(streamed.train_batches(4, seed=0))
    assert x.shape == (4, 3, 8, 12) and len(decoded) == 4  # decoded per batch, not all at once
    monkeypatch.undo()

    held_x, held_y = epoch(held, 5, seed=2)
    streamed_x, streamed_y = epoch(streamed, 5, seed=2)
    assert torch.equal(held_y, streamed_y) and torch.allclose(held_x, streamed_x, atol=1e-5)
    assert torch.allclose(validation(held)[0], validation(streamed)[0], atol=1e-5)
    assert torch.allclose(held.sample(6)[0], streamed.sample(6)[0], atol=1e-5)
    assert torch.equal(streamed.sample(6)[0], streamed.sample(6)[0])
    assert not torch.equal(streamed_y, epoch(streamed, 5, seed=3)[1])

    workers = open_data(root, 3, 8, 12, memory_limit=0, workers=2)
    workers_x, workers_y = epoch(workers, 5, seed=2)
    assert torch.equal(workers_y, streamed_y) and torch.equal(workers_x, streamed_x)
    # colour classes: a folder's red class is red after ImageNet normalisation
    red = streamed_x[streamed_y == 0].mean(dim=(0, 2, 3))
    assert red[0] > 1 and red[1] < 0


def test_folder_augment_changes_epochs_not_val(tmp_path):
    root = class_folders(tmp_path, {"a": 8, "b": 8, "c": 8})
    plain = open_data(root, 3, 12, 12, memory_limit=0, workers=0)
    augmented = open_data(root, 3, 12, 12, augment=True, workers=0)  # below the limit, but augmentation streams
    assert isinstance(augmented, FolderImages)

    rng = torch.get_rng_state()
    first_x, first_y = epoch(augmented, 24, seed=0)
    assert torch.equal(torch.get_rng_state(), rng)  # seeded per image; the global state is left alone
    plain_first_x, plain_first_y = epoch(plain, 24, seed=0)
    assert torch.equal(first_y, plain_first_y) and not torch.allclose(first_x, plain_first_x)
    assert torch.equal(epoch(augmented, 24, seed=0)[0], first_x)  # deterministic per seed
    with_workers = open_data(root, 3, 12, 12, augment=True, workers=2)
    assert torch.equal(epoch(with_workers, 24, seed=0)[0], first_x)  # whatever the workers

    # the same image in two epochs: find each epoch's order by its unaugmented images
    plain_second_x, _ = epoch(plain, 24, seed=1)
    second_x, _ = epoch(augmented, 24, seed=1)
    to_second = [int((plain_second_x == image).flatten(1).all(1).nonzero()) for image in plain_first_x]
    assert not torch.allclose(first_x, second_x[to_second])

    assert torch.equal(validation(augmented)[0], validation(plain)[0])
    assert torch.equal(augmented.sample(5)[0], plain.sample(5)[0])


def test_folder_one_channel(tmp_path):
    root = class_folders(tmp_path, {"a": 6, "b": 6})
    held = open_data(root, 1, 8, 8)
    streamed = open_data(root, 1, 8, 8, memory_limit=0, workers=0)
    augmented = open_data(root, 1, 8, 8, augment=True, workers=0)
    assert isinstance(held, InMemoryImages) and isinstance(streamed, FolderImages)
    x, _ = epoch(streamed, 4, seed=0)
    assert x.shape == (9, 1, 8, 8) and torch.allclose(epoch(held, 4, seed=0)[0], x, atol=1e-5)
    assert epoch(augmented, 4, seed=0)[0].shape == (9, 1, 8, 8)
    assert validation(streamed)[0].shape == (3, 1, 8, 8)
