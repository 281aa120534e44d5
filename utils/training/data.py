"""Data for training and evaluation: `make_loaders` returns a (train, val) pair of loaders.

Datasets (`--data`):
  cifar10       torchvision's `cifar-10-batches-py/`, an image folder (`train/<class>/*.jpg|png` and
                `test/` or `val/`), or a .tar(.gz) holding that folder; under `--data-root`
                (default cifar10_data). Decoded image folders are cached as .npz.
  cifar10-mini  real CIFAR-10 embedded in the repo (utils/training/datasets/cifar10-mini.tar.gz, 4.8 MB):
                500 training images per class and the whole test set (10,000), built by
                make_cifar10_mini.py; decoded once (3 s) and cached under ~/.cache/pruning-data.
  imagenet      `train/` and `val/` class folders under `--data-root` (default imagenet_data).
  synthetic     seeded random images with learnable labels, for smoke runs.

The CIFAR sets are held as one uint8 tensor on the device and augmented in batches with tensor ops
(pad-4 random crop, horizontal flip), as airbench does: no per-image Python work in the loop.

Every loader has `len(loader)` (batches per epoch on this rank), `set_epoch(epoch)`,
`batches(start=0)` (images float32 NCHW normalised, labels int64, on the device, from batch index
`start` of the epoch), `num_classes`, `num_samples` (images this rank sees per epoch) and
`dataset_size`. Training order and augmentation come from generators seeded by (seed, epoch), so a
run resumed at batch `start` sees exactly the batches it would have seen (ImageNet: the order only).
Training shards are disjoint and equal in size across ranks (drop_last); validation shards are
`rank::world_size` without padding, so every validation image is counted exactly once.
"""
import hashlib
import io
import os
import socket
import tarfile
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .dist import barrier

DATASETS = ("cifar10", "cifar10-mini", "imagenet", "synthetic")
DEFAULT_ROOTS = {"cifar10": "cifar10_data", "imagenet": "imagenet_data"}
MINI_ARCHIVE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "datasets", "cifar10-mini.tar.gz")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")
EVAL_SPLITS = ("test", "val")  # the first one present is the evaluation split
CIFAR_PAD = 4  # random crop from the image zero-padded by 4, as the original repos
CIFAR_MEAN, CIFAR_STD = 0.5, 0.5  # the original repos' Normalize(0.5, 0.5)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SYNTHETIC_SIZES = (512, 128)  # train, val
# Training images of each data set, known without loading it (a plan's step counts: images // global batch):
# CIFAR-10's train split, cifar10-mini's 500 a class, ImageNet's train split.
TRAIN_IMAGES = {"cifar10": 50_000, "cifar10-mini": 5_000, "imagenet": 1_281_167, "synthetic": SYNTHETIC_SIZES[0]}
CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "pruning-data")
DOWNLOAD_TIMEOUT = 30  # seconds per socket operation, so a firewalled machine fails instead of hanging


class DatasetNotFoundError(FileNotFoundError):
    """The data set is not where we looked; the message says where, the expected layout and the fix."""


# Evaluation batch per process for CIFAR-10 (held in memory, 32x32): 10,000 test images run 1.35x faster
# at 256 than at 64 on a 2-core CPU, and no_grad keeps the memory small. Image folders and synthetic data
# (upsampled to any size, up to ImageNet's) keep the training batch.
EVAL_BATCH = 256


