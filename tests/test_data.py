"""deba.data: CIFAR folders and the offline JPEG archive, subsets, the synthetic set, DeviceLoader and
DataLoaderSource, checked against independent NumPy / Pillow references."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deba.data import (
    ArrayDataset,
    BatchSizeError,
    DataLoaderSource,
    DeviceLoader,
    epoch_permutation,
    eval_batches,
    load_dataset,
    make_synthetic,
    npz_cache_path,
    write_cifar_fixture,
)
from deba.data import cifar as cifar_mod
from deba.errors import DebaError

REAL_NPZ = Path("/work/shared/data/cifar10-jpeg.npz")


# --- helpers -------------------------------------------------------------------------------------
def _raw_split(folder: Path, files, label_key: bytes):
    """The raw rows and labels of the named pickles, read independently of deba."""
    data, labels = [], []
    for f in files:
        with open(folder / f, "rb") as fh:
            d = pickle.load(fh, encoding="bytes")
        data.append(np.asarray(d[b"data"]))
        labels.extend(d[label_key])
    return np.concatenate(data), np.asarray(labels, dtype=np.int64)


def _expected_chw(rows: np.ndarray) -> np.ndarray:
    """pixel [c, h, w] = row[c*1024 + h*32 + w], by explicit index arithmetic."""
    c, h, w = np.indices((3, 32, 32))
    return rows[:, c * 1024 + h * 32 + w]


def _stats64(x: np.ndarray):
    v = x.astype(np.float64) / 255.0
    return v.mean(axis=(0, 2, 3)), v.std(axis=(0, 2, 3))


def _ids_loader(n=103, batch=8, **kw):
    """A loader whose label of sample k is k, so every batch names its samples."""
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (n, 3, 12, 10), dtype=torch.uint8, generator=g)
    return x, DeviceLoader(x, torch.arange(n), batch, "cpu", (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), **kw)


def _reference_augment(img: np.ndarray, oy: int, ox: int, flip: bool, pad: int = 4) -> np.ndarray:
    """Zero-pad by ``pad``, crop the original size at (oy, ox), mirror left-right if ``flip`` (NumPy)."""
    c, h, w = img.shape
    padded = np.zeros((c, h + 2 * pad, w + 2 * pad), dtype=img.dtype)
    padded[:, pad : pad + h, pad : pad + w] = img
    crop = padded[:, oy : oy + h, ox : ox + w]
    return crop[:, :, ::-1] if flip else crop


def _unnormalise(x: torch.Tensor, loader: DeviceLoader) -> np.ndarray:
    mean = np.asarray(loader.mean).reshape(1, -1, 1, 1)
    std = np.asarray(loader.std).reshape(1, -1, 1, 1)
    v = (x.double().numpy() * std + mean) * 255.0
    assert np.abs(v - np.round(v)).max() < 1e-3  # every output pixel is a normalised uint8 value
    return np.round(v).astype(np.uint8)


def _by_sample(loader: DeviceLoader, start: int = 0) -> dict[int, np.ndarray]:
    out = {}
    for x, y in loader.batches(start):
        for img, k in zip(x, y.tolist()):
            assert k not in out
            out[k] = img.numpy()
    return out


# --- CIFAR python folders ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,files,label_key,test_files,classes",
    [
        ("cifar10", [f"data_batch_{i}" for i in range(1, 6)], b"labels", ["test_batch"], 10),
        ("cifar100", ["train"], b"fine_labels", ["test"], 100),
    ],
)
def test_cifar_fixture_round_trip(tmp_path, name, files, label_key, test_files, classes):
    folder = write_cifar_fixture(tmp_path, name, n_train=23, n_test=7, seed=3)
    assert (
        folder.parent == tmp_path and (folder / ("batches.meta" if name == "cifar10" else "meta")).is_file()
    )
    rows, labels = _raw_split(folder, files, label_key)
    test_rows, test_labels = _raw_split(folder, test_files, label_key)
    assert rows.shape == (23, 3072) and rows.dtype == np.uint8

    for data_arg in (tmp_path, folder):  # the parent folder or the python folder itself
        ds = load_dataset(name, data=data_arg, cache_dir=tmp_path / "cache")
        assert isinstance(ds, ArrayDataset) and ds.name == name and ds.num_classes == classes
        assert ds.train_x.dtype == torch.uint8 and ds.train_x.shape == (23, 3, 32, 32)
        assert ds.train_y.dtype == torch.int64 and ds.test_x.shape == (7, 3, 32, 32)
        np.testing.assert_array_equal(ds.train_x.numpy(), _expected_chw(rows))
        np.testing.assert_array_equal(ds.test_x.numpy(), _expected_chw(test_rows))
        np.testing.assert_array_equal(ds.train_y.numpy(), labels)
        np.testing.assert_array_equal(ds.test_y.numpy(), test_labels)
        # spot check of the layout by hand: channel 2, row 5, column 7 of image 4
        assert int(ds.train_x[4, 2, 5, 7]) == int(rows[4, 2 * 1024 + 5 * 32 + 7])
        mean, std = _stats64(ds.train_x.numpy())
        np.testing.assert_allclose(ds.mean, mean, rtol=1e-12)
        np.testing.assert_allclose(ds.std, std, rtol=1e-12)
        assert len(ds.classes) == classes


def test_cifar_reads_python2_style_str_keys(tmp_path):
    """The original files, pickled by Python 2, load with str keys; the fixture's have bytes keys."""
    folder = write_cifar_fixture(tmp_path, "cifar10", n_train=10, n_test=4, seed=1)
    rng = np.random.default_rng(9)
    data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump({"data": data, "labels": [7, 0, 9]}, f, protocol=2)
    ds = load_dataset("cifar10", data=tmp_path)
    rows, _ = _raw_split(folder, ["data_batch_1"], b"labels")
    np.testing.assert_array_equal(ds.train_x[len(rows) : len(rows) + 3].numpy(), _expected_chw(data))
    assert ds.train_y[len(rows) : len(rows) + 3].tolist() == [7, 0, 9]


