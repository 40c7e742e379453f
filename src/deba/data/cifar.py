"""CIFAR-10 / CIFAR-100: the standard python-format folders, torchvision download, the offline JPEG archive.

The python-format folders (``cifar-10-batches-py``: data_batch_1..5, test_batch, batches.meta;
``cifar-100-python``: train, test, meta) hold pickled dicts with ``data`` uint8 [N, 3072] (channel-major:
pixel [c, h, w] is column c*1024 + h*32 + w) and ``labels`` / ``fine_labels``. They are read directly with
pickle, as torchvision does, so only open files from a source you trust.

The offline archive (``cifar10-jpeg.npz``: ``train_jpeg``/``test_jpeg`` concatenated JPEG files,
``*_offsets`` [n+1], ``*_labels`` [n]) is decoded with Pillow once and the pixels cached as an uncompressed
``.npz`` under the cache folder, keyed by the archive's name, size and modification time.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DebaError, option
from .dataset import ArrayDataset, channel_stats

NPZ_NAME = "cifar10-jpeg.npz"
NPZ_KEYS = ("train_jpeg", "train_offsets", "train_labels", "test_jpeg", "test_offsets", "test_labels")
CACHE_FORMAT = 1  # bump when the cache layout changes: old caches are then ignored and rebuilt
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class CifarSpec:
    title: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    meta_file: str
    names_key: str
    num_classes: int
    torchvision_class: str


SPECS = {
    "cifar10": CifarSpec(
        "CIFAR-10",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "labels",
        "batches.meta",
        "label_names",
        10,
        "CIFAR10",
    ),
    "cifar100": CifarSpec(
        "CIFAR-100",
        "cifar-100-python",
        ("train",),
        ("test",),
        "fine_labels",
        "meta",
        "fine_label_names",
        100,
        "CIFAR100",
    ),
}


def _spec(name: str) -> CifarSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise DebaError(f"unknown CIFAR variant {name!r}; choose cifar10 or cifar100") from None


# --- python-format folders -----------------------------------------------------------------------
def _str_keys(d: dict) -> dict:
    # Files pickled by Python 2 (the originals) load with str keys under latin1; files pickled by
    # Python 3 keep bytes keys. Accept both.
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="latin1")
    except Exception as e:  # noqa: BLE001 - a damaged pickle fails in many ways; all mean the same
        raise DebaError(f"cannot read {path}: {type(e).__name__}: {e}".replace("\n", " ")) from None
    if not isinstance(d, dict):
        raise DebaError(f"{path} is not a CIFAR batch file (expected a pickled dict)")
    return _str_keys(d)


def _read_split(folder: Path, files: tuple[str, ...], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for fname in files:
        path = folder / fname
        d = _read_pickle(path)
        if "data" not in d or label_key not in d:
            raise DebaError(
                f"{path} lacks '{'data' if 'data' not in d else label_key}' (not a CIFAR batch file?)"
            )
        data = np.asarray(d["data"])
        labels = np.asarray(d[label_key], dtype=np.int64).reshape(-1)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DebaError(f"{path}: 'data' must be uint8 [N, 3072], got {data.dtype} {data.shape}")
        if labels.shape[0] != data.shape[0]:
            raise DebaError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    return np.concatenate(xs), np.concatenate(ys)


def _class_names(folder: Path, spec: CifarSpec) -> tuple[str, ...] | None:
    path = folder / spec.meta_file
    if not path.exists():
        return None
    names = _read_pickle(path).get(spec.names_key)
    if not names or len(names) != spec.num_classes:
        return None
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)


def _missing_files(folder: Path, spec: CifarSpec) -> list[str]:
    return [f for f in (*spec.train_files, *spec.test_files) if not (folder / f).is_file()]


def read_cifar_folder(folder: str | os.PathLike, name: str = "cifar10") -> ArrayDataset:
    """Read a python-format CIFAR folder (``cifar-10-batches-py`` or ``cifar-100-python``) into memory."""
    spec = _spec(name)
    folder = Path(folder)
    missing = _missing_files(folder, spec)
    if missing:
        raise DebaError(
            f"{folder} is incomplete (missing {', '.join(missing)}); pass {option('download')} to fetch "
            f"{spec.title} again, or point {option('data')} at a complete copy"
        )
    train_x, train_y = _read_split(folder, spec.train_files, spec.label_key)
    test_x, test_y = _read_split(folder, spec.test_files, spec.label_key)
    return _make_dataset(
        name, spec, train_x, train_y, test_x, test_y, _class_names(folder, spec), str(folder)
    )


def _make_dataset(name, spec, train_x, train_y, test_x, test_y, classes, source) -> ArrayDataset:
    for split, y in (("train", train_y), ("test", test_y)):
        if y.size and (y.min() < 0 or y.max() >= spec.num_classes):
            raise DebaError(f"{source}: {split} labels outside [0, {spec.num_classes}) for {spec.title}")
    mean, std = channel_stats(train_x)
    return ArrayDataset(
        torch.from_numpy(np.ascontiguousarray(train_x)),
        torch.from_numpy(train_y),
        torch.from_numpy(np.ascontiguousarray(test_x)),
        torch.from_numpy(test_y),
        spec.num_classes,
        mean,
        std,
        name,
        classes,
        source,
    )


# --- the offline JPEG archive --------------------------------------------------------------------
def _decode_jpegs(blob: np.ndarray, offsets: np.ndarray, source: Path, split: str) -> np.ndarray:
    """Decode every JPEG of one split with Pillow into uint8 [n, 3, H, W]."""
    from PIL import Image

    n = len(offsets) - 1
    view = memoryview(np.ascontiguousarray(blob))
    out = None
    for i in range(n):
        a, b = int(offsets[i]), int(offsets[i + 1])
        try:
            with Image.open(io.BytesIO(view[a:b])) as im:
                img = np.asarray(im.convert("RGB"))
        except Exception as e:  # noqa: BLE001 - any Pillow failure means an unreadable image
            raise DebaError(
                f"{source}: {split} image {i} is not a readable JPEG ({type(e).__name__})"
            ) from None
        if out is None:
            out = np.empty((n, 3, img.shape[0], img.shape[1]), dtype=np.uint8)
        if img.shape[:2] != out.shape[2:]:
            raise DebaError(
                f"{source}: {split} image {i} is {img.shape[1]}x{img.shape[0]}, expected "
                f"{out.shape[3]}x{out.shape[2]} like the first"
            )
        out[i] = img.transpose(2, 0, 1)
    if out is None:
        out = np.empty((0, 3, 32, 32), dtype=np.uint8)
    return out


def _open_npz(path: Path):
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - zipfile, pickle and format errors alike
        raise DebaError(
            f"cannot read {path} as a NumPy archive: {type(e).__name__}: {e}".replace("\n", " ")
        ) from None
    missing = [k for k in NPZ_KEYS if k not in z.files]
    if missing:
        z.close()
        raise DebaError(f"{path} is not the offline CIFAR-10 JPEG archive (missing {', '.join(missing)})")
    return z


def npz_cache_path(path: str | os.PathLike, cache_dir: str | os.PathLike) -> Path:
    """Where the decoded pixels of ``path`` are cached: keyed by its name, size and modification time."""
    st = Path(path).stat()
    return Path(cache_dir) / f"{Path(path).stem}-{st.st_size}-{st.st_mtime_ns}.v{CACHE_FORMAT}.npz"


def _load_cache(cache: Path, n_train: int, n_test: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached pixels, or None when the cache is absent, unreadable or does not fit the labels."""
    if not cache.is_file():
        return None
    try:
        with np.load(cache, allow_pickle=False) as z:
            train_x, test_x = z["train_x"], z["test_x"]
    except Exception:  # noqa: BLE001 - any unreadable cache is simply rebuilt
        return None
    ok = (
        train_x.dtype == np.uint8
        and test_x.dtype == np.uint8
        and train_x.ndim == 4
        and test_x.ndim == 4
        and train_x.shape[0] == n_train
        and test_x.shape[0] == n_test
        and train_x.shape[1] == 3
        and train_x.shape[1:] == test_x.shape[1:]
    )
    return (train_x, test_x) if ok else None