def make_loaders(dataset, data_root=None, batch_size=64, device="cpu", rank=0, world_size=1, seed=0, workers=4,
                 image_size=32, num_classes=10, download=True):
    """(train, val) loaders for this rank; `batch_size` is global, split evenly over `world_size` ranks.

    `image_size` applies to imagenet and synthetic (CIFAR images are 32x32), `workers` to imagenet;
    `data_root` defaults to cifar10_data / imagenet_data and is ignored by cifar10-mini and synthetic.
    `download`: fetch the official CIFAR-10 release with torchvision when the root is absent or empty.
    """
    custom = dataset.startswith("custom:")
    if dataset not in DATASETS and not custom:
        raise ValueError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    if batch_size <= 0 or batch_size % world_size:
        raise ValueError(f"batch size {batch_size} must be a positive multiple of the number of processes "
                         f"({world_size}): it is the global batch, split evenly over them")
    if custom:  # your own tensors (utils/custom.py)
        if dataset not in CUSTOM:
            raise ValueError(f"--data {dataset}: register it first (utils.custom.register)")
        return CUSTOM[dataset].loaders(batch_size, rank, world_size, seed, device)
    device, per_rank = torch.device(device), batch_size // world_size
    common = dict(batch_size=per_rank, rank=rank, world_size=world_size, seed=seed, device=device)
    if dataset == "imagenet":
        train_set, val_set = imagenet_folders(data_root or DEFAULT_ROOTS["imagenet"], image_size)
        _check_classes(dataset, len(train_set.classes), num_classes)
        return (FolderLoader(train_set, train=True, workers=workers, **common),
                FolderLoader(val_set, train=False, workers=workers, **common))
    if dataset == "synthetic":
        (tx, ty), (vx, vy) = synthetic_data(num_classes, seed)
        prepare = lambda x: F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
        return (TensorLoader(tx, ty, num_classes, train=True, augment=False, prepare=prepare, **common),
                TensorLoader(vx, vy, num_classes, train=False, augment=False, prepare=prepare, **common))
    if dataset == "cifar10-mini":  # cached in the home folder only: nothing is written beside the repo's file
        data = _rank0_first(rank, world_size, lambda: _cached(
            MINI_ARCHIVE, lambda: cifar_from_archive(MINI_ARCHIVE, show=False), show=False, beside=False))
    else:
        root = data_root or DEFAULT_ROOTS["cifar10"]
        data = _rank0_first(rank, world_size, lambda: load_cifar10(root, download and rank == 0, show=rank == 0))
    (tx, ty), (vx, vy), classes = data
    _check_classes(dataset, len(classes), num_classes)
    return (TensorLoader(tx, ty, len(classes), train=True, **common),
            TensorLoader(vx, vy, len(classes), train=False, **{**common, "batch_size": max(per_rank, EVAL_BATCH)}))


@dataclass
class CustomData:
    """Your own tensors as a data set (`--data custom:NAME`, registered by utils/custom.py): images as the model
    takes them, (N, C, H, W) floats, labels int64; training crops and flips them as CIFAR unless `augment` is off."""
    train: tuple  # (images, labels)
    val: tuple
    num_classes: int
    augment: bool

    def loaders(self, batch_size, rank, world_size, seed, device):
        common = dict(rank=rank, world_size=world_size, seed=seed, device=torch.device(device))
        per_rank = batch_size // world_size
        return (TensorLoader(*self.train, self.num_classes, per_rank, train=True, augment=self.augment,
                             prepare=_as_float, **common),
                TensorLoader(*self.val, self.num_classes, max(per_rank, EVAL_BATCH), train=False, augment=False,
                             prepare=_as_float, **common))


def _as_float(x):
    return x.float()


CUSTOM = {}  # "custom:NAME" -> CustomData


def _check_classes(dataset, found, num_classes):
    if found > num_classes:
        raise ValueError(f"{dataset} has {found} classes but the model has {num_classes} outputs")


def _rank0_first(rank, world_size, load):
    """Rank 0 loads first (decoding, downloading, writing the cache) while the others wait, then they
    load too, from its cache: concurrent ranks would otherwise all decode and download at once."""
    if world_size == 1:
        return load()
    if rank == 0:
        try:
            return load()
        finally:
            barrier()
    barrier()
    return load()


# --- sharding and seeding -------------------------------------------------------------------------

