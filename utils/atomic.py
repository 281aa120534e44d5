"""Writing a file atomically: to a temporary name in the same folder, then renamed over the target, so a
crash never leaves a half-written file under the final name. Every file a run writes goes through here."""
import json
import os
import tempfile


def atomic_write(path, write):
    """Call write(tmp_path), then rename tmp_path to path (same folder, so the rename is atomic)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the file gets the mode `open` would give
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path, text):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(path, write)


def write_json(path, record, indent=1):
    write_text(path, json.dumps(record, indent=indent, default=str) + "\n")
