"""Sample-level DP-SGD (Opacus): clipping really bounds each step, the accountant agrees with an
independent one, the site's ledger and budget hold, and unsuitable models are refused."""

import copy
import math
from dataclasses import replace

import pytest
import torch
from flwr.app import ArrayRecord, Context, RecordDict
from test_simulation import entries, tiny_config
from test_training import LENGTH, sine_task
from torch.nn.utils import parameters_to_vector
from torch.utils.data import TensorDataset

from client.budget import SiteBudget, site_budget
from client.daemon import node_values
from client.task import train_on_site
from common import dpsgd
from common.config import ConfigError, from_dict
from common.experiment import ExperimentConfig
from common.hospital import HospitalConfig, SitePolicy
from common.models import build_model
from common.protocol import Job
from common.site import SiteData
from common.training import TrainConfig, Trainer
from server.rounds import RoundState, checkpoint_path
from simulations import run as sim

pytest.importorskip("opacus", reason="DP-SGD needs the optional 'dp' extra (Opacus)")


def rhythm_task(n: int, seed: int = 0) -> TensorDataset:
    """Label j: lead j carries a 3 Hz wave instead of a 20 Hz one (same power, so per-record
    normalisation cannot give it away)."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, 2, generator=g) < 0.5).float()
    x = 0.3 * torch.randn(n, 12, LENGTH, generator=g)
    t = torch.arange(LENGTH) / 100
    slow, fast = torch.sin(2 * math.pi * 3 * t), torch.sin(2 * math.pi * 20 * t)
    x[:, :2] += torch.where(y[:, :, None] > 0, slow, fast)
    return TensorDataset(x, y, torch.ones_like(y))


def group_model():
    torch.manual_seed(0)
    return build_model(
        "ribeiro_resnet", n_classes=2, input_length=LENGTH, norm="group", width=0.125
    )


def test_dp_sgd_still_learns_an_easy_task_and_reports_its_steps():
    dp = dpsgd.DPSGDSettings(noise_multiplier=0.5, max_grad_norm=1.0)
    cfg = TrainConfig(epochs=3, batch_size=32, lr=3e-3)
    model = group_model()
    result = Trainer(cfg, progress=False, dp=dp).fit(
        model, rhythm_task(256), rhythm_task(128, seed=1)
    )
    assert result.val_metrics.macro_auc > 0.8
    assert result.dp_steps == dpsgd.Steps(0.5, 1 / 8, 24)
    # Opacus' hooks are gone: the model is a plain module again (exportable, picklable).
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())
    assert all(getattr(p, "grad_sample", None) is None for p in model.parameters())


def _one_step_norm(dp: dpsgd.DPSGDSettings | None) -> float:
    """||w_after - w_before|| after one SGD step on one batch holding every record (q = 1)."""
    model = group_model()
    before = parameters_to_vector(model.parameters()).detach().clone()
    cfg = TrainConfig(epochs=1, batch_size=64, lr=1.0, optimizer="sgd")
    Trainer(cfg, progress=False, dp=dp).fit(model, sine_task(64), None)
    return float((parameters_to_vector(model.parameters()) - before).norm())


def test_per_record_clipping_bounds_the_step():
    """The averaged clipped gradient has norm <= C, so one SGD step moves at most lr * C."""
    clip = 1e-3
    private = _one_step_norm(dpsgd.DPSGDSettings(noise_multiplier=1e-6, max_grad_norm=clip))
    plain = _one_step_norm(None)
    assert private <= clip * 1.0001
    assert plain > 100 * clip


def test_epsilon_agrees_with_google_dp_accounting():
    dp_accounting = pytest.importorskip("dp_accounting")
    steps = [dpsgd.Steps(1.1, 0.05, 300), dpsgd.Steps(1.1, 0.05, 300)]
    ours = dpsgd.epsilon(steps, 1e-5)
    google = dp_accounting.rdp.RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(1.1))
    google.compose(event, 600)
    theirs = google.get_epsilon(1e-5)
    assert ours == pytest.approx(theirs, rel=0.05)
    assert dpsgd.epsilon(steps[:1], 1e-5) < ours


def test_target_epsilon_is_spent_over_the_run_at_each_sites_own_rate():
    dp = dpsgd.DPSGDSettings(target_epsilon=3.0)
    small = dpsgd.plan(dp, 200, 32, epochs=2, rounds=5)
    large = dpsgd.plan(dp, 5000, 32, epochs=2, rounds=5)
    for plan in (small, large):
        assert dpsgd.epsilon([plan] * 5, dp.delta) == pytest.approx(3.0, abs=0.05)
        assert dpsgd.epsilon([plan] * 5, dp.delta) <= 3.0
    assert small.noise_multiplier > large.noise_multiplier  # fewer records, more noise


def test_ledger_keeps_every_stretch_across_reopenings(tmp_path):
    dpsgd.Ledger(tmp_path).add(dpsgd.Steps(1.0, 0.1, 20))
    dpsgd.Ledger(tmp_path).add(dpsgd.Steps(1.0, 0.1, 20))
    history = dpsgd.Ledger(tmp_path).read()
    assert history == [dpsgd.Steps(1.0, 0.1, 20)] * 2
    assert dpsgd.epsilon(history, 1e-5) == pytest.approx(
        dpsgd.epsilon([dpsgd.Steps(1.0, 0.1, 40)], 1e-5)
    )


def test_batchnorm_models_are_refused_by_name():
    model = build_model("ribeiro_resnet", n_classes=2, input_length=LENGTH, width=0.125)
    with pytest.raises(ValueError, match="GroupNorm"):
        Trainer(
            TrainConfig(epochs=1), progress=False, dp=dpsgd.DPSGDSettings(noise_multiplier=1.0)
        ).fit(model, sine_task(64), None)


def test_dp_sgd_refuses_what_it_cannot_account_for():
    dp = dpsgd.DPSGDSettings(noise_multiplier=1.0)
    with pytest.raises(ValueError, match="FedProx"):
        Trainer(
            TrainConfig(epochs=1), progress=False, proximal_to=group_model().state_dict(), dp=dp
        ).fit(group_model(), sine_task(64), None)
    base = {"model": {"norm": "group"}, "federation": {"dp_sgd": {"noise_multiplier": 1.0}}}
    from_dict(ExperimentConfig, base, "ok")
    for bad in (
        {"model": {"norm": "batch"}},
        {"local": {"class_weights": "balanced"}},
        {"local": {"precision": "bf16"}},
    ):
        with pytest.raises(ConfigError, match="dp_sgd"):
            from_dict(ExperimentConfig, {**base, **bad}, "bad")
    with pytest.raises(ConfigError, match="target_epsilon"):
        from_dict(dpsgd.DPSGDSettings, {"noise_multiplier": 1.0, "target_epsilon": 2.0}, "both")
    assert math.isclose(dpsgd.epsilon([], 1e-5), 0.0)


@pytest.fixture(scope="module")
def dp_sgd_run(tmp_path_factory):
    """DP-SGD at 3 sites that each calibrate their noise to spend epsilon 4 over the 3 rounds;
    a per-site budget of 3.9 lets two rounds run and stops the third."""
    cfg = tiny_config()
    cfg.experiment.model = replace(cfg.experiment.model, norm="group")
    cfg.experiment.federation.dp_sgd = dpsgd.DPSGDSettings(target_epsilon=4.0, max_epsilon=3.9)
    cfg.baselines.local_only = cfg.baselines.centralized = False
    run_dir = tmp_path_factory.mktemp("dpsgd") / "run"
    sim.run(cfg, run_dir, progress=False)
    return run_dir, cfg


@pytest.mark.e2e
def test_sites_account_their_own_dp_sgd_and_the_run_stops_at_the_budget(dp_sgd_run):
    run_dir, cfg = dp_sgd_run
    log = entries(run_dir)
    trained = [e for e in log if e["phase"] == "train"]
    assert [e["round"] for e in trained] == [1, 2]
    assert all(e["failed"] == [] and len(e["sites"]) == 3 for e in trained)
    local = cfg.experiment.local
    for name, m in trained[-1]["sites"].items():
        # the site's reported epsilon is the accountant's over its own two rounds of steps
        steps = dpsgd.plan(
            cfg.experiment.federation.dp_sgd,
            m["num-examples"],
            local.batch_size,
            local.epochs,
            rounds=3,
        )
        assert m["dp-noise-multiplier"] == pytest.approx(steps.noise_multiplier)
        assert m["dp-epsilon"] == pytest.approx(dpsgd.epsilon([steps] * 2, 1e-5), rel=1e-6)
        assert m["dp-epsilon"] < 3.9 < m["dp-epsilon-next"] <= 4.0
        ledger = dpsgd.Ledger(run_dir / "sites" / name / run_dir.name).read()
        assert ledger == [steps, steps]
    (stop,) = [e for e in log if e["phase"] == "privacy-stop"]
    assert stop["round"] == 3 and "3.9" in stop["reason"]
    (ft,) = [e for e in log if e["phase"] == "finetune"]
    assert len(ft["sites"]) == 3  # fine-tuning runs from round 2's model
    report = (run_dir / "report.md").read_text()
    assert "DP-SGD" in report and "Stopped before round 3" in report


@pytest.mark.e2e
def test_a_site_refuses_a_round_past_its_budget_whatever_the_coordinator_says(dp_sgd_run, tmp_path):
    run_dir, cfg = dp_sgd_run
    experiment = cfg.experiment
    record = Job.for_run(experiment, "again").to_record()
    record["server-round"] = 3
    job = Job.from_record(record)
    site = SiteData.from_manifest(run_dir / "partition" / "sites.json", 0, experiment.pipeline)
    n = site.counts()["train"]
    spent = dpsgd.plan(
        experiment.federation.dp_sgd,
        n,
        experiment.local.batch_size,
        experiment.local.epochs,
        rounds=3,
    )
    dpsgd.Ledger(tmp_path).add(
        dpsgd.Steps(spent.noise_multiplier, spent.sample_rate, 2 * spent.count)
    )
    state = RoundState.load(checkpoint_path(run_dir, 2))
    with pytest.raises(dpsgd.SiteBudgetExhausted, match="budget of 3.9"):
        train_on_site(job, site, ArrayRecord(state.arrays), tmp_path)
    assert dpsgd.Ledger(tmp_path).read() == [
        dpsgd.Steps(spent.noise_multiplier, spent.sample_rate, 2 * spent.count)
    ]


def _job(experiment, **dp_sgd) -> Job:
    experiment = copy.deepcopy(experiment)
    experiment.federation.dp_sgd = dpsgd.DPSGDSettings(**dp_sgd)
    return Job.from_record(Job.for_run(experiment, "own-budget").to_record())


@pytest.mark.e2e
def test_a_hospitals_own_budget_binds_whatever_the_run_asks(dp_sgd_run, tmp_path):
    run_dir, cfg = dp_sgd_run
    site = SiteData.from_manifest(run_dir / "partition" / "sites.json", 0, cfg.experiment.pipeline)
    arrays = ArrayRecord(RoundState.load(checkpoint_path(run_dir, 2)).arrays)
    own = dpsgd.Ledger(tmp_path / "lifetime")
    (tmp_path / "lifetime").mkdir()
    # the run sets no budget at all: the site's own still holds
    with pytest.raises(dpsgd.SiteBudgetExhausted, match="budget of 0.05 \\(delta 1e-05\\)"):
        train_on_site(
            _job(cfg.experiment, noise_multiplier=1.0),
            site,
            arrays,
            tmp_path,
            SiteBudget(0.05, own),
        )
    # a huge delta in the run cannot loosen it: the site holds its budget at delta 1e-5
    loose = _job(cfg.experiment, noise_multiplier=1.0, delta=0.5, max_epsilon=100.0)
    with pytest.raises(dpsgd.SiteBudgetExhausted, match="delta 1e-05"):
        train_on_site(loose, site, arrays, tmp_path, SiteBudget(0.5, own))
    # and a run without DP-SGD gets nothing from it
    with pytest.raises(dpsgd.SiteBudgetExhausted, match="only with DP-SGD"):
        train_on_site(_job(cfg.experiment), site, arrays, tmp_path, SiteBudget(3.0, own))
    assert dpsgd.Ledger(tmp_path).read() == [] and own.read() == []  # nothing trained or spent


@pytest.mark.e2e
def test_a_hospitals_ledger_counts_every_run_so_a_new_run_name_resets_nothing(dp_sgd_run, tmp_path):
    run_dir, cfg = dp_sgd_run
    site = SiteData.from_manifest(run_dir / "partition" / "sites.json", 0, cfg.experiment.pipeline)
    arrays = ArrayRecord(RoundState.load(checkpoint_path(run_dir, 2)).arrays)
    output = tmp_path / "output"
    node = {"output-dir": str(output), "policy": SitePolicy(dp_max_epsilon=50.0).to_json()}
    context = Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config={})
    job = _job(cfg.experiment, noise_multiplier=1.0)
    for run_name in ("first", "another-name"):
        (output / run_name).mkdir(parents=True)
    train_on_site(job, site, arrays, output / "first", site_budget(context))
    one_round = site_budget(context).ledger.read()
    spent = dpsgd.epsilon(one_round, 1e-5)
    assert spent > 0
    two_rounds = dpsgd.epsilon([*one_round, *one_round], 1e-5)
    budget = SiteBudget((spent + two_rounds) / 2, site_budget(context).ledger)  # < one more round
    with pytest.raises(dpsgd.SiteBudgetExhausted, match="budget of"):
        train_on_site(job, site, arrays, output / "another-name", budget)
    assert dpsgd.Ledger(output / "another-name").read() == []


def test_the_hospital_config_passes_its_policy_to_the_client_app(tmp_path):
    cfg = HospitalConfig(
        site="H1",
        superlink="coordinator:8000",
        data_dir=str(tmp_path),
        output_dir=str(tmp_path / "out"),
        policy=SitePolicy(dp_max_epsilon=2.5),
    )
    context = Context(
        run_id=1, node_id=1, node_config=node_values(cfg), state=RecordDict(), run_config={}
    )
    budget = site_budget(context)
    assert budget is not None and budget.max_epsilon == 2.5
    assert budget.ledger.path.parent == tmp_path / "out" / "privacy"
    none = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    assert site_budget(none) is None
