import json

import pytest
import torch

from mvl.profiles import PROFILES, get_device, resolve_profile, seed_everything, setup

DEFAULTS = {
    "quick": dict(n_iter=10, lr=1e-2, eps=1e-3, dims=[2, 4], objective="mvl", spectral=True),
    "book": dict(n_iter=100, lr=1e-3, eps=1e-3, dims=[2, 8], objective="mvl", spectral=True),
    "paper": dict(n_iter=1000, lr=1e-3, eps=1e-4, dims=[2, 8, 32], objective="mvl", spectral=True),
}


@pytest.fixture(autouse=True)
def no_env_profile(monkeypatch):
    monkeypatch.delenv("MVL_PROFILE", raising=False)
    monkeypatch.delenv("MVL_RUN_RECORD", raising=False)


def test_profile_defaults_and_overrides():
    profile, knobs = resolve_profile("book", DEFAULTS, dict(n_iter=None, lr=5e-4))
    assert profile == "book"
    assert knobs["n_iter"] == 100 and knobs["lr"] == 5e-4 and knobs["dims"] == [2, 8]


def test_env_overrides_profile(monkeypatch):
    monkeypatch.setenv("MVL_PROFILE", "quick")
    profile, knobs = resolve_profile("paper", DEFAULTS)
    assert profile == "quick" and knobs["n_iter"] == 10


@pytest.mark.parametrize(
    "profile, overrides, match",
    [
        ("fast", {}, "unknown profile"),
        ("book", {"eps": -1e-3}, "eps must be positive"),
        ("book", {"lr": float("nan")}, "lr must be finite"),
        ("book", {"n_iter": 2.5}, "n_iter must be an integer"),
        ("book", {"n_iter": 0}, "n_iter must be positive"),
        ("book", {"dims": [2, -1]}, "each entry of dims"),
        ("book", {"dims": "2,4"}, "non-empty list"),
        ("book", {"steps": 3}, "unknown parameter"),
        ("book", {"spectral": 1}, "True or False"),
        ("book", {"objective": "cd"}, "objective must be one of"),
    ],
)
def test_bad_values_raise_clear_errors(profile, overrides, match):
    with pytest.raises(ValueError, match=match):
        resolve_profile(profile, DEFAULTS, overrides, choices={"objective": ["mvl", "exact"]})


def test_bounds_allow_zero_and_cap():
    d = {p: dict(weight=0.5) for p in PROFILES}
    assert resolve_profile("book", d, {"weight": 0.0}, bounds={"weight": (0, 1)})[1]["weight"] == 0.0
    with pytest.raises(ValueError, match="<= 1"):
        resolve_profile("book", d, {"weight": 2.0}, bounds={"weight": (0, 1)})


def test_missing_profile_in_defaults():
    with pytest.raises(ValueError, match="paper"):
        resolve_profile("book", {"quick": {}, "book": {}})


def test_seeding_is_reproducible():
    seed_everything(3)
    a = torch.randn(5)
    seed_everything(3)
    assert torch.equal(a, torch.randn(5))
    with pytest.raises(ValueError):
        seed_everything(-1)


def test_device_selection():
    assert get_device("cpu").type == "cpu"
    assert get_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError):
        get_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            get_device("cuda")


def test_setup_prints_and_records(tmp_path, monkeypatch, capsys):
    record = tmp_path / "rec.json"
    monkeypatch.setenv("MVL_RUN_RECORD", str(record))
    cfg = setup("quick", "cpu", 1, defaults=DEFAULTS, overrides={"n_iter": 7})
    out = capsys.readouterr().out
    assert "profile: quick" in out and "n_iter=7" in out and "torch" in out
    assert cfg.n_iter == 7 and cfg.device.type == "cpu" and cfg["profile"] == "quick"
    assert json.loads(record.read_text())["profile"] == "quick"
    with pytest.raises(AttributeError, match="no entry"):
        cfg.missing


def test_config_attribute_assignment_writes_the_key():
    """cfg.epochs = E must change cfg["epochs"], or a checkpoint keyed on the dict reloads stale weights."""
    from mvl.ae.vae import checkpoint_path
    from mvl.profiles import Config

    cfg = Config(epochs=6, lr=1e-3)
    before = checkpoint_path("ch7-vamp", cfg, root="/tmp/x")
    cfg.epochs = 10
    assert cfg["epochs"] == 10 and cfg.epochs == 10
    assert checkpoint_path("ch7-vamp", cfg, root="/tmp/x") != before
    del cfg.lr
    assert "lr" not in cfg


def test_checkpoint_key_includes_the_library_version(monkeypatch):
    import mvl
    from mvl.ae.vae import checkpoint_path

    a = checkpoint_path("m", {"epochs": 6}, root="/tmp/x")
    monkeypatch.setattr(mvl, "__version__", "9.9.9")
    assert checkpoint_path("m", {"epochs": 6}, root="/tmp/x") != a