def mix_seed(*parts):
    """One 63-bit seed from several integers: seed + epoch would make (seed 0, epoch 1) = (seed 1, epoch 0)."""
    words = np.random.SeedSequence([int(p) % 2**64 for p in parts]).generate_state(2, np.uint64)
    return int(words[0] >> np.uint64(1))


def shard_indices(n, rank, world_size, batch_size, train, seed=0, epoch=0):
    """This rank's dataset indices for one epoch.

    train: one permutation seeded by (seed, epoch), the same on every rank, cut to a whole number of
    global batches, then dealt out `rank::world_size`, as DistributedSampler(drop_last=True) does.
    val: `rank::world_size` of 0..n-1, no padding, so the ranks together cover every index once.
    """
    if not train:
        return torch.arange(rank, n, world_size)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, epoch, 0)))
    used = n // (batch_size * world_size) * batch_size * world_size
    return order[rank:used:world_size]


class _Loader:
    """What both loaders share: the shard and batch arithmetic, and the epoch."""

    def __init__(self, size, num_classes, batch_size, rank, world_size, seed, device, train):
        self.dataset_size, self.num_classes, self.batch_size = size, num_classes, batch_size
        self.rank, self.world_size, self.seed, self.device, self.train = rank, world_size, seed, device, train
        self.epoch = 0
        self.num_samples = len(self.indices())
        if train and self.num_samples == 0:
            raise ValueError(f"the global batch ({batch_size * world_size}) is larger than the training set "
                             f"({size} images): lower --batch-size")

    def set_epoch(self, epoch):
        self.epoch = epoch

    def indices(self):
        return shard_indices(self.dataset_size, self.rank, self.world_size, self.batch_size, self.train,
                             self.seed, self.epoch)

    def __len__(self):
        return -(-self.num_samples // self.batch_size)  # train shards are whole batches; val may end partial

    def __iter__(self):
        return self.batches()


# --- the tensor fast path (CIFAR, synthetic) ------------------------------------------------------

def crop_flip(images, shifts, flips, pad=CIFAR_PAD):
    """Random crop of the zero-padded images and horizontal flip, for a whole batch at once.

    images (B,C,H,W); shifts (B,2) the crop's top-left (row, col) in the padded image, in [0, 2*pad];
    flips (B,) bool. Each image picks its rows, then its columns (reversed when flipped): two gathers.
    """
    b, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))  # zeros, as torchvision's Pad
    rows = shifts[:, :1] + torch.arange(h, device=images.device)
    cols = shifts[:, 1:] + torch.arange(w, device=images.device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * pad))
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def normalize_cifar(images):
    """uint8 -> float32 in [-1, 1]: (x/255 - mean)/std with the original repos' 0.5, 0.5."""
    return images.float().div_(255).sub_(CIFAR_MEAN).div_(CIFAR_STD)