def test_missing_and_incomplete_data_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DebaError) as e:
        load_dataset("cifar100", cache_dir=tmp_path / "cache")
    msg = str(e.value)
    # called from Python: the arguments are named as Python spells them (the CLI says --data, --download)
    assert "\n" not in msg and "cifar-100-python" in msg and "pass data with" in msg and "or download" in msg
    assert str(tmp_path / "cache") in msg
    with pytest.raises(DebaError, match="looked for .*nowhere"):
        load_dataset("cifar10", data=tmp_path / "nowhere")
    folder = write_cifar_fixture(tmp_path / "d", "cifar10", n_train=10, n_test=3)
    (folder / "data_batch_4").unlink()
    with pytest.raises(DebaError, match="missing data_batch_4"):
        load_dataset("cifar10", data=tmp_path / "d")
    (folder / "data_batch_4").write_bytes(b"not a pickle")
    with pytest.raises(DebaError, match="cannot read .*data_batch_4"):
        load_dataset("cifar10", data=tmp_path / "d")
    with pytest.raises(DebaError, match="CIFAR-10 archive"):
        load_dataset("cifar100", data=tmp_path / "x.npz")
    with pytest.raises(DebaError, match="unknown dataset"):
        load_dataset("imagenet")


def test_default_search_finds_data_folder_in_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_cifar_fixture(tmp_path / "data", "cifar100", n_train=6, n_test=2)
    ds = load_dataset("cifar100", cache_dir=tmp_path / "cache")
    assert ds.train_x.shape[0] == 6 and ds.num_classes == 100


