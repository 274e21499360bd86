"""The cost benchmark behind the page "Cost of the estimators" (``python -m mvl.bench``, book/performance.md)."""

import json
import math

import pytest
import torch

from mvl import bench

torch.set_num_threads(1)

TINY = dict(hidden=(32, 32), batch=16, repeats=5, warmup=1, device="cpu")


@pytest.fixture(scope="module")
def tiny_record():
    return bench.measure([2, 32], [2], hessian_dims=[2], **TINY)


def test_every_estimator_gets_a_finite_positive_ratio(tiny_record):
    json.dumps(tiny_record)  # what the JSON file stores
    assert tiny_record["threads"] == 1 and tiny_record["device"].startswith("cpu")
    for geometry, estimators, dims in (("euclidean", bench.EUCLIDEAN, [2, 32]), ("sphere", bench.SPHERICAL, [2])):
        part = tiny_record[geometry]
        assert part["dims"] == dims
        assert list(part["estimators"]) == [e.key for e in estimators]
        for key, est in part["estimators"].items():
            for d in dims:
                cell = est["results"][str(d)]
                if key == "sm_exact_hessian" and d == 32:  # only at --hessian-dims, and it says so
                    assert cell["ratio"] is None and "hessian-dims" in cell["not_measured"]
                    continue
                assert math.isfinite(cell["ratio"]) and cell["ratio"] > 0, (geometry, key, d, cell)
                assert cell["seconds"] > 0 and cell["memory_bytes"] is None  # memory: not measured on a CPU
        for d in dims:
            ref = part["estimators"]["plain"]["results"][str(d)]
            assert ref["ratio"] == 1.0 and ref["seconds_after"] > 0  # timed again after the estimators
    assert isinstance(tiny_record["warnings"], list)  # load changes during the run are reported, not hidden


def test_exact_sm_scales_with_d_and_mvl_does_not(tiny_record):
    def ratio(key, d):
        return tiny_record["euclidean"]["estimators"][key]["results"][str(d)]["ratio"]

    # 32 backward passes against 2 for the Laplacian; MVL's passes do not depend on d
    assert ratio("sm_exact", 32) > 2 * ratio("sm_exact", 2)
    assert ratio("mvl_cv", 32) < 3 * ratio("mvl_cv", 2)


def test_budget_caps_are_recorded():
    torch.manual_seed(0)
    energy = bench.MLPEnergy(4, hidden=(8,))
    cell = bench.time_cell(energy, bench.plain_step, torch.randn(8, 4), repeats=5, warmup=2, budget=1e-9)
    assert cell["repeats"] == 1 and cell["warmup"] == 1 and cell["seconds"] > 0
    assert "instead of 5 after 2" in cell["capped"]


def synthetic_record(device_type="cpu"):
    """A record shaped like measure()'s, with made-up numbers (no timing)."""

    def part(estimators, dims, scale):
        out = {}
        for i, e in enumerate(estimators):
            results = {}
            for d in dims:
                r = 1.0 if e.key == "plain" else (2345.0 if e.key == "sm_exact" and d == 784 else 1.5 + i + scale * d)
                results[str(d)] = {"seconds": 1e-3 * r, "ratio": r, "repeats": 3, "warmup": 1,
                                   "capped": "1 timed step(s) after 1 warm-up(s)" if r == 2345.0 else None,
                                   "memory_bytes": 2**20 * (i + 1) if device_type == "cuda" else None}
            out[e.key] = {"label": e.label, "call": e.call, "results": results}
        return {"dims": dims, "estimators": out}

    return {
        "title": bench.PAGE_TITLE, "device": "cuda (Test GPU)" if device_type == "cuda" else "cpu (1 threads)",
        "device_type": device_type, "torch": "2.x", "date": "2026-01-01", "threads": 1 if device_type == "cpu" else None,
        "network": {"class": "MLPEnergy", "hidden": [256, 256], "activation": "swish", "dtype": "float32"},
        "batch": 128, "eps": 1e-3, "repeats": 3, "baseline_repeats": 15, "warmup": 1, "budget_seconds": 30.0,
        "hessian_dims": [], "euclidean": part(bench.EUCLIDEAN, [2, 784], 0.001),
        "sphere": part(bench.SPHERICAL, [2, 8], 0.01), "caps": ["R^d d = 784, exact SM: ..."], "total_seconds": 61.0,
    }


def test_page_has_one_table_row_per_estimator_and_a_figure(tmp_path):
    page, fig = bench.write_page(synthetic_record(), tmp_path)
    text = page.read_text()
    assert text.startswith("# Cost of the estimators\n")
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith(("| estimator", "| ---"))]
    labels = [e.label for e in bench.EUCLIDEAN] + [e.label for e in bench.SPHERICAL]
    assert sorted(r.split(" | ")[0][2:] for r in rows) == sorted(labels)
    assert "| exact SM (loop Laplacian) | " in text and "2 345×\\*" in text  # numbers and caps from the JSON
    assert "exact SM 2 345×" in text  # the prose compares the numbers with this record's
    assert "performance.png" in text and "python -m mvl.bench --out book" in text
    assert "Memory was not measured" in text
    assert fig.exists() and fig.stat().st_size > 10_000 and fig.read_bytes()[:4] == b"\x89PNG"


def test_gpu_record_gets_a_memory_table_and_warnings_are_shown(tmp_path):
    record = synthetic_record("cuda")
    record["warnings"] = ["at d = 2 the reference step took 1 ms before the estimators and 2 ms after them"]
    page, _ = bench.write_page(record, tmp_path)
    text = page.read_text()
    assert "max_memory_allocated" in text and "| MVL + CV | 8.0 | 8.0 |" in text
    assert "not quiet" in text and "2 ms after them." in text


def test_page_only_rewrites_from_the_json(tmp_path):
    (tmp_path / bench.JSON_NAME).write_text(json.dumps(synthetic_record()))
    assert bench.main(["--page-only", "--out", str(tmp_path)]) == 0
    assert (tmp_path / bench.PAGE_NAME).exists() and (tmp_path / bench.FIGURE_NAME).exists()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(device="tpu"), "device 'tpu'"),
        (dict(dims=[0]), "dims must be an integer >= 1, got 0"),
        (dict(dims=[-3, 2]), "got -3"),
        (dict(sphere_dims=[0]), "sphere_dims"),
        (dict(repeats=0), "repeats must be an integer >= 1, got 0"),
        (dict(dims=[], sphere_dims=[]), "nothing to measure"),
    ],
)
def test_bad_arguments_raise_value_errors(kwargs, match):
    args = dict(dims=[2], sphere_dims=[2], hessian_dims=[], device="cpu", hidden=(4,), batch=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        bench.measure(args.pop("dims"), args.pop("sphere_dims"), **args)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dims", "0"], "'0' is not a positive integer"),
        (["--dims", "2", "-1"], "'-1' is not a positive integer"),
        (["--repeats", "0"], "'0' is not a positive integer"),
        (["--device", "tpu"], "--device: unknown device 'tpu'"),
        (["--page-only"], "--page-only needs --out"),
    ],
)
def test_bad_command_lines_are_argparse_errors(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv + ["--out", str(tmp_path / "x")] if "--page-only" not in argv else argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