class TensorLoader(_Loader):
    """A whole split as one tensor on the device; batches are gathered and augmented on the device."""

    def __init__(self, images, labels, num_classes, batch_size, rank, world_size, seed, device, train,
                 augment=True, prepare=normalize_cifar):
        super().__init__(len(labels), num_classes, batch_size, rank, world_size, seed, device, train)
        self.images, self.labels = images.to(device), labels.to(device=device, dtype=torch.int64)
        self.augment, self.prepare = train and augment, prepare

    def augmentation(self):
        """Crop corners and flips for every image of the epoch, from (seed, epoch): skipping batches on
        resume then skips nothing random, and a sample's augmentation does not depend on its rank."""
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, 1))
        shifts = torch.randint(0, 2 * CIFAR_PAD + 1, (self.dataset_size, 2), generator=g)
        flips = torch.rand(self.dataset_size, generator=g) < 0.5
        return shifts.to(self.device), flips.to(self.device)

    def batches(self, start=0):
        idx = self.indices().to(self.device)
        if self.augment:
            shifts, flips = self.augmentation()
        for i in range(start, len(self)):
            sel = idx[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images[sel]
            if self.augment:
                x = crop_flip(x, shifts[sel], flips[sel])
            yield self.prepare(x), self.labels[sel]


def synthetic_data(num_classes, seed, sizes=SYNTHETIC_SIZES, resolution=8):
    """Low-resolution images (upsampled per batch) = a class template + noise: learnable, tiny in memory.
    The templates are shared by train and val, so validation accuracy rises too."""
    templates = torch.randn(num_classes, 3, resolution, resolution,
                            generator=torch.Generator().manual_seed(mix_seed(seed, 100)))
    out = []
    for split, n in enumerate(sizes):
        g = torch.Generator().manual_seed(mix_seed(seed, 101 + split))
        labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
        out.append((templates[labels] + 0.7 * torch.randn(n, 3, resolution, resolution, generator=g), labels))
    return out


# --- CIFAR-10 sources -----------------------------------------------------------------------------

def load_cifar10(root, download=True, show=True):
    """((train_x, train_y), (test_x, test_y), classes) as uint8 (N,3,H,W) / int64 tensors, from
    torchvision's format, an image folder or an archive of one; see the module docstring."""
    path = os.path.abspath(root)
    if os.path.basename(path) == "cifar-10-batches-py":
        path = os.path.dirname(path)  # the user pointed at torchvision's folder itself
    if os.path.isfile(path) and tarfile.is_tarfile(path):
        return _cached(path, lambda: cifar_from_archive(path, show), show)
    if os.path.isdir(os.path.join(path, "cifar-10-batches-py")):
        return cifar_from_torchvision(path)
    if os.path.isdir(os.path.join(path, "train")) and any(os.path.isdir(os.path.join(path, s)) for s in EVAL_SPLITS):
        return _cached(path, lambda: cifar_from_folder(path, show), show)
    # Download only into a folder that is absent or empty: never over the user's files or to an archive's name.
    empty = not os.path.exists(path) or (os.path.isdir(path) and not os.listdir(path))
    failure = _try_download(path) if download and empty and not path.endswith((".tar", ".gz", ".tgz")) else None
    if failure is None and os.path.isdir(os.path.join(path, "cifar-10-batches-py")):
        return cifar_from_torchvision(path)
    raise DatasetNotFoundError(_not_found_message("cifar10", root, path, failure))


def _try_download(path):
    """Fetch the official release into `path`; None on success, else why it failed (offline machines)."""
    import torchvision
    existed, old_timeout = os.path.exists(path), socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        torchvision.datasets.CIFAR10(path, train=True, download=True)
        return None
    except Exception as e:  # URLError, timeouts, a bad checksum: all mean "not available here"
        if not existed and os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)  # leave no empty folder that would look like a data set next time
        return f"{type(e).__name__}: {e}"
    finally:
        socket.setdefaulttimeout(old_timeout)


def _not_found_message(dataset, root, path, download_failure=None):
    if dataset == "imagenet":
        layout = f"{path}/train/<class>/*.JPEG and {path}/val/<class>/*.JPEG (torchvision ImageFolder layout)"
        link, extra = "imagenet_data", "; for a quick run without data use --data synthetic"
    else:
        layout = (f"{path}/cifar-10-batches-py/ (torchvision's format), or an image folder "
                  f"{path}/train/<class>/*.jpg|png with {path}/test/ or {path}/val/ beside it, "
                  f"or a .tar.gz holding such a folder")
        link, extra = "cifar10_data", ("; or use --data cifar10-mini for the embedded real CIFAR-10 (5,000 training "
                                   "images and the 10,000 test images)")
    tried = f" (downloading the official release failed: {download_failure})" if download_failure else ""
    where = repr(str(root)) if str(root) == path else f"{str(root)!r} ({path})"
    return (f"{dataset} data not found at {where}{tried}. Expected {layout}. Fix: link your copy "
            f"from the repo root with `ln -s /path/to/data {link}`, or pass `--data-root /path/to/data`{extra}.")


