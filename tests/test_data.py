import itertools
import os
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from utils.training import data
from utils.training.data import (
    CIFAR_PAD,
    DATASETS,
    MINI_ARCHIVE,
    DatasetNotFoundError,
    TensorLoader,
    crop_flip,
    decode_images,
    iter_archive_images,
    make_loaders,
    normalize_cifar,
)

REAL_ARCHIVE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10-jpeg.tar.gz")
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def mini():
    return data.cifar_from_archive(MINI_ARCHIVE, show=False)


def coded_images(n):
    """Image i is flat: channel 0 = i // 256, channel 1 = i % 256, channel 2 = 255, so any crop of it
    still names it at the centre (a shift of at most 4 keeps the centre inside the image)."""
    i = torch.arange(n)
    images = torch.stack([i // 256, i % 256, torch.full_like(i, 255)], 1).to(torch.uint8)
    return images[:, :, None, None].expand(n, 3, 32, 32).contiguous(), i % 10


def decode_ids(images):
    pixel = ((images[:, :, 16, 16] * 0.5 + 0.5) * 255).round().long()
    return (pixel[:, 0] * 256 + pixel[:, 1]).tolist()


def coded_loader(n, rank, world, train, batch=10, seed=3, **kw):
    images, labels = coded_images(n)
    return TensorLoader(images, labels, 10, batch, rank, world, seed, torch.device("cpu"), train, **kw)


def epoch_ids(loader, epoch, start=0):
    loader.set_epoch(epoch)
    ids = []
    for images, labels in loader.batches(start):
        ids += decode_ids(images)
        assert labels.tolist() == [i % 10 for i in decode_ids(images)]  # labels travel with their images
    return ids


def test_mini_loads_balanced_real_images(mini):
    train, val = make_loaders("cifar10-mini", "ignored", 100, "cpu", 0, 1, 0, 0)
    assert (train.dataset_size, val.dataset_size, train.num_classes) == (5000, 10000, 10)
    assert (len(train), len(val), train.num_samples, val.num_samples) == (50, 40, 5000, 10000)  # eval: 256
    assert train.images.dtype == torch.uint8 and train.images.shape == (5000, 3, 32, 32)
    assert torch.bincount(train.labels).tolist() == [500] * 10
    assert torch.bincount(val.labels).tolist() == [1000] * 10  # the whole CIFAR-10 test set
    assert mini[2] == CIFAR_CLASSES
    for loader, batch in ((train, 100), (val, data.EVAL_BATCH)):
        images, labels = next(loader.batches())
        assert images.shape == (batch, 3, 32, 32) and images.dtype == torch.float32
        assert labels.dtype == torch.int64 and 0 <= labels.min() and labels.max() < 10
        assert -1 <= images.min() < -0.9 and 0.9 < images.max() <= 1
        assert images.std() > 0.2  # real photographs, not a constant


def test_train_shards_are_disjoint_and_cover_whole_global_batches():
    n, batch = 1003, 50  # 1003 is not a whole number of global batches: 3 images are dropped
    ranks = [coded_loader(n, r, 2, True, batch) for r in range(2)]
    assert [len(l) for l in ranks] == [10, 10] and ranks[0].num_samples == 500
    ids = [epoch_ids(l, 0) for l in ranks]
    assert len(ids[0]) == len(ids[1]) == 500
    assert not set(ids[0]) & set(ids[1]) and len(set(ids[0] + ids[1])) == 1000
    # The two shards are dealt from one permutation: one process with the global batch sees their union.
    single = epoch_ids(coded_loader(n, 0, 1, True, 2 * batch), 0)
    assert sorted(single) == sorted(ids[0] + ids[1])
    assert single[0::2] == ids[0] and single[1::2] == ids[1]


def test_train_order_is_seeded_by_seed_and_epoch():
    a, b = coded_loader(1000, 0, 2, True, 50), coded_loader(1000, 0, 2, True, 50)
    assert epoch_ids(a, 0) == epoch_ids(b, 0)
    assert epoch_ids(a, 1) == epoch_ids(b, 1) != epoch_ids(a, 0)
    assert epoch_ids(coded_loader(1000, 0, 2, True, 50, seed=4), 0) != epoch_ids(a, 0)
    a.set_epoch(0)
    first = [x for x, _ in a.batches()]
    b.set_epoch(0)
    assert all(torch.equal(x, y) for x, (y, _) in zip(first, b.batches()))  # augmentation too


def test_batches_from_start_equal_the_tail_exactly(mini):
    (x, y), _, _ = mini
    loader = TensorLoader(x, y, 10, 128, 1, 2, 7, torch.device("cpu"), True)
    loader.set_epoch(3)
    full = list(loader.batches())
    tail = list(loader.batches(11))
    assert len(full) == len(loader) == 19 and len(tail) == len(full) - 11
    for (xa, ya), (xb, yb) in zip(full[11:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert list(loader.batches(len(loader))) == []


def test_val_counts_every_sample_once_with_a_partial_last_batch():
    n, batch = 1003, 64
    ranks = [coded_loader(n, r, 2, False, batch) for r in range(2)]
    assert [l.num_samples for l in ranks] == [502, 501] and [len(l) for l in ranks] == [8, 8]
    sizes = [[len(y) for _, y in l.batches()] for l in ranks]
    assert sizes == [[64] * 7 + [54], [64] * 7 + [53]]
    ids = epoch_ids(ranks[0], 0) + epoch_ids(ranks[1], 0)
    assert sorted(ids) == list(range(n))


def test_val_ranks_together_see_the_whole_split(mini, monkeypatch):
    monkeypatch.setattr(data, "cifar_from_archive", lambda *args, **kwargs: mini)  # skip decoding again
    val = [make_loaders("cifar10-mini", None, 128, "cpu", r, 2, 0, 0)[1] for r in range(2)]
    labels = torch.cat([y for l in val for _, y in l.batches()])
    assert labels.numel() == val[0].dataset_size == 10000
    assert torch.bincount(labels).tolist() == [1000] * 10
    assert [len(y) for _, y in val[0].batches()][-1] == 5000 - 19 * 256  # partial (the eval batch: 256 a rank)


def test_crop_is_a_shift_with_zeros_and_flip_mirrors():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (6, 3, 32, 32), generator=g, dtype=torch.int64).to(torch.uint8)
    shifts = torch.tensor([[0, 0], [8, 8], [4, 4], [0, 8], [3, 6], [8, 1]])
    flips = torch.tensor([False, False, True, True, False, True])
    out = crop_flip(x, shifts, flips)
    for k in range(6):
        dy, dx = (shifts[k] - CIFAR_PAD).tolist()  # the crop's displacement from the original image
        want = torch.zeros_like(x[k])
        want[:, max(0, -dy):32 - max(0, dy), max(0, -dx):32 - max(0, dx)] = \
            x[k][:, max(0, dy):32 - max(0, -dy), max(0, dx):32 - max(0, -dx)]
        assert torch.equal(out[k], want.flip(-1) if flips[k] else want)
    assert torch.equal(out[2], x[2].flip(-1))  # the centred crop is the image itself


def test_train_images_are_crops_and_flips_of_their_sources(mini):
    (x, y), _, _ = mini
    loader = TensorLoader(x, y, 10, 32, 0, 1, 0, torch.device("cpu"), True)
    images, _ = next(loader.batches())
    sources = x[loader.indices()[:32]]
    grid = torch.tensor([(i, j, f) for i in range(9) for j in range(9) for f in (0, 1)])
    found = []
    for k in range(32):  # each output is exactly one of the 162 crop/flip candidates of its source
        cands = normalize_cifar(crop_flip(sources[k:k + 1].expand(len(grid), -1, -1, -1), grid[:, :2],
                                          grid[:, 2].bool()))
        hits = [tuple(grid[c].tolist()) for c in range(len(grid)) if torch.equal(cands[c], images[k])]
        assert hits
        found.append(hits[0])
    assert len({h[:2] for h in found}) > 5 and {h[2] for h in found} == {0, 1}  # random, not identity


def test_without_augmentation_images_are_plainly_normalised(mini):
    (x, y), (vx, vy), _ = mini
    val = TensorLoader(vx, vy, 10, 100, 0, 1, 0, torch.device("cpu"), False)
    images, labels = next(val.batches())
    assert torch.allclose(images, (vx[:100].float() / 255 - 0.5) / 0.5) and torch.equal(labels, vy[:100])
    plain = TensorLoader(x, y, 10, 100, 0, 1, 0, torch.device("cpu"), True, augment=False)
    images, _ = next(plain.batches())
    assert torch.allclose(images, (x[plain.indices()[:100]].float() / 255 - 0.5) / 0.5)


def write_folder(root, ext, classes=("ant", "bee", "cat"), per_class=4, seed=0):
    g = np.random.default_rng(seed)
    originals = {}
    for split in ("train", "test"):
        for c in classes:
            os.makedirs(root / split / c)
            for i in range(per_class):
                pixels = g.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.{ext}")
                originals[split, c, i] = pixels
    return originals


def test_image_folder_and_its_archive_load_the_same(tmp_path):
    originals = write_folder(tmp_path / "pngs", "png")
    train, val = make_loaders("cifar10", str(tmp_path / "pngs"), 4, "cpu", 0, 1, 0, 0)
    assert (train.num_classes, train.dataset_size, val.dataset_size, len(train)) == (3, 12, 12, 3)
    assert torch.bincount(train.labels).tolist() == [4, 4, 4]
    want = torch.stack([torch.from_numpy(originals["train", c, i]).permute(2, 0, 1)
                        for c in ("ant", "bee", "cat") for i in range(4)])
    assert torch.equal(train.images, want)  # PNG is lossless; sorted classes are the labels
    assert (tmp_path / "pngs.decoded.npz").exists()  # cached beside the folder
    with tarfile.open(tmp_path / "data.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "pngs", arcname="mydata")
    from_tar, _ = make_loaders("cifar10", str(tmp_path / "data.tar.gz"), 4, "cpu", 0, 1, 0, 0)
    assert torch.equal(from_tar.images, want) and torch.equal(from_tar.labels, train.labels)


def test_folder_cache_is_rebuilt_when_an_image_changes(tmp_path):
    write_folder(tmp_path / "d", "png")
    before = make_loaders("cifar10", str(tmp_path / "d"), 4, "cpu", 0, 1, 0, 0)[0].images
    assert torch.equal(make_loaders("cifar10", str(tmp_path / "d"), 4, "cpu", 0, 1, 0, 0)[0].images, before)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "d" / "train" / "ant" / "0.png")
    after = make_loaders("cifar10", str(tmp_path / "d"), 4, "cpu", 0, 1, 0, 0)[0].images
    assert after[0].sum() == 0 and torch.equal(after[1:], before[1:])


def test_jpeg_folder_with_val_split(tmp_path):
    write_folder(tmp_path / "j", "jpg")
    os.rename(tmp_path / "j" / "test", tmp_path / "j" / "val")
    train, val = make_loaders("cifar10", str(tmp_path / "j"), 4, "cpu", 0, 1, 0, 0)
    assert val.images.shape == (12, 3, 32, 32) and torch.bincount(val.labels).tolist() == [4, 4, 4]


def test_torchvision_format_is_read(tmp_path, monkeypatch):
    import torchvision

    class FakeCIFAR10:  # the real one checks md5 sums of the official files, which a test cannot write
        classes = CIFAR_CLASSES

        def __init__(self, root, train, download):
            assert root == str(tmp_path) and not download
            n = 20 if train else 10
            self.data = np.full((n, 32, 32, 3), 7 if train else 9, np.uint8)
            self.targets = [i % 10 for i in range(n)]

    (tmp_path / "cifar-10-batches-py").mkdir()
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    train, val = make_loaders("cifar10", str(tmp_path), 10, "cpu", 0, 1, 0, 0)
    assert train.images.shape == (20, 3, 32, 32) and (val.images == 9).all() and len(val) == 1


def test_missing_data_says_where_and_how_to_fix(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as e:
        make_loaders("cifar10", str(missing), 64, "cpu", 0, 1, 0, 0, download=False)
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    for part in (str(missing), "ln -s", "--data-root", "cifar10-mini", "cifar-10-batches-py", "train/<class>"):
        assert part in msg
    with pytest.raises(DatasetNotFoundError, match="ln -s /path/to/data imagenet_data"):
        make_loaders("imagenet", str(missing), 64, "cpu", 0, 1, 0, 0)

    import torchvision

    def offline(*args, **kwargs):
        os.makedirs(args[0], exist_ok=True)  # as torchvision does before fetching
        raise OSError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DatasetNotFoundError, match="downloading the official release failed.*service not known"):
        make_loaders("cifar10", str(missing), 64, "cpu", 0, 1, 0, 0)
    assert not missing.exists()  # no empty folder left behind to look like a data set


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="cifar10, cifar10-mini, imagenet, synthetic"):
        make_loaders("mnist", None, 64, "cpu", 0, 1, 0, 0)
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        make_loaders("synthetic", None, 66, "cpu", 0, 4, 0, 0)
    with pytest.raises(ValueError, match="larger than the training set"):
        make_loaders("synthetic", None, 1024, "cpu", 0, 1, 0, 0)
    assert set(DATASETS) == {"cifar10", "cifar10-mini", "imagenet", "synthetic"}


def test_synthetic_is_seeded_and_learnable():
    train, val = make_loaders("synthetic", None, 64, "cpu", 0, 1, 0, 0, image_size=24, num_classes=7)
    x, y = next(train.batches())
    assert x.shape == (64, 3, 24, 24) and x.dtype == torch.float32 and int(y.max()) < 7
    again, _ = make_loaders("synthetic", None, 64, "cpu", 0, 1, 0, 0, image_size=24, num_classes=7)
    assert torch.equal(next(again.batches())[0], x)
    # A nearest-class-mean classifier fit on train does well on val: the labels carry signal.
    tx, ty = map(torch.cat, zip(*train.batches()))
    vx, vy = map(torch.cat, zip(*val.batches()))
    means = torch.stack([tx[ty == c].mean(0) for c in range(7)]).flatten(1)
    pred = torch.cdist(vx.flatten(1), means).argmin(1)
    assert (pred == vy).float().mean() > 0.8 and val.num_samples == 128


def test_imagenet_folders(tmp_path):
    g = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 3)):
        for c in ("n01", "n02"):
            os.makedirs(tmp_path / split / c)
            for i in range(n):
                pixels = g.integers(0, 256, (40, 50, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / c / f"{i}.JPEG")
    ranks = [make_loaders("imagenet", str(tmp_path), 4, "cpu", r, 2, 0, 0, image_size=16, num_classes=1000)
             for r in range(2)]
    train, val = ranks[0]
    assert (train.num_classes, train.dataset_size, len(train), val.dataset_size) == (2, 12, 3, 6)
    x, y = next(train.batches())
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(list(train.batches(2))) == 1
    labels = torch.cat([y for _, v in ranks for _, y in v.batches()])
    assert torch.bincount(labels).tolist() == [3, 3]  # each val image once over the two ranks


@pytest.mark.skipif(not os.path.exists(REAL_ARCHIVE), reason="needs ../shared/data/cifar10-jpeg.tar.gz")
def test_real_cifar10_archive_is_recognised():
    items = list(itertools.islice(iter_archive_images(REAL_ARCHIVE), 5))
    assert all(split in ("train", "test") and cls in CIFAR_CLASSES for split, cls, _, _ in items)
    assert decode_images([blob for *_, blob in items], show=False).shape == (5, 3, 32, 32)


@pytest.mark.skipif(not (os.path.exists(REAL_ARCHIVE) and os.environ.get("FULL_DATA") == "1"),
                    reason="decodes all 60,000 images (about a minute once, then cached): set FULL_DATA=1")
def test_real_cifar10_full_load():
    train, val = make_loaders("cifar10", REAL_ARCHIVE, 128, "cpu", 0, 1, 0, 0)
    assert (train.dataset_size, val.dataset_size, len(train)) == (50000, 10000, 390)
    assert torch.bincount(train.labels).tolist() == [5000] * 10
    assert torch.bincount(val.labels).tolist() == [1000] * 10


def test_mini_is_decoded_once_into_the_home_cache_never_beside_the_repo_file(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    real = data.cifar_from_archive
    monkeypatch.setattr(data, "cifar_from_archive", lambda *a, **k: calls.append(a) or real(*a, **k))
    first = make_loaders("cifar10-mini", None, 100, "cpu")[1]
    second = make_loaders("cifar10-mini", None, 100, "cpu")[1]
    assert len(calls) == 1 and torch.equal(first.images, second.images) and first.dataset_size == 10000
    assert len(os.listdir(tmp_path / "cache")) == 1
    assert not [n for n in os.listdir(os.path.dirname(MINI_ARCHIVE)) if n.endswith(".npz")]
