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
    for field, value in (("optimizer", "sgd"), ("weight_init", "xavier"), ("pseudo_init", "zeros")):
        with pytest.raises(ValueError, match=field):
            tiny(**{field: value})
    with pytest.raises(ValueError, match="chapter-7 setting"):  # chapter 8's trainer would silently ignore it
        get_recipe("ch8-grbm-mvl").with_changes(optimizer="adamnormgrad")
    # the knobs added later keep old fingerprints at their old values, and change them otherwise
    assert "optimizer" not in tiny().settings() and tiny(optimizer="adamnormgrad").fingerprint() != tiny().fingerprint()


def test_the_official_code_recipes_build_he_weights_random_pseudo_inputs_and_use_adamnormgrad(tmp_path):
    """ch7-*-official: He-initialized linear weights (sd √(2/fan_in); the default init's is √(1/(3·fan_in))),
    pseudo-inputs with pixels N(0.05, 0.01²) (the released code's MNIST setting: nearly black images, where data
    starts are digits; not the sigmoid of N(−0.05, 0.01²), gray 0.49, that its command-line default suggests),
    and an AdamNormGrad trainer; a tiny run of such a recipe trains and resumes like the others."""
    from mvl.ae import vae as V

    model = get_recipe("ch7-vampprior-official").build()
    w = model.encoder.body[0].h.weight
    assert abs(w.std().item() / (2 / 784) ** 0.5 - 1) < 0.02, w.std()
    default = get_recipe("ch7-vampprior").build(torch.rand(600, 784)).encoder.body[0].h.weight
    assert abs(default.std().item() / (1 / (3 * 784)) ** 0.5 - 1) < 0.02  # what the He init must differ from
    u = model.prior.pseudo_inputs().detach()
    # 392 000 pixels: the mean within 0.001 (s.e. 1.6e-5), the sd 0.0095-0.0105 (clipping at 0.02 trims the low tail)
    assert abs(u.mean().item() - 0.05) < 0.001 and 0.0095 < u.std().item() < 0.0105, (u.mean(), u.std())
    trainer = get_recipe("ch7-standard-official").trainer(get_recipe("ch7-standard-official").build(), *tiny_data()[:2],
                                                         "cpu", torch.Generator().manual_seed(0))
    assert isinstance(trainer.opt, V.AdamNormGrad)
    with pytest.raises(ValueError, match="optimizer"):
        V.VAETrainer(model, tiny_data()[0], optimizer="sgd")
    one = run(tiny(optimizer="adamnormgrad", weight_init="he", pseudo_init="random"), tmp_path)
    assert one["settings"]["optimizer"] == "adamnormgrad" and one["metrics"]["test_nll"] > 0


def test_adamnormgrad_is_scale_free_and_moves_each_tensor_by_about_lr():
    """The gradient of each tensor is normalized first: a tensor whose gradient is 1000x larger moves exactly as
    far, and the first step moves every coordinate by lr·g_i/(|g_i| + ...) — about lr for the largest."""
    from mvl.ae import vae as V

    a, b = torch.nn.Parameter(torch.zeros(5)), torch.nn.Parameter(torch.zeros(5))
    g = torch.tensor([0.3, -1.0, 2.0, 0.0, 0.5])
    opt = V.AdamNormGrad([a, b], lr=0.01)
    a.grad, b.grad = g.clone(), 1000 * g.clone()
    opt.step()
    assert torch.allclose(a, b, atol=1e-9)
    assert torch.allclose(a, -0.01 * torch.sign(g), atol=1e-6)  # Adam's first step: lr·sign of the gradient
    plain = torch.nn.Parameter(torch.zeros(5))
    adam = torch.optim.Adam([plain], lr=0.01)
    for k in range(3):  # later steps differ from Adam's when the gradient's scale changes between steps
        for p_, opt_, scale in ((a, opt, 1.0), (plain, adam, 1.0)):
            p_.grad = g * (10.0 ** k) * scale
        b.grad = 1000 * g * (10.0 ** k)
        opt.step(); adam.step()
    assert torch.allclose(a, b, atol=1e-8) and not torch.allclose(a, plain, atol=1e-4)