def cifar_from_torchvision(root):
    import torchvision
    out = []
    for train in (True, False):
        ds = torchvision.datasets.CIFAR10(root, train=train, download=False)
        out.append((torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)))
    return out[0], out[1], list(ds.classes)


def iter_archive_images(path):
    """(split, class, member name, bytes) for every image `.../<split>/<class>/<file>` in a tar(.gz)."""
    with tarfile.open(path, "r:*") as tar:
        for m in tar:
            parts = m.name.split("/")
            if (m.isfile() and len(parts) >= 3 and parts[-3] in ("train",) + EVAL_SPLITS
                    and parts[-1].lower().endswith(IMAGE_EXTENSIONS)):
                yield parts[-3], parts[-2], m.name, tar.extractfile(m).read()


def cifar_from_archive(path, show=True):
    files = {}
    for split, cls, name, data in iter_archive_images(path):
        files.setdefault(split, []).append((cls, name, data))
    return _assemble(files, path, show)


def cifar_from_folder(root, show=True):
    files = {}
    for split in ("train",) + EVAL_SPLITS:
        top = os.path.join(root, split)
        for cls in sorted(os.listdir(top)) if os.path.isdir(top) else []:
            for name in sorted(os.listdir(os.path.join(top, cls))) if os.path.isdir(os.path.join(top, cls)) else []:
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    files.setdefault(split, []).append((cls, name, os.path.join(top, cls, name)))
    return _assemble(files, root, show)


def _assemble(files, source, show):
    """Decode train and the first evaluation split present; labels are the sorted train class names."""
    eval_split = next((s for s in EVAL_SPLITS if files.get(s)), None)
    if not files.get("train") or eval_split is None:
        raise DatasetNotFoundError(_not_found_message("cifar10", source, os.path.abspath(source)))
    classes = sorted({cls for cls, _, _ in files["train"]})
    extra = sorted({cls for cls, _, _ in files[eval_split]} - set(classes))
    if extra:
        raise ValueError(f"{source}: {eval_split}/ has classes missing from train/: {extra}")
    label = {c: i for i, c in enumerate(classes)}
    out = []
    for split in ("train", eval_split):
        items = sorted(files[split], key=lambda f: (f[0], f[1]))  # a stable order whatever the archive's
        images = decode_images([f[2] for f in items], f"decoding {split} images of {source}", show)
        out.append((images, torch.tensor([label[f[0]] for f in items])))
    return out[0], out[1], classes


def decode_images(blobs, desc="decoding", show=True):
    """JPEG/PNG bytes or file paths -> uint8 (N,3,H,W); all images must share one size."""
    from PIL import Image
    from tqdm import tqdm
    arrays = []
    for blob in tqdm(blobs, desc=desc, disable=not show or len(blobs) < 10000, leave=False):
        with Image.open(io.BytesIO(blob) if isinstance(blob, bytes) else blob) as im:
            arrays.append(np.asarray(im.convert("RGB")))
        if arrays[-1].shape != arrays[0].shape:
            raise ValueError(f"image {len(arrays) - 1} is {arrays[-1].shape[:2]}, the first is "
                             f"{arrays[0].shape[:2]}: the CIFAR path needs images of one size")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


# --- the decode cache -----------------------------------------------------------------------------

def _source_key(path):
    """Path, size and modification time of the archive, or of every image in the folder, so any change
    to the data invalidates the cache."""
    if os.path.isfile(path):
        st = os.stat(path)
        return f"{path}|{st.st_size}|{st.st_mtime_ns}"
    count = size = newest = 0
    for top, _, names in os.walk(path):
        for n in names:
            if n.lower().endswith(IMAGE_EXTENSIONS):
                st = os.stat(os.path.join(top, n))
                count, size, newest = count + 1, size + st.st_size, max(newest, st.st_mtime_ns)
    return f"{path}|{count}|{size}|{newest}"


