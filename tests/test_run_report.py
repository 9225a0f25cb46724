"""The coordinator's report.md: a row per fine-tuned site, or with many sites their
distribution, top and bottom sites and a plot, every site's scores kept in summary.json."""

import json

from common import protocol
from common.experiment import ExperimentConfig
from server import report
from server.metricslog import MetricsLog


def _scores(auc: float) -> dict:
    return {
        protocol.TRAIN_EXAMPLES: 16,
        protocol.NUM_EXAMPLES: 2,
        protocol.BEFORE_MACRO_AUC: auc - 0.1,
        protocol.BEFORE_MACRO_F1: 0.4,
        protocol.AFTER_MACRO_AUC: auc,
        protocol.AFTER_MACRO_F1: 0.5,
    }


def _run(run_dir, n_tuned: int, n_sites: int, failed: list[dict]) -> str:
    log = MetricsLog(run_dir / "metrics.jsonl")
    log.write({"round": 1, "phase": "train", "sites": {}, "failed": [], "aggregate": None})
    sites = {f"tis-{i:04d}": _scores(0.5 + i / (2 * n_tuned)) for i in range(n_tuned)}
    sampled = {"sites": n_tuned + len(failed), "of": n_sites, "fraction": 0.1}
    log.write(
        {"round": 1, "phase": "finetune", "sites": sites, "failed": failed, "sampled": sampled}
    )
    return report.write(run_dir, log.read(), ExperimentConfig()).read_text()


def test_fine_tuning_at_many_sites_is_summarised_and_every_score_kept(tmp_path):
    failed = [{"site": f"tis-{900 + i}", "reason": "no reply within 600 s"} for i in range(3)]
    text = _run(tmp_path, 97, 1000, failed)
    assert "A seeded sample of 100 of 1000 sites fine-tuned (`finetune.fraction: 0.1`)" in text
    rows = [line for line in text.splitlines() if line.startswith("| tis-")]
    assert len(rows) == 20
    assert rows[0].startswith("| tis-0096 |") and rows[10].startswith("| tis-0000 |")
    assert "| fine-tuned | 97 |" in text
    assert "- 3 site(s): no reply within 600 s (tis-900, tis-901, tis-902)" in text
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["finetune"]) == 97 and len(summary["finetune_failed"]) == 3
    assert (tmp_path / report.FINETUNE_PLOT).read_bytes()[:4] == b"\x89PNG"


def test_fine_tuning_at_a_few_sites_lists_each_with_its_failures(tmp_path):
    failed = [{"site": "tis-0009", "reason": "ValueError: boom"}]
    text = _run(tmp_path, 9, 10, failed)
    assert sum(line.startswith("| tis-") for line in text.splitlines()) == 10
    assert "| tis-0009 | failed: ValueError: boom |" in text
    assert not (tmp_path / report.FINETUNE_PLOT).exists()
