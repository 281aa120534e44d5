"""Build the embedded CIFAR-10 set: `python utils/training/datasets/make_cifar10_mini.py --source ARCHIVE`.

Reads the image-folder archive of the real CIFAR-10 (`cifar10/train/<class>/NNNN.jpg`,
`cifar10/test/<class>/NNNN.jpg`, e.g. the project's cifar10-jpeg.tar.gz) and keeps the first 500
training files per class, by sorted file name, so the choice is balanced and the same every time, and
all 10,000 test files (1,000 per class): accuracies on the embedded set are those of the real test set. The JPEG bytes are copied unchanged (no re-encoding loss) into a tar.gz with
the same layout under `cifar10-mini/`, written byte-for-byte reproducibly (zeroed times and
owners), so rebuilding it never shows up as a change in git.
"""
import argparse
import gzip
import io
import os
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUTPUT = os.path.join(HERE, "cifar10-mini.tar.gz")
SPLITS = ("train", "test")


def read_source(path):
    """{(split, class): {file name: bytes}} for every image in the archive."""
    found = {}
    with tarfile.open(path, "r:*") as tar:
        for m in tar:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) < 3 or parts[-3] not in SPLITS:
                continue
            found.setdefault((parts[-3], parts[-2]), {})[parts[-1]] = tar.extractfile(m).read()
    return found


def select(found, per_split):
    """The first `per_split[split]` file names of every class, in sorted order."""
    chosen = []
    for (split, cls), files in sorted(found.items()):
        names = sorted(files)
        if len(names) < per_split[split]:
            raise SystemExit(f"{split}/{cls} has {len(names)} images, fewer than {per_split[split]}")
        chosen += [(f"cifar10-mini/{split}/{cls}/{n}", files[n]) for n in names[:per_split[split]]]
    return chosen


def write_archive(path, members):
    """A tar.gz whose bytes depend only on the members (times, owners and gzip header zeroed)."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, path)  # a crash never leaves a half-written archive under the final name


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, help="CIFAR-10 image-folder archive (.tar.gz)")
    p.add_argument("--output", default=DEFAULT_OUTPUT)
    p.add_argument("--train-per-class", type=int, default=500)
    p.add_argument("--test-per-class", type=int, default=1000)
    args = p.parse_args(argv)
    found = read_source(args.source)
    classes = sorted({cls for _, cls in found})
    if len(classes) != 10 or any((s, c) not in found for s in SPLITS for c in classes):
        raise SystemExit(f"{args.source}: expected train/ and test/ with the 10 CIFAR-10 class folders")
    members = select(found, {"train": args.train_per_class, "test": args.test_per_class})
    write_archive(args.output, members)
    print(f"{args.output}: {len(members)} images ({args.train_per_class}/{args.test_per_class} per class "
          f"train/test), {os.path.getsize(args.output) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