def _write_cache(cache: Path, train_x: np.ndarray, test_x: np.ndarray) -> None:
    """Write atomically (temporary file, then rename); a cache that cannot be written is only a warning."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{cache.name}.", suffix=".tmp", dir=cache.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, train_x=train_x, test_x=test_x)
            os.replace(tmp, cache)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        warnings.warn(f"could not cache decoded images at {cache}: {e}", stacklevel=3)


def load_jpeg_npz(path: str | os.PathLike, cache_dir: str | os.PathLike) -> ArrayDataset:
    """Read the offline CIFAR-10 JPEG archive, decoding it only when no valid cache exists."""
    path = Path(path)
    z = _open_npz(path)
    with z:
        train_y = np.asarray(z["train_labels"], dtype=np.int64).reshape(-1)
        test_y = np.asarray(z["test_labels"], dtype=np.int64).reshape(-1)
        cache = npz_cache_path(path, cache_dir)
        pixels = _load_cache(cache, len(train_y), len(test_y))
        if pixels is None:  # absent or corrupt: decode (a few seconds for 60,000 images) and cache
            split_x = {}
            for split, n in (("train", len(train_y)), ("test", len(test_y))):
                offsets = np.asarray(z[f"{split}_offsets"], dtype=np.int64)
                if offsets.shape != (n + 1,):
                    raise DebaError(
                        f"{path}: {split}_offsets has {offsets.shape[0]} entries, expected {n + 1}"
                    )
                split_x[split] = _decode_jpegs(z[f"{split}_jpeg"], offsets, path, split)
            pixels = (split_x["train"], split_x["test"])
            _write_cache(cache, *pixels)
    return _make_dataset(
        "cifar10", SPECS["cifar10"], pixels[0], train_y, pixels[1], test_y, CIFAR10_CLASSES, str(path)
    )


# --- finding and downloading ---------------------------------------------------------------------
def _download(spec: CifarSpec, root: Path) -> None:
    import torchvision

    cls = getattr(torchvision.datasets, spec.torchvision_class)
    try:
        root.mkdir(parents=True, exist_ok=True)
        # One call fetches and unpacks the whole archive (both splits) into root/<folder>, checking its md5.
        cls(root=str(root), train=True, download=True)
    except Exception as e:  # noqa: BLE001 - network, disk and checksum errors alike
        raise DebaError(
            f"could not download {spec.title} into {root}: {type(e).__name__}: {e}".replace("\n", " ")
        ) from None


def load_cifar(
    name: str,
    data: str | os.PathLike | None = None,
    download: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> ArrayDataset:
    """Find CIFAR data as described in ``load_dataset`` and read it."""
    from .dataset import default_cache_dir

    spec = _spec(name)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folders: list[Path] = []
    archives: list[Path] = []
    if data is not None:
        p = Path(data).expanduser()
        if p.suffix == ".npz":
            if name != "cifar10":
                raise DebaError(
                    f"{p} is a CIFAR-10 archive; {spec.title} needs the {spec.folder} folder "
                    "(--data FOLDER or --download)"
                )
            archives.append(p)
        else:
            if p.name == spec.folder or (p / spec.train_files[0]).is_file():
                folders.append(p)
            folders.append(p / spec.folder)
            if name == "cifar10":
                archives.append(p / NPZ_NAME)
        download_root = None if p.suffix == ".npz" else (p.parent if p.name == spec.folder else p)
    else:
        for root in (Path("data"), cache):
            folders.append(root / spec.folder)
            if name == "cifar10":
                archives.append(root / NPZ_NAME)
        download_root = cache

    for folder in folders:
        if folder.is_dir() and (not _missing_files(folder, spec) or not download):
            return read_cifar_folder(
                folder, name
            )  # an incomplete folder without --download: say what is missing
    for archive in archives:
        if archive.is_file():
            return load_jpeg_npz(archive, cache)
    if download:
        if download_root is None:
            raise DebaError(f"{option('download')} needs a folder for {option('data')}, not the archive {data}")
        _download(spec, download_root)
        return read_cifar_folder(download_root / spec.folder, name)
    looked = ", ".join(str(p) for p in (*folders, *archives))
    offline = f" or the offline {NPZ_NAME}" if name == "cifar10" else ""
    raise DebaError(
        f"no {spec.title} data found (looked for {looked}); pass {option('data')} with a folder holding "
        f"{spec.folder}{offline}, or {option('download')}"
    )


# --- fixtures ------------------------------------------------------------------------------------
def write_cifar_fixture(
    root: str | os.PathLike, name: str = "cifar10", n_train: int = 50, n_test: int = 20, seed: int = 0
) -> Path:
    """Write a small python-format folder with random pixels and labels (for tests); returns the folder.

    Same layout and keys as the real files (bytes keys, as Python 3 pickles them): CIFAR-10 spreads the
    training images over data_batch_1..5.
    """
    spec = _spec(name)
    rng = np.random.default_rng(seed)
    folder = Path(root) / spec.folder
    folder.mkdir(parents=True, exist_ok=True)

    def batch(n: int, label: str) -> dict:
        d = {
            b"batch_label": label.encode(),
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            spec.label_key.encode(): rng.integers(0, spec.num_classes, size=n).tolist(),
            b"filenames": [f"img_{label.replace(' ', '_')}_{i}.png".encode() for i in range(n)],
        }
        if name == "cifar100":
            d[b"coarse_labels"] = [y // 5 for y in d[b"fine_labels"]]
        return d

    def dump(obj: dict, fname: str) -> None:
        with open(folder / fname, "wb") as f:
            pickle.dump(obj, f, protocol=2)

    if name == "cifar10":
        sizes = [len(part) for part in np.array_split(np.arange(n_train), len(spec.train_files))]
        for i, (fname, n) in enumerate(zip(spec.train_files, sizes), start=1):
            dump(batch(n, f"training batch {i} of 5"), fname)
        dump(batch(n_test, "testing batch 1 of 1"), "test_batch")
        dump(
            {
                b"label_names": [c.encode() for c in CIFAR10_CLASSES],
                b"num_cases_per_batch": max(sizes),
                b"num_vis": 3072,
            },
            spec.meta_file,
        )
    else:
        dump(batch(n_train, "training batch 1 of 1"), "train")
        dump(batch(n_test, "testing batch 1 of 1"), "test")
        dump(
            {
                b"fine_label_names": [f"class_{i:02d}".encode() for i in range(100)],
                b"coarse_label_names": [f"superclass_{i:02d}".encode() for i in range(20)],
            },
            spec.meta_file,
        )
    return folder
