"""Resumable recipe runs (mvl.train) and committed trained models (mvl.trained)."""

import json

import pytest
import torch

from mvl import train as T
from mvl import trained
from mvl.ae.recipes import RECIPES, VAERecipe, get_recipe

torch.set_num_threads(1)


def tiny(**changes):
    base = VAERecipe("tiny", 1, 7, "a test recipe", prior="vamp", latent=2, hidden=8, n_pseudo=3, epochs=4,
                     warmup=1.0, lr=1e-3, batch_size=16, patience=50, seed=0, eval_samples=4, eval_images=8)
    return base.with_changes(**changes)


def tiny_data(nan=False):
    g = torch.Generator().manual_seed(0)
    train = torch.bernoulli(torch.full((48, 784), 0.3), generator=g)
    if nan:
        train[5, 7] = float("nan")
    valid = torch.bernoulli(torch.full((16, 784), 0.3), generator=g)
    test = torch.bernoulli(torch.full((8, 784), 0.3), generator=g)
    return train, valid, test


def run(recipe, tmp_path, **kw):
    return T.train_recipe(recipe, data=tiny_data(), cache=tmp_path / "cache", out=tmp_path / "out", progress=False,
                          device="cpu", **kw)


def weights(path):
    return torch.load(path, weights_only=True)


def test_a_run_split_in_two_gives_the_same_weights(tmp_path):
    one = run(tiny(), tmp_path / "a")
    assert one["finished"] and one["epochs"] == 4
    assert run(tiny(), tmp_path / "b", stop_after_epochs=2) is None  # stops at a checkpoint
    two = run(tiny(), tmp_path / "b", resume=True)
    assert two["epochs"] == 4
    wa, wb = weights(tmp_path / "a/out/tiny.pt"), weights(tmp_path / "b/out/tiny.pt")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert one["metrics"]["test_nll"] == two["metrics"]["test_nll"]
    assert one["curve"]["valid_elbo"] == two["curve"]["valid_elbo"]
    # a third run that changes nothing but the seed gives other weights: the check above can fail
    run(tiny(seed=1), tmp_path / "c")
    wc = weights(tmp_path / "c/out/tiny.pt")
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_an_existing_run_is_never_overwritten_by_accident(tmp_path):
    run(tiny(), tmp_path, stop_after_epochs=1)
    ckpt = T.run_dir(tiny(), tmp_path / "cache") / "state.pt"
    before = ckpt.read_bytes()
    with pytest.raises(FileExistsError, match="--resume"):
        run(tiny(), tmp_path)
    with pytest.raises(ValueError, match="left untouched"):
        run(tiny(lr=2e-3), tmp_path, resume=True)  # other settings, same version: refused
    assert ckpt.read_bytes() == before


def test_a_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(FloatingPointError, match="last good checkpoint"):
        T.train_recipe(tiny(), data=tiny_data(nan=True), cache=tmp_path, out=tmp_path / "out", progress=False,
                       device="cpu")
    assert not (tmp_path / "out" / "tiny.pt").exists()


def test_published_models_load_checksum_and_version_verified(tmp_path):
    record = run(tiny(), tmp_path)
    out = tmp_path / "out"
    manifest = json.loads((out / "MANIFEST.json").read_text())
    entry = manifest["tiny"]
    assert entry["sha256"] == trained.sha256(out / "tiny.pt") and entry["bytes"] == (out / "tiny.pt").stat().st_size
    assert entry["epochs"] == record["epochs"] == 4 and entry["recipe_version"] == 1
    state, _ = trained.load_state_dict("tiny", 1, out)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    with pytest.raises(ValueError, match="stale"):
        trained.load_state_dict("tiny", 2, out)
    with pytest.raises(KeyError, match="python -m mvl.train"):
        trained.load_state_dict("ch7-standard", 1, out)
    blob = bytearray((out / "tiny.pt").read_bytes())
    blob[-10] ^= 0xFF
    (out / "tiny.pt").write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=r"tiny\.pt does not match its checksum.*python -m mvl\.train tiny"):
        trained.load_state_dict("tiny", 1, out)


def test_the_colab_path_downloads_and_verifies(tmp_path, monkeypatch):
    """Without the repository's trained/ folder, the manifest and weights come from the raw URL."""
    run(tiny(), tmp_path)
    served = tmp_path / "out"
    monkeypatch.setattr(trained, "TRAINED_DIR", tmp_path / "no-repository")
    monkeypatch.setenv(trained.URL_ENV, served.as_uri())
    cache = tmp_path / "download-cache"
    state, entry = trained.load_state_dict("tiny", 1, cache=cache)
    assert (cache / "tiny.pt").exists() and trained.sha256(cache / "tiny.pt") == entry["sha256"]
    ref = weights(served / "tiny.pt")
    assert all(torch.equal(state[k], ref[k]) for k in ref)
    # a corrupted download is caught by the same checksum
    (cache / "tiny.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="checksum"):
        trained.load_state_dict("tiny", 1, cache=cache)


def test_the_raw_url_comes_from_the_repository_setting(monkeypatch):
    import mvl

    monkeypatch.delenv(trained.URL_ENV, raising=False)
    assert trained.raw_base_url() == (
        "https://raw.githubusercontent.com/" + mvl.REPOSITORY_URL.removeprefix("https://github.com/") + "/main/trained/"
    )


def test_command_line(capsys):
    assert T.main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in RECIPES)
    with pytest.raises(SystemExit) as exit_info:
        T.main(["no-such-recipe"])
    assert exit_info.value.code == 2 and "ch7-vampprior" in capsys.readouterr().err
    with pytest.raises(KeyError, match="ch7-standard"):
        get_recipe("ch7")


def test_recipes_reject_bad_settings():
    with pytest.raises(ValueError, match="prior"):
        tiny(prior="gaussian-mixture")
    with pytest.raises(ValueError, match="epochs"):
        tiny(epochs=0)
    assert tiny().fingerprint() != tiny(lr=2e-3).fingerprint()


def test_load_trained_rebuilds_the_model_with_its_record(tmp_path):
    record = run(tiny(), tmp_path)
    model, loaded = T.load_trained(tiny(), folder=tmp_path / "out")
    assert loaded == json.loads((tmp_path / "out" / "tiny.json").read_text()) and loaded["epochs"] == record["epochs"]
    torch.manual_seed(0)
    nll = -model.log_likelihood(tiny_data()[2], 4).mean().item()
    assert nll == pytest.approx(record["metrics"]["test_nll"], rel=1e-6)  # same weights, same seed, same number


def test_the_committed_models_match_their_manifest():
    """Every model under trained/ has the checksum, size and recipe version its manifest entry says."""
    manifest = trained.read_manifest()
    total = 0
    for name, entry in manifest.items():
        path = trained.TRAINED_DIR / entry["file"]
        assert path.exists(), f"{path} is listed in the manifest but missing"
        assert trained.sha256(path) == entry["sha256"] and path.stat().st_size == entry["bytes"], path
        assert entry["recipe_version"] == get_recipe(name).version, f"{name}: stale committed model"
        record = json.loads((trained.TRAINED_DIR / entry["record"]).read_text())
        assert record["recipe"] == name and record["epochs"] == entry["epochs"]
        assert record["metrics"]["test_nll"] == entry["metrics"]["test_nll"]
        total += entry["bytes"]
    assert total <= trained.MAX_TOTAL_BYTES