def _cache_paths(path, key, beside=True):
    """Beside the data (shared by every user of it), else under ~/.cache when that folder is read-only
    (or when `beside` is off)."""
    stem = os.path.basename(path.rstrip("/")).split(".")[0] or "data"
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    home = os.path.join(CACHE_DIR, f"{stem}-{digest}.npz")
    near = path.rstrip("/") + ".decoded.npz"
    return [near, home] if beside and _writable(os.path.dirname(near)) else [home]


def _writable(folder):
    """Writable, and not marked read-only: root may write anywhere, but a folder without write bits
    (a shared, read-only copy of the data) is meant to stay untouched."""
    return os.access(folder, os.W_OK) and bool(os.stat(folder).st_mode & 0o200)


def _cached(path, build, show, beside=True):
    from utils.atomic import atomic_write
    path = os.path.realpath(path)
    key = _source_key(path)
    candidates = _cache_paths(path, key, beside)
    for cache in candidates:
        data = _read_cache(cache, key)
        if data is not None:
            return data
    (tx, ty), (vx, vy), classes = data = build()
    arrays = dict(key=np.array(key), classes=np.array(classes), train_x=tx.numpy(), train_y=ty.numpy(),
                  val_x=vx.numpy(), val_y=vy.numpy())
    for cache in candidates:
        try:
            atomic_write(cache, lambda tmp: _write_npz(tmp, arrays))
            if show:
                print(f"cached the decoded images in {cache}")
            break
        except OSError:
            continue  # read-only folder: try the next place; with none, decode again next time
    return data


def _write_npz(tmp, arrays):
    with open(tmp, "wb") as f:  # a file object, so numpy does not append its own .npz to the temp name
        np.savez(f, **arrays)
    os.chmod(tmp, 0o644)  # the temp file is private; the cache is for every user of the data


def _read_cache(cache, key):
    try:
        with np.load(cache, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None  # the data changed since: rebuild
            t = {k: torch.from_numpy(z[k]) for k in ("train_x", "train_y", "val_x", "val_y")}
            return (t["train_x"], t["train_y"]), (t["val_x"], t["val_y"]), [str(c) for c in z["classes"]]
    except (OSError, KeyError, ValueError):
        return None  # absent or unreadable: rebuild


# --- ImageNet: image folders through DataLoader workers -------------------------------------------

def imagenet_folders(root, image_size):
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder
    path = os.path.abspath(root)
    if not all(os.path.isdir(os.path.join(path, s)) for s in ("train", "val")):
        raise DatasetNotFoundError(_not_found_message("imagenet", root, path))
    # Images leave the workers as uint8 (4x less to copy than float) and are normalised on the device.
    train = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.PILToTensor()])
    val = T.Compose([T.Resize(int(image_size * 256 / 224)), T.CenterCrop(image_size), T.PILToTensor()])
    return ImageFolder(os.path.join(path, "train"), train), ImageFolder(os.path.join(path, "val"), val)


class FolderLoader(_Loader):
    """A torchvision dataset read by DataLoader workers over this rank's shard.

    Resuming at batch `start` skips the indices of the first `start` batches without loading them;
    the order is exact, but the random crops are not the ones the uninterrupted run would have drawn
    (worker seeds depend on the start), a best effort that costs nothing.
    """

    def __init__(self, dataset, batch_size, rank, world_size, seed, device, train, workers=4):
        super().__init__(len(dataset), len(dataset.classes), batch_size, rank, world_size, seed, device, train)
        self.dataset, self.workers = dataset, workers
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255

    def batches(self, start=0):
        from torch.utils.data import DataLoader
        idx = self.indices()[start * self.batch_size:].tolist()
        if not idx:
            return
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, self.rank, start))
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=idx, num_workers=self.workers,
                            pin_memory=self.device.type == "cuda", generator=g)
        for images, labels in loader:
            images = images.to(self.device, non_blocking=True).float().sub_(self.mean).div_(self.std)
            yield images, labels.to(self.device, non_blocking=True)