def test_download_goes_through_torchvision(tmp_path, monkeypatch):
    import torchvision

    calls = []

    class FakeCIFAR100:
        def __init__(self, root, train=True, download=False):
            calls.append((Path(root), download))
            write_cifar_fixture(root, "cifar100", n_train=9, n_test=4, seed=2)

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", FakeCIFAR100)
    ds = load_dataset("cifar100", data=tmp_path / "dl", download=True)
    assert calls == [(tmp_path / "dl", True)] and ds.train_x.shape[0] == 9
    load_dataset("cifar100", data=tmp_path / "dl", download=True)  # complete already: no second fetch
    assert len(calls) == 1
    load_dataset("cifar100", download=True, cache_dir=tmp_path / "cache")  # no --data: into the cache
    assert calls[-1] == (tmp_path / "cache", True)

    class Offline:
        def __init__(self, root, train=True, download=False):
            raise OSError("network is unreachable\nsecond line")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(DebaError) as e:
        load_dataset("cifar10", data=tmp_path / "dl2", download=True)
    assert "could not download CIFAR-10" in str(e.value) and "\n" not in str(e.value)


# --- the offline JPEG archive --------------------------------------------------------------------
def _smooth_images(n, seed):
    rng = np.random.default_rng(seed)
    low = torch.from_numpy(rng.uniform(0, 255, (n, 3, 4, 4)))
    up = torch.nn.functional.interpolate(low, size=(32, 32), mode="bilinear", align_corners=True)
    return up.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # smooth: JPEG keeps it close


def _write_jpeg_npz(path: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, list[bytes]]:
    """An archive in the offline file's format; returns the JPEG bytes per split."""
    arrays, encoded = {}, {}
    for split, (images, labels) in splits.items():
        blobs = []
        for img in images:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=95, subsampling=0)
            blobs.append(buf.getvalue())
        encoded[split] = blobs
        arrays[f"{split}_jpeg"] = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        arrays[f"{split}_offsets"] = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(
            np.int64
        )
        arrays[f"{split}_labels"] = labels.astype(np.int64)
    np.savez_compressed(path, **arrays)
    return encoded


