import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from common import cache as cache_mod
from common import sources
from common.cache import SiteCache
from common.dataset import CachedDataset
from common.labels import LabelSpace
from common.preprocess import PipelineConfig, apply
from common.splits import assign_splits

PIPE = PipelineConfig()


@pytest.fixture
def site(ptbxl_sample: Path, tmp_path: Path) -> Path:
    """A private copy of the real PTB-XL sample that tests may alter."""
    dst = tmp_path / "site"
    shutil.copytree(ptbxl_sample, dst)
    return dst


def test_cache_holds_what_the_pipeline_makes_of_each_record(site, tmp_path):
    c = SiteCache.prepare(site, tmp_path / "cache", PIPE, progress=False)
    assert c.signals.shape == (20, 12, PIPE.length)
    assert c.manifest["pipeline_fingerprint"] == PIPE.fingerprint
    scan = sources.scan(site)
    ref = next(r for r in scan.refs if r.record_id == c.index.record_id[3])
    rec = sources.read_record(ref)
    assert np.array_equal(c.signals[3], apply(PIPE, rec.signal, rec.fs))


def test_second_prepare_reuses_the_cache(site, tmp_path, monkeypatch):
    first = SiteCache.prepare(site, tmp_path / "cache", PIPE, progress=False)
    monkeypatch.setattr(cache_mod, "_build", lambda *a, **k: pytest.fail("rebuilt"))
    again = SiteCache.prepare(site, tmp_path / "cache", PIPE, progress=False)
    assert again.path == first.path


def test_changed_source_or_pipeline_gets_a_new_cache_and_stale_one_goes(site, tmp_path):
    first = SiteCache.prepare(site, tmp_path / "cache", PIPE, progress=False)
    other_pipe = SiteCache.prepare(
        site, tmp_path / "cache", PipelineConfig(fs=50, lowpass_hz=20), progress=False
    )
    assert other_pipe.path != first.path and other_pipe.signals.shape[2] == 500
    (site / "records500/00000/00001_hr.dat").unlink()
    changed = SiteCache.prepare(site, tmp_path / "cache", PIPE, progress=False)
    assert changed.path != first.path and not first.path.exists() and other_pipe.path.exists()
    assert len(changed) == 19
    assert [p["record_id"] for p in changed.problems] == ["1"]


def test_interrupted_build_never_reads_as_valid(site, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = cache_mod._prepare_one

    def dies_midway(ref, cfg):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real(ref, cfg)

    monkeypatch.setattr(cache_mod, "_prepare_one", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        SiteCache.prepare(site, tmp_path / "cache", PIPE, progress=False)
    target = SiteCache.locate(site, tmp_path / "cache", PIPE)
    with pytest.raises(FileNotFoundError):
        SiteCache.load(target)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    monkeypatch.setattr(cache_mod, "_prepare_one", real)
    assert len(SiteCache.prepare(site, tmp_path / "cache", PIPE, progress=False)) == 20


def test_truncated_signal_file_invalidates_a_cache(site, tmp_path):
    c = SiteCache.prepare(site, tmp_path / "cache", PIPE, progress=False)
    with open(c.path / "signals.f32", "r+b") as fh:
        fh.truncate(1000)
    with pytest.raises(FileNotFoundError, match="manifest promises"):
        SiteCache.load(c.path)


def test_bad_record_is_skipped_with_reason_and_source_untouched(site, tmp_path):
    dat = site / "records500/00000/00002_hr.dat"
    dat.write_bytes(dat.read_bytes()[:1000])
    before = {p: p.read_bytes() for p in site.rglob("*") if p.is_file()}
    c = SiteCache.prepare(site, tmp_path / "cache", PIPE, progress=False)
    assert len(c) == 19 and c.manifest["records_skipped"] == 1
    (problem,) = c.problems
    assert problem["record_id"] == "2" and problem["reason"]
    assert before == {p: p.read_bytes() for p in site.rglob("*") if p.is_file()}


def test_parallel_workers_give_the_same_cache(site, tmp_path):
    one = SiteCache.prepare(site, tmp_path / "a", PIPE, progress=False)
    two = SiteCache.prepare(site, tmp_path / "b", PIPE, workers=2, progress=False)
    assert np.array_equal(np.asarray(one.signals), np.asarray(two.signals))
    assert one.index.record_id.tolist() == two.index.record_id.tolist()


def test_concurrent_prepares_build_once(site, tmp_path):
    with ThreadPoolExecutor(3) as pool:
        caches = list(
            pool.map(
                lambda _: SiteCache.prepare(site, tmp_path / "cache", PIPE, progress=False),
                range(3),
            )
        )
    assert len({c.path for c in caches}) == 1
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 1


def test_dataset_yields_signal_target_mask(site, tmp_path):
    c = SiteCache.prepare(site, tmp_path / "cache", PIPE, progress=False)
    space = LabelSpace.load("seed6")
    ds = CachedDataset(c, space)
    x, y, m = ds[int(np.flatnonzero(ds.record_ids == "2")[0])]
    assert x.shape == (12, PIPE.length)
    assert y[space.index("SBRAD")] == 1 and y[space.index("NORM")] == 1
    assert m.sum() == len(space)
    lazy = CachedDataset(c, space, rows=np.array([0, 5]), in_memory=False)
    assert np.array_equal(lazy[1][0].numpy(), ds[5][0].numpy())


def test_ptbxl_splits_follow_the_recommended_folds(site, tmp_path):
    c = SiteCache.prepare(site, tmp_path / "cache", PIPE, progress=False)
    splits = assign_splits(c.index)
    folds = c.index["strat_fold"].to_numpy()
    assert set(splits[folds == 9]) == {"val"} and set(splits[folds == 10]) <= {"test"}
    assert set(splits[folds <= 8]) == {"train"}


def test_patient_splits_keep_a_patient_together():
    import pandas as pd

    index = pd.DataFrame(
        {"record_id": [str(i) for i in range(400)], "patient_id": [str(i // 4) for i in range(400)]}
    )
    splits = assign_splits(index)
    assert all(len(set(g)) == 1 for _, g in pd.Series(splits).groupby(index.patient_id))
    share = (splits == "train").mean()
    assert 0.7 < share < 0.9


def test_manifest_is_json_with_counts(site, tmp_path):
    c = SiteCache.prepare(site, tmp_path / "cache", PIPE, progress=False)
    m = json.loads((c.path / "manifest.json").read_text())
    assert m["records_found"] == 20 and m["shape"] == [20, 12, 1000]