def test_a_seed_replicate_publishes_its_record_without_weights(tmp_path):
    record = run(tiny(seed=1), tmp_path, record_only=True)
    out = tmp_path / "out"
    assert not (out / "tiny.pt").exists() and not (out / "MANIFEST.json").exists()
    assert json.loads((out / trained.REPLICATES_DIR / "tiny.json").read_text()) == record
    loaded = trained.load_record("tiny", 1, tiny(seed=1).fingerprint(), out)
    assert loaded["settings"]["seed"] == 1 and loaded["metrics"] == record["metrics"]
    with pytest.raises(ValueError, match="stale"):
        trained.load_record("tiny", 2, tiny(seed=1).fingerprint(), out)
    with pytest.raises(ValueError, match="stale"):  # same name and version, other settings (seed 0)
        trained.load_record("tiny", 1, tiny().fingerprint(), out)
    with pytest.raises(KeyError, match="--record-only"):
        trained.load_record("other", 1, tiny().fingerprint(), out)


def test_a_superseded_model_is_retired_to_its_record_and_a_run_elsewhere_is_adopted(tmp_path):
    """retire: the weights and manifest entry go, the record stays as a replicate's; adopt: a model published
    into another folder (--out) is verified there and published here with the same weights and record."""
    record = run(tiny(), tmp_path)
    out, repo = tmp_path / "out", tmp_path / "repo"
    entry = trained.adopt("tiny", out, repo)
    assert entry["sha256"] == trained.sha256(repo / "tiny.pt") and json.loads((repo / "tiny.json").read_text()) == record
    sd_out, sd_repo = trained.load_state_dict("tiny", 1, out)[0], trained.load_state_dict("tiny", 1, repo)[0]
    assert sd_out.keys() == sd_repo.keys() and all(torch.equal(sd_out[k], sd_repo[k]) for k in sd_out)
    with pytest.raises(KeyError, match="--out"):
        trained.adopt("other", out, repo)
    (out / "tiny.pt").write_bytes((out / "tiny.pt").read_bytes()[:-1] + b"x")  # a corrupted source is refused
    with pytest.raises(ValueError, match="SHA-256|sha256|checksum"):
        trained.adopt("tiny", out, tmp_path / "elsewhere")
    path = trained.retire("tiny", repo)
    assert path == repo / trained.REPLICATES_DIR / "tiny.json" and not (repo / "tiny.pt").exists()
    assert not (repo / "tiny.json").exists() and "tiny" not in trained.read_manifest(repo)
    assert trained.load_record("tiny", 1, tiny().fingerprint(), repo) == record
    with pytest.raises(KeyError):
        trained.load_state_dict("tiny", 1, repo)
    with pytest.raises(KeyError, match="retire"):
        trained.retire("tiny", repo)
    # the command line: a folder without the model is a clear error (exit status 2), not a traceback
    assert T.main(["ch10-wae-mvl-sphere", "--adopt", str(tmp_path / "empty"), "--out", str(repo)]) == 2
    assert T.main(["ch10-wae-mvl-sphere", "--retire", "--out", str(repo)]) == 2


def test_committed_replicate_records_match_their_recipes():
    """Every record under trained/replicates/ was made by the current version and settings of its recipe."""
    for path in sorted((trained.TRAINED_DIR / trained.REPLICATES_DIR).glob("*.json")):
        recipe = get_recipe(path.stem)
        record = trained.load_record(recipe.name, recipe.version, recipe.fingerprint())
        assert record["finished"] and record["settings"]["seed"] == recipe.seed, path


def test_reevaluation_adds_per_image_values_and_refuses_a_record_it_cannot_reproduce(tmp_path):
    record = run(tiny(), tmp_path)
    out = tmp_path / "out"
    per_image = record["metrics"].pop("per_image_nll")  # a record from before per-image values were kept
    assert len(per_image) == 8 and sum(per_image) / 8 == pytest.approx(record["metrics"]["test_nll"], abs=1e-3)
    trained.update_record("tiny", record, out)
    updated = T.reevaluate(tiny(), device="cpu", folder=out, data=tiny_data())
    assert updated["metrics"]["per_image_nll"] == per_image  # same seed, same images: the same numbers
    assert json.loads((out / "tiny.json").read_text()) == updated and "reevaluated" in updated
    assert trained.load_state_dict("tiny", 1, out)[1]["metrics"] == {  # the manifest entry is untouched
        k: v for k, v in record["metrics"].items()}
    updated["metrics"]["test_nll"] += 0.5  # a record the weights do not reproduce is left as it is
    trained.update_record("tiny", updated, out)
    before = (out / "tiny.json").read_text()
    with pytest.raises(ValueError, match="test_nll"):
        T.reevaluate(tiny(), device="cpu", folder=out, data=tiny_data())
    assert (out / "tiny.json").read_text() == before