def test_jpeg_npz_decodes_once_and_caches(tmp_path, monkeypatch):
    train, test = _smooth_images(12, 0), _smooth_images(5, 1)
    train_y, test_y = np.arange(12) % 10, np.array([3, 1, 4, 1, 5])
    npz = tmp_path / "cifar10-jpeg.npz"
    blobs = _write_jpeg_npz(npz, {"train": (train, train_y), "test": (test, test_y)})
    cache = tmp_path / "cache"

    ds = load_dataset("cifar10", data=npz, cache_dir=cache)
    assert ds.train_x.shape == (12, 3, 32, 32) and ds.test_x.shape == (5, 3, 32, 32)
    np.testing.assert_array_equal(ds.train_y.numpy(), train_y)
    np.testing.assert_array_equal(ds.test_y.numpy(), test_y)
    # exactly Pillow's decoding of each file, in CHW; and close to the encoded pixels
    decoded = np.stack([np.asarray(Image.open(io.BytesIO(b))) for b in blobs["train"]]).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(ds.train_x.numpy(), decoded)
    assert np.abs(ds.train_x.numpy().astype(int) - train.transpose(0, 3, 1, 2)).mean() < 3
    assert npz_cache_path(npz, cache).is_file()
    mean, std = _stats64(ds.train_x.numpy())
    np.testing.assert_allclose(ds.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(ds.std, std, rtol=1e-12)

    def no_decoding(*a, **k):
        raise AssertionError("decoded again although a valid cache exists")

    monkeypatch.setattr(cifar_mod, "_decode_jpegs", no_decoding)
    again = load_dataset(
        "cifar10", data=tmp_path, cache_dir=cache
    )  # the folder holding the archive works too
    assert torch.equal(again.train_x, ds.train_x) and torch.equal(again.test_y, ds.test_y)

    monkeypatch.undo()
    npz_cache_path(npz, cache).write_bytes(b"garbage")  # a corrupt cache is rebuilt
    rebuilt = load_dataset("cifar10", data=npz, cache_dir=cache)
    assert torch.equal(rebuilt.train_x, ds.train_x)
    with np.load(npz_cache_path(npz, cache)) as z:
        np.testing.assert_array_equal(z["train_x"], ds.train_x.numpy())


def test_jpeg_npz_errors(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, train_jpeg=np.zeros(3, np.uint8))
    with pytest.raises(DebaError, match="missing train_offsets"):
        load_dataset("cifar10", data=bad, cache_dir=tmp_path / "c")
    broken = tmp_path / "broken.npz"
    np.savez(
        broken,
        train_jpeg=np.arange(10, dtype=np.uint8),
        train_offsets=np.array([0, 10]),
        train_labels=np.array([1]),
        test_jpeg=np.zeros(0, np.uint8),
        test_offsets=np.array([0]),
        test_labels=np.zeros(0, np.int64),
    )
    with pytest.raises(DebaError, match="train image 0 is not a readable JPEG"):
        load_dataset("cifar10", data=broken, cache_dir=tmp_path / "c")


@pytest.mark.slow
@pytest.mark.skipif(not REAL_NPZ.is_file(), reason="the offline CIFAR-10 archive is not here")
def test_real_offline_cifar10(tmp_path):
    ds = load_dataset("cifar10", data=REAL_NPZ, cache_dir=tmp_path)
    assert ds.train_x.shape == (50000, 3, 32, 32) and ds.test_x.shape == (10000, 3, 32, 32)
    assert ds.train_y.bincount().tolist() == [5000] * 10 and ds.test_y.bincount().tolist() == [1000] * 10
    # close to the published CIFAR-10 statistics (JPEG re-encoding shifts them slightly)
    np.testing.assert_allclose(ds.mean, (0.4914, 0.4822, 0.4465), atol=0.005)
    np.testing.assert_allclose(ds.std, (0.2470, 0.2435, 0.2616), atol=0.005)
    sub = load_dataset("cifar10", data=REAL_NPZ, cache_dir=tmp_path, subset=1000)
    counts = sub.train_y.bincount(minlength=10)
    assert counts.sum() == 1000 and counts.min() > 50  # random, not the first 1000 (all airplanes)


# --- subsets -------------------------------------------------------------------------------------
def test_subset_is_seeded_independently_of_the_run_seed(tmp_path):
    write_cifar_fixture(tmp_path, "cifar10", n_train=60, n_test=10, seed=4)
    full = load_dataset("cifar10", data=tmp_path)
    torch.manual_seed(1)
    a = load_dataset("cifar10", data=tmp_path, subset=20)
    torch.manual_seed(2)  # a different run seed: the same subset
    b = load_dataset("cifar10", data=tmp_path, subset=20, subset_seed=0)
    c = load_dataset("cifar10", data=tmp_path, subset=20, subset_seed=1)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
    assert not torch.equal(a.train_x, c.train_x)
    # the subset is 20 distinct training images with their labels; test split and statistics untouched
    rows = {full.train_x[i].numpy().tobytes(): i for i in range(60)}
    picked = [rows[img.numpy().tobytes()] for img in a.train_x]
    assert len(set(picked)) == 20 and picked != list(range(20))
    assert a.train_y.tolist() == full.train_y[picked].tolist()
    assert torch.equal(a.test_x, full.test_x) and a.mean == full.mean and a.std == full.std
    with pytest.raises(DebaError, match="larger than the 60"):
        load_dataset("cifar10", data=tmp_path, subset=61)
    with pytest.raises(DebaError, match="positive integer"):
        load_dataset("cifar10", data=tmp_path, subset=0)


# --- synthetic -----------------------------------------------------------------------------------
def test_synthetic_is_deterministic_and_well_formed():
    a = load_dataset("synthetic")
    b = load_dataset("synthetic")
    assert a.train_x.shape == (2000, 3, 32, 32) and a.test_x.shape == (500, 3, 32, 32) and a.num_classes == 10
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert a.train_y.bincount(minlength=10).min() > 100
    small = load_dataset("synthetic", synthetic_size=(50, 20), subset=30)
    assert small.train_x.shape[0] == 30 and small.test_x.shape[0] == 20
    assert not torch.equal(make_synthetic(50, 20, seed=1).train_x, make_synthetic(50, 20, seed=0).train_x)
    with pytest.raises(DebaError):
        load_dataset("synthetic", data="somewhere")


@pytest.mark.slow
def test_synthetic_is_learnable_by_a_tiny_cnn():
    from deba.models import tiny_cnn  # the demo's model

    torch.manual_seed(0)
    ds = load_dataset("synthetic")
    model = tiny_cnn(10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = DeviceLoader(ds.train_x, ds.train_y, 32, "cpu", ds.mean, ds.std, augment=True, seed=0)
    for epoch in range(3):
        loader.set_epoch(epoch)
        for x, y in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        correct = sum(
            int((model(x).argmax(1) == y).sum())
            for x, y in eval_batches(ds.test_x, ds.test_y, 250, "cpu", ds.mean, ds.std)
        )
    assert correct / 500 > 0.4  # chance is 0.1


# --- DeviceLoader --------------------------------------------------------------------------------
def test_loader_normalises_exactly_without_augmentation():
    x, loader = _ids_loader(augment=False)
    xb, yb = next(iter(loader))
    assert xb.dtype == torch.float32 and xb.shape == (8, 3, 12, 10) and yb.dtype == torch.int64
    img = x[yb].numpy().astype(np.float64)
    ref = (img / 255.0 - np.array(loader.mean).reshape(1, 3, 1, 1)) / np.array(loader.std).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(xb.numpy(), ref, rtol=0, atol=1e-6)
    mean_t = torch.tensor(loader.mean).view(1, 3, 1, 1)
    std_t = torch.tensor(loader.std).view(1, 3, 1, 1)
    assert torch.equal(xb, (x[yb].float() / 255 - mean_t) / std_t)


def test_augmentation_is_zero_padded_crop_then_mirror():
    x, loader = _ids_loader(n=300, batch=300, augment=True, seed=11)
    loader.set_epoch(2)
    xb, yb = next(iter(loader))
    got = _unnormalise(xb, loader)
    oy, ox, flip = loader.augment_params()
    images = x.numpy()
    for row, k in enumerate(yb.tolist()):
        ref = _reference_augment(images[k], int(oy[k]), int(ox[k]), bool(flip[k]))
        np.testing.assert_array_equal(got[row], ref)
    # independent of augment_params: each output is one of the 162 candidate crops / mirrored crops
    for row in range(10):
        k = int(yb[row])
        candidates = [
            _reference_augment(images[k], a, b, f) for a in range(9) for b in range(9) for f in (0, 1)
        ]
        assert any(np.array_equal(got[row], c) for c in candidates)
    # a different epoch draws differently
    oy3, ox3, flip3 = loader.augment_params(epoch=3)
    assert not (torch.equal(oy, oy3) and torch.equal(ox, ox3) and torch.equal(flip, flip3))


def test_augmentation_draws_are_uniform():
    """The 9 x 9 offsets x 2 flips are about equally likely: chi-square over 16,200 draws (161 degrees of
    freedom: mean 161, sd 18; the bound is six sd above the mean)."""
    n = 16200
    loader = DeviceLoader(torch.zeros(n, 3, 2, 2, dtype=torch.uint8), torch.zeros(n), 1, augment=True, seed=5)
    for epoch in (0, 1):
        oy, ox, flip = loader.augment_params(epoch)
        assert int(oy.min()) == 0 and int(oy.max()) == 8 and int(ox.min()) == 0 and int(ox.max()) == 8
        cells = (oy * 9 + ox) * 2 + flip.long()
        counts = np.bincount(cells.numpy(), minlength=162).astype(np.float64)
        expected = n / 162
        assert ((counts - expected) ** 2 / expected).sum() < 161 + 6 * 18


def test_per_sample_augmentation_independent_of_batch_size_and_ranks():
    n = 101
    _, ref_loader = _ids_loader(n=n, batch=7, augment=True, seed=3)
    ref_loader.set_epoch(4)
    reference = _by_sample(ref_loader)
    for batch, world in ((64, 1), (10, 2), (9, 3)):
        for rank in range(world):
            _, loader = _ids_loader(n=n, batch=batch, augment=True, seed=3, rank=rank, world_size=world)
            loader.set_epoch(4)
            for k, img in _by_sample(loader).items():
                if k in reference:
                    np.testing.assert_array_equal(img, reference[k])


def test_steps_per_epoch_and_batch_size_changes():
    _, loader = _ids_loader(n=103, batch=8)
    assert loader.steps_per_epoch == len(loader) == 103 // 8 and len(list(loader)) == 12
    x0 = loader.x
    loader.set_batch_size(25)
    assert loader.steps_per_epoch == 4 and [int(y.shape[0]) for _, y in loader] == [25] * 4
    assert loader.x is x0  # nothing re-created
    loader.set_batch_size(103)
    assert loader.steps_per_epoch == 1
    for bad in (104, 0):
        with pytest.raises(BatchSizeError):
            loader.set_batch_size(bad)
    with pytest.raises(ValueError):
        loader.set_batch_size(1000)
    with pytest.raises(DebaError):
        _ids_loader(n=10, batch=11)


def test_permutation_depends_on_seed_and_epoch_only():
    _, a = _ids_loader(seed=1, augment=True)
    _, b = _ids_loader(seed=1, augment=True)
    a.set_epoch(3)
    list(b)  # b went through epoch 0 first: epoch 3 must not depend on that history
    b.set_epoch(3)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
    a.set_epoch(4)
    assert not torch.equal(a.permutation(), b.permutation())
    _, c = _ids_loader(seed=2)
    c.set_epoch(3)
    assert not torch.equal(c.permutation(), b.permutation())
    assert torch.equal(b.permutation(), epoch_permutation(103, 1, 3))


def test_each_sample_at_most_once_and_resume_from_sample_offset():
    _, loader = _ids_loader(n=103, batch=8, augment=True, seed=7)
    loader.set_epoch(1)
    perm = loader.permutation().tolist()
    seen = torch.cat([y for _, y in loader]).tolist()
    assert len(seen) == len(set(seen)) == 96 and seen == perm[:96]
    # four steps at B=8, then (an out-of-memory error) the rest of the epoch at B=5
    first = [y for _, (_, y) in zip(range(4), loader.batches())]
    loader.set_batch_size(5)
    rest = list(loader.batches(start_sample=32))
    assert len(rest) == (103 - 32) // 5
    ids = torch.cat(first + [y for _, y in rest]).tolist()
    assert ids == perm[: 32 + 5 * 14]
    # the augmented pixels of the resumed samples are those of an uninterrupted epoch
    loader.set_batch_size(1)
    full = _by_sample(loader)
    for x, y in rest:
        for img, k in zip(x, y.tolist()):
            np.testing.assert_array_equal(img.numpy(), full[k])
    assert list(loader.batches(start_sample=103)) == []
    with pytest.raises(DebaError):
        loader.batches(start_sample=104)


@pytest.mark.parametrize("batch", [10, 11])
def test_rank_shares_concatenate_to_the_single_process_batch(batch):
    world = 2
    _, single = _ids_loader(n=103, batch=world * (batch // world), augment=True, seed=9)
    ranks = [
        _ids_loader(n=103, batch=batch, augment=True, seed=9, rank=r, world_size=world)[1]
        for r in range(world)
    ]
    assert ranks[0].global_batch_size == world * (batch // world) == single.batch_size
    assert ranks[0].steps_per_epoch == single.steps_per_epoch
    for loader in (single, *ranks):
        loader.set_epoch(2)
    for (xs, ys), *shares in zip(single, *ranks):
        assert torch.equal(torch.cat([s[1] for s in shares]), ys)
        assert torch.equal(torch.cat([s[0] for s in shares]), xs)


def test_ordered_eval_covers_every_sample_once():
    x, loader = _ids_loader(n=23, batch=5, augment=False, ordered=True)
    ys = [y for _, y in loader.batches(drop_last=False)]
    assert [len(y) for y in ys] == [5, 5, 5, 5, 3] and torch.cat(ys).tolist() == list(range(23))
    shares = [
        DeviceLoader(
            x,
            torch.arange(23),
            4,
            "cpu",
            loader.mean,
            loader.std,
            augment=False,
            ordered=True,
            rank=r,
            world_size=2,
        )
        for r in range(2)
    ]
    ids = sorted(torch.cat([y for s in shares for _, y in s.batches(drop_last=False)]).tolist())
    assert ids == list(range(23))
    got = torch.cat([y for _, y in eval_batches(x, torch.arange(23), 10)]).tolist()
    assert got == list(range(23))


def test_loader_state_round_trip():
    _, a = _ids_loader(seed=4, augment=True)
    a.set_epoch(6)
    a.set_batch_size(13)
    _, b = _ids_loader(seed=0, augment=True)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == {"seed": 4, "epoch": 6, "batch_size": 13}
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_loader_rejects_bad_input():
    x = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(DebaError, match="uint8"):
        DeviceLoader(x.float(), torch.zeros(4), 2)
    with pytest.raises(DebaError, match="one label per image"):
        DeviceLoader(x, torch.zeros(3), 2)
    with pytest.raises(DebaError, match="one per channel"):
        DeviceLoader(x, torch.zeros(4), 2, "cpu", (0.5,), (0.5,))
    with pytest.raises(DebaError, match="smaller than the number of ranks"):
        DeviceLoader(x, torch.zeros(4), 1, world_size=2)


# --- DataLoaderSource ----------------------------------------------------------------------------
class _Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter([(torch.zeros(1), 0)])


def test_dataloader_source_with_a_tensor_dataset():
    n = 37
    feats = torch.randn(n, 5)
    ds = torch.utils.data.TensorDataset(feats, torch.arange(n))
    src = DataLoaderSource(ds, 8, seed=2)
    assert src.steps_per_epoch == len(src) == 4
    src.set_epoch(1)
    batches = list(src)
    assert [len(y) for _, y in batches] == [8] * 4
    ids = torch.cat([y for _, y in batches])
    assert ids.tolist() == epoch_permutation(n, 2, 1)[:32].tolist()  # the DeviceLoader order
    assert torch.equal(torch.cat([x for x, _ in batches]), feats[ids])
    first = src.loader
    src.set_batch_size(8)
    assert src.loader is first  # unchanged size: nothing rebuilt
    src.set_batch_size(5)
    assert src.loader is not first and src.steps_per_epoch == 7
    rest = torch.cat([y for _, y in src.batches(start_sample=16)]).tolist()
    assert rest == epoch_permutation(n, 2, 1)[16 : 16 + 5 * 4].tolist()
    ordered = DataLoaderSource(ds, 10, shuffle=False)
    assert torch.cat([y for _, y in ordered]).tolist() == list(range(30))
    shares = [DataLoaderSource(ds, 8, seed=2, rank=r, world_size=2) for r in range(2)]
    for s in shares:
        s.set_epoch(1)
    for (_, y), (_, y0), (_, y1) in zip(batches, *shares):
        assert torch.equal(torch.cat([y0, y1]), y)
    other = DataLoaderSource(ds, 3)
    other.load_state_dict(src.state_dict())
    assert other.state_dict() == {"seed": 2, "epoch": 1, "batch_size": 5}
    with pytest.raises(BatchSizeError):
        src.set_batch_size(38)
    with pytest.raises(DebaError, match="map-style"):
        DataLoaderSource(_Stream(), 2)
    with pytest.raises(DebaError, match="sets drop_last itself"):
        DataLoaderSource(ds, 2, drop_last=False)


@pytest.mark.skipif(os.name == "nt", reason="worker start-up is slow on Windows")
def test_dataloader_source_with_a_worker():
    ds = torch.utils.data.TensorDataset(torch.arange(20).float().unsqueeze(1), torch.arange(20))
    src = DataLoaderSource(ds, 4, seed=1, num_workers=1)
    ids = torch.cat([y for _, y in src]).tolist()
    assert ids == epoch_permutation(20, 1, 0).tolist()
