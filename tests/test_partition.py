import json

import numpy as np
import pandas as pd
import pytest

from common.config import ConfigError
from common.labels import LabelSpace
from common.names import is_plain_name
from simulations.partition import SourcePlan, assign_sites, partition, write_report
from simulations.synth import PtbxlLikeSpec, TisNetworkSpec, write_ptbxl_like, write_tis_network

SPACE = LabelSpace.load("seed6")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    write_tis_network(
        TisNetworkSpec(n_records=240, n_hospitals=5, seed=11), root / "tis", progress=False
    )
    write_ptbxl_like(
        PtbxlLikeSpec(n_records=120, n_sites=3, seed=12), root / "ptbxl", progress=False
    )
    return root


def table(manifest: dict) -> pd.DataFrame:
    rows = [
        (s["name"], split, rid)
        for s in manifest["sites"]
        for split, ids in s["records"].items()
        for rid in ids
    ]
    return pd.DataFrame(rows, columns=["site", "split", "record_id"])


def test_mixed_natural_scenario_keeps_hospitals_and_patients_whole(sources, tmp_path):
    plans = [
        SourcePlan("tis", sources / "tis", 3, "tis"),
        SourcePlan("ptbxl", sources / "ptbxl", None, "ptbxl", {"rate": 100}),
    ]
    manifest, counts = partition(plans, SPACE, "natural", tmp_path / "cache", min_size=10)
    names = [s["name"] for s in manifest["sites"]]
    assert sum(n.startswith("tis-") for n in names) == 3  # 5 hospitals merged down to 3
    assert any("_" in n for n in names)  # merged sites get a plain name, e.g. tis-H01_H02
    assert all(is_plain_name(n) for n in names)
    assert sum(n.startswith("ptbxl-") for n in names) == 3
    index = pd.read_csv(sources / "tis" / "index.csv", dtype=str)
    t = table(manifest).merge(index[["record_id", "patient_id"]], on="record_id")
    assert t.groupby("patient_id")["site"].nunique().max() == 1
    assert t.groupby("patient_id")["split"].nunique().max() == 1
    assert counts["records"].sum() == 360


def test_ptbxl_like_sites_use_folds_for_validation_and_test(sources, tmp_path):
    manifest, _ = partition(
        [SourcePlan("ptbxl", sources / "ptbxl", None, "ptbxl", {"rate": 100})],
        SPACE,
        "natural",
        tmp_path / "cache",
        min_size=10,
    )
    db = pd.read_csv(sources / "ptbxl" / "ptbxl_database.csv")
    fold = dict(zip(db.ecg_id.astype(str), db.strat_fold, strict=True))
    t = table(manifest)
    assert {fold[r] for r in t[t.split == "test"].record_id} == {10}
    assert {fold[r] for r in t[t.split == "val"].record_id} == {9}


def _frame(n_patients: int, labels: list[str]) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "record_id": [str(i) for i in range(n_patients)],
            "patient_id": [f"p{i}" for i in range(n_patients)],
            "site": "all",
            "primary": rng.choice(labels, n_patients),
        }
    )


def test_iid_sites_are_balanced_and_quantity_skew_is_not():
    frame = _frame(600, ["NORM", "AFIB"])
    iid = assign_sites(frame, "iid", 6, 0.5, 0, np.random.default_rng(1)).value_counts()
    assert iid.max() - iid.min() <= 1
    qty = assign_sites(frame, "quantity", 6, 0.3, 0, np.random.default_rng(1)).value_counts()
    assert len(qty) == 6 and qty.max() > 2 * qty.min()


def test_dirichlet_label_skew_concentrates_labels():
    frame = _frame(2000, ["NORM", "AFIB", "CLBBB", "SBRAD"])
    sites = assign_sites(frame, "dirichlet", 4, 0.1, 0, np.random.default_rng(2))
    share = pd.crosstab(sites, frame["primary"], normalize="columns")
    assert (share.max() > 0.6).all()  # with alpha 0.1 most of a label sits at one site
    iid = assign_sites(frame, "iid", 4, 0.1, 0, np.random.default_rng(2))
    assert (pd.crosstab(iid, frame["primary"], normalize="columns").max() < 0.35).all()


def test_report_writes_manifest_counts_and_heatmap(sources, tmp_path):
    with pytest.raises(ConfigError, match="needs a number of sites"):
        partition([SourcePlan("tis", sources / "tis", None, "tis")], SPACE, "iid", tmp_path)
    manifest, counts = partition(
        [SourcePlan("tis", sources / "tis", 4, "tis")], SPACE, "iid", tmp_path / "cache"
    )
    write_report(manifest, counts, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "sites.json").read_text())["scheme"] == "iid"
    totals = json.loads((tmp_path / "out" / "partition.json").read_text())
    assert len(totals) == 4 and sum(t["records"] for t in totals.values()) == 240
    assert (tmp_path / "out" / "partition.png").stat().st_size > 1000