def test_committed_models_keep_their_fingerprints():
    """Adding a recipe setting must not orphan committed weights: each record's fingerprint is the recipe's."""
    for name, entry in trained.read_manifest().items():
        record = json.loads((trained.TRAINED_DIR / entry["record"]).read_text())
        assert record["fingerprint"] == get_recipe(name).fingerprint(), name


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
        scalars = {k: v for k, v in record["metrics"].items() if not k.startswith("per_image")}
        assert scalars == entry["metrics"]  # whatever the recipe measures (NLL, accuracy, FID); per-image lists stay in the record
        total += entry["bytes"]
    assert total <= trained.MAX_TOTAL_BYTES


# ---- chapter 8: recipes with energy-based priors (mvl.ae.ebm_prior) through the same command ----

def tiny_ebm(**changes):
    from mvl.ae.recipes import EBMPriorRecipe

    base = EBMPriorRecipe("tiny-ebm", 1, 8, "a test recipe with a GRBM prior", latent=3, hidden=16, prior_hidden=6,
                          epochs=3, batch_size=32, prior_objective="mvl", eval_samples=16, eval_images=16,
                          ais_temperatures=200, ais_chains=32, seed=0)
    return base.with_changes(**changes)


def mnist_like(n=320, seed=0):
    """A few hundred MNIST-like images without downloading MNIST: gray-level strokes (a random thick line
    per image, blurred) as uint8 pixels, dynamically binarized like the real training set."""
    from mvl.ae.mnist import ImageData

    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    a, b = torch.rand(n, 2, generator=g) * 20 + 4, torch.rand(n, 2, generator=g) * 20 + 4
    t = torch.linspace(0, 1, 12)
    pts = a[:, None] + (b - a)[:, None] * t[None, :, None]  # [n, 12, 2]
    d2 = (yy[None, None] - pts[..., 0, None, None]) ** 2 + (xx[None, None] - pts[..., 1, None, None]) ** 2
    gray = torch.exp(-d2.min(1).values / 3.0)
    pixels = (255 * gray).round().to(torch.uint8).reshape(n, 784)
    train = ImageData(pixels[: n - 64], torch.zeros(n - 64, dtype=torch.long), "dynamic")
    valid = ImageData(pixels[n - 64 : n - 32], torch.zeros(32, dtype=torch.long), "static").tensor()
    test = ImageData(pixels[n - 32 :], torch.zeros(32, dtype=torch.long), "static").tensor()
    return train, valid, test[:16]


def run_ebm(recipe, tmp_path, **kw):
    return T.train_recipe(recipe, data=mnist_like(), cache=tmp_path / "cache", out=tmp_path / "out", progress=False,
                          device="cpu", **kw)


@pytest.mark.parametrize("objective", ["mvl", "adversarial"])
def test_an_ebm_prior_recipe_trains_resumes_bit_for_bit_and_evaluates_with_ais(tmp_path, objective):
    recipe = tiny_ebm(prior_objective=objective)
    one = run_ebm(recipe, tmp_path / "a")
    assert one["finished"] and one["epochs"] == 3 and len(one["curve"]["train_prior_loss"]) == 3
    assert run_ebm(recipe, tmp_path / "b", stop_after_epochs=1) is None
    state = torch.load(T.run_dir(recipe, tmp_path / "b" / "cache") / "state.pt", weights_only=True)
    assert (state["trainer"]["adversary"] is not None) == (objective == "adversarial")  # the adversary is checkpointed
    two = run_ebm(recipe, tmp_path / "b", resume=True)
    wa, wb = weights(tmp_path / "a/out/tiny-ebm.pt"), weights(tmp_path / "b/out/tiny-ebm.pt")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert one["metrics"]["test_nll"] == two["metrics"]["test_nll"]
    assert one["curve"]["train_prior_loss"] == two["curve"]["train_prior_loss"]
    m = one["metrics"]
    # evaluated with the AIS log Z, which (6 hidden units) is checked against the exact one
    assert abs(m["log_z"] - m["log_z_exact"]) < 4 * m["log_z_se"] + 0.02, m
    assert m["test_nll_log_z_se"] == m["log_z_se"] > 0 and m["test_images"] == 16
    assert "prior grbm by " + objective in recipe.budget()


