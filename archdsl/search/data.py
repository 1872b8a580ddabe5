"""Images for the objectives: scikit-learn's digits (shipped with scikit-learn, nothing downloaded)
or a torchvision ImageFolder, as in-memory tensors with a fixed train/validation split."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

VAL_FRACTION = 0.2
SPLIT_SEED = 0  # the split never changes with the search's seed


@dataclass(frozen=True)
class ImageSet:
    """Normalised images ``(N, C, H, W)`` and labels, split once."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    classes: int
    name: str


def class_count(dataset: str) -> int:
    """The number of classes, without loading the images."""
    if dataset == "digits":
        return 10
    from torchvision.datasets import ImageFolder
    return len(ImageFolder(dataset).classes)


@functools.lru_cache(maxsize=4)
def load_images(dataset: str, channels: int, height: int, width: int) -> ImageSet:
    """``digits`` (1,797 8x8 greyscale images, upscaled bilinearly) or an ImageFolder path, resized to
    ``height x width``, repeated or averaged to ``channels``, standardised with the training split's
    mean and std; split 80/20, stratified, with a fixed seed."""
    if dataset == "digits":
        from sklearn.datasets import load_digits
        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
        labels = torch.tensor(digits.target, dtype=torch.long)
        images = F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False)
        name = f"digits {height}x{width}"
    else:
        images, labels = _image_folder(dataset, height, width)
        name = f"{dataset} {height}x{width}"
    images = _to_channels(images, channels)
    train, val = _split(labels)
    mean = images[train].mean(dim=(0, 2, 3), keepdim=True)
    std = images[train].std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    images = (images - mean) / std
    return ImageSet(images[train], labels[train], images[val], labels[val], int(labels.max()) + 1, name)


def _image_folder(root: str, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision import transforms
    from torchvision.datasets import ImageFolder
    if not Path(root).is_dir():
        raise FileNotFoundError(f"no image folder at {root}")
    folder = ImageFolder(root, transform=transforms.Compose([transforms.Resize((height, width)),
                                                             transforms.ToTensor()]))
    if len(folder) < 10:
        raise ValueError(f"{root} holds {len(folder)} images; a search needs at least 10")
    pairs = [folder[i] for i in range(len(folder))]
    return torch.stack([x for x, _ in pairs]), torch.tensor([y for _, y in pairs], dtype=torch.long)


def _to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    if images.shape[1] == channels:
        return images
    if images.shape[1] == 1:
        return images.expand(-1, channels, -1, -1).contiguous()
    grey = images.mean(dim=1, keepdim=True)
    return grey.expand(-1, channels, -1, -1).contiguous()


def _split(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.model_selection import train_test_split
    index = torch.arange(len(labels)).numpy()
    counts = torch.bincount(labels)
    stratify = labels.numpy() if int(counts[counts > 0].min()) >= 2 else None
    train, val = train_test_split(index, test_size=VAL_FRACTION, random_state=SPLIT_SEED, stratify=stratify)
    return torch.as_tensor(train), torch.as_tensor(val)