def test_natural_labels_from_data_become_plain_unique_site_names():
    labels = ["St. Mary's/ICU"] * 30 + ["st-mary-s-icu"] * 30 + ["../etc"] * 5 + ["x" * 200] * 5
    table = pd.DataFrame({"site": labels, "record_id": range(70), "patient_id": range(70)})
    sites = assign_sites(table, "natural", None, 0.5, 10, np.random.default_rng(0))
    names = sorted(set(sites))
    assert len(names) == 3 and all(is_plain_name(f"tis-{n}") for n in names)
    merged = [n for n in names if "_" in n]  # the two 5-record sites merged
    assert merged and ".." not in merged[0] and len(merged[0]) <= 32


def test_virtual_sites_open_their_prepared_cache_by_path(sources, tmp_path, monkeypatch):
    from common import cache as cache_module
    from common.preprocess import PipelineConfig
    from common.site import SiteData
    from simulations.run import prepare_caches

    plan = SourcePlan("tis", sources / "tis", None, "tis")
    manifest, counts = partition([plan], LabelSpace.load("seed6"), "natural", tmp_path / "cache")
    pipeline = PipelineConfig(fs=50.0, length_s=10.0, lowpass_hz=20.0)
    prepare_caches(manifest, [plan], pipeline, workers=1, progress=False)
    (built,) = manifest["sources"]["tis"]["caches"].values()
    write_report(manifest, counts, tmp_path / "partition")
    path = tmp_path / "partition" / "sites.json"

    def no_walk(*_):
        raise AssertionError("the source folder was walked")

    monkeypatch.setattr(cache_module, "source_fingerprint", no_walk)
    sites = [SiteData.from_manifest(path, i, pipeline) for i in range(len(manifest["sites"]))]
    assert {str(s.cache.path) for s in sites} == {built}
    assert sum(s.counts()["train"] for s in sites) > 0
    monkeypatch.undo()  # another pipeline (or a cache removed since) is found from the source
    other = PipelineConfig(fs=50.0, length_s=8.0, lowpass_hz=20.0)
    assert str(SiteData.from_manifest(path, 0, other).cache.path) != built


def test_20000_records_cut_into_1000_iid_sites_put_every_record_in_exactly_one_site():
    frame = _frame(20_000, ["NORM", "AFIB", "CLBBB"])
    sites = assign_sites(frame, "iid", 1000, 0.5, 0, np.random.default_rng(3))
    assert sites.notna().all() and len(sites) == 20_000  # one site per record, none left out
    sizes = sites.value_counts()
    assert len(sizes) == 1000 and set(sizes) == {20}
    assert sorted(sizes.index)[:2] == ["0001", "0002"] and sizes.index.max() == "1000"


def test_many_sites_get_one_manifest_a_distribution_plot_and_are_opened_from_one_parse(
    sources, tmp_path
):
    from PIL import Image

    from common import site as site_module
    from common.preprocess import PipelineConfig
    from common.site import SiteData
    from simulations.run import prepare_caches

    plan = SourcePlan("tis", sources / "tis", 120, "tis")
    manifest, counts = partition([plan], SPACE, "iid", tmp_path / "cache")
    pipeline = PipelineConfig(fs=50.0, length_s=10.0, lowpass_hz=20.0)
    prepare_caches(manifest, [plan], pipeline, workers=1, progress=False)
    out = tmp_path / "partition"
    write_report(manifest, counts, out)
    assert sorted(p.name for p in out.iterdir()) == [
        "partition.csv",
        "partition.json",
        "partition.png",
        "sites.json",
    ]
    width, height = Image.open(out / "partition.png").size
    assert width < 2000 and height < 1000  # a 120-row heatmap would be 5,000 px tall
    site_module._read_manifest.cache_clear()
    sites = [SiteData.from_manifest(out / "sites.json", i, pipeline) for i in range(120)]
    assert site_module._read_manifest.cache_info().misses == 1
    ids = [r for s in manifest["sites"] for split in s["records"].values() for r in split]
    assert len(ids) == len(set(ids)) == 240
    assert sum(sum(s.counts().values()) for s in sites) == 240
    assert SiteData.from_manifest(out / "sites.json", "tis-007", pipeline).name == "tis-007"