def test_a_resumed_ebm_run_with_another_recipe_version_or_settings_is_refused(tmp_path):
    run_ebm(tiny_ebm(), tmp_path, stop_after_epochs=1)
    ckpt = T.run_dir(tiny_ebm(), tmp_path / "cache") / "state.pt"
    before = ckpt.read_bytes()
    with pytest.raises(ValueError, match="left untouched"):
        run_ebm(tiny_ebm(prior_eps=1e-2), tmp_path, resume=True)  # same version, other settings
    v2 = T.run_dir(tiny_ebm(version=2), tmp_path / "cache") / "state.pt"
    v2.parent.mkdir(parents=True)
    v2.write_bytes(before)  # a version-1 checkpoint where version 2 looks for its own
    with pytest.raises(ValueError, match="version 1 .* not to 'tiny-ebm' version 2"):
        run_ebm(tiny_ebm(version=2), tmp_path, resume=True)
    assert ckpt.read_bytes() == before == v2.read_bytes()


def test_a_nan_in_the_energy_stops_an_ebm_run_with_a_clear_error(tmp_path, monkeypatch):
    from mvl.ae.recipes import EBMPriorRecipe

    real_build = EBMPriorRecipe.build

    def poisoned(self, probs=None):
        model = real_build(self, probs)
        with torch.no_grad():
            model.prior.W[0, 0] = float("inf")
        return model

    monkeypatch.setattr(EBMPriorRecipe, "build", poisoned)
    with pytest.raises(FloatingPointError, match=r"prior's energy E\(z\).*non-finite at iteration 1.*last good checkpoint"):
        run_ebm(tiny_ebm(), tmp_path)
    assert not (tmp_path / "out" / "tiny-ebm.pt").exists()


def test_load_trained_restores_an_ebm_prior_with_its_ais_log_z(tmp_path):
    record = run_ebm(tiny_ebm(), tmp_path)
    model, loaded = T.load_trained(tiny_ebm(), folder=tmp_path / "out")
    assert model.prior.log_z_ais == record["metrics"]["log_z"] and model.prior.ais_is_current()
    test = mnist_like()[2]
    torch.manual_seed(0)
    nll = -(model.importance_estimates(test, 16, log_prior=model.prior.unnormalized_log_prob)["log_px"].double()
            - model.prior.log_z_ais).mean().item()
    assert nll == pytest.approx(record["metrics"]["test_nll"], rel=1e-6)


def test_the_chapter_8_recipes_follow_the_seed_paper():
    for name, objective in (("ch8-grbm-ssm", "ssm"), ("ch8-grbm-mvl", "mvl"), ("ch8-grbm-dsm", "dsm"),
                            ("ch8-grbm-adversarial", "adversarial")):
        r = get_recipe(name)
        assert (r.prior, r.prior_objective, r.latent, r.hidden, r.prior_hidden) == ("grbm", objective, 64, 256, 64)
        assert (r.lr, r.prior_lr, r.batch_size, r.epochs, r.body) == (1e-3, 2e-4, 64, 100, "elu")
    assert get_recipe("ch8-vampprior").n_pseudo == 16 and get_recipe("ch8-standard").prior == "standard"
    # chapter 7's recipes keep their settings (and so their fingerprints and committed models)
    assert "body" not in get_recipe("ch7-standard").settings()


def test_the_run_record_names_the_commit_the_run_started_from(tmp_path, monkeypatch):
    """A long run outlives commits made while it trains: the record gives the commit whose code it loaded."""
    commits = iter(["aaaa", "bbbb+dirty", "cccc"])
    monkeypatch.setattr(T, "git_commit", lambda: next(commits))
    record = run(tiny(), tmp_path)
    assert record["commit"] == "aaaa"


def test_the_chapter_10_seed_replicates_differ_from_their_recipe_only_in_the_seed():
    drop = ("name", "description", "seed")
    for seed in (1, 2):
        for reg in ("mvl", "gan"):
            for lat in ("sphere", "euclidean"):
                base, rep = get_recipe(f"ch10-wae-{reg}-{lat}-short"), get_recipe(f"ch10-wae-{reg}-{lat}-short-seed{seed}")
                assert rep.seed == seed != base.seed
                assert {k: v for k, v in rep.settings().items() if k not in drop} == \
                    {k: v for k, v in base.settings().items() if k not in drop}
