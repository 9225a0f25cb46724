"""Personalisation methods: what each trains, keeps and sends, on a tiny model and tiny data."""

import math

import pytest
import torch
from flwr.app import ArrayRecord
from torch.utils.data import TensorDataset

from client import task
from common import personalise
from common.config import ConfigError, from_dict
from common.experiment import ExperimentConfig, FinetuneSettings
from common.labels import LabelSpace
from common.metrics import Metrics
from common.models import ModelSettings, build_model
from common.personalise import (
    HEAD,
    METHODS,
    LocalRound,
    Method,
    Personalised,
    SiteRun,
    batchnorm_keys,
    shared_state,
)
from common.preprocess import PipelineConfig
from common.protocol import (
    AFTER_MACRO_AUC,
    BEFORE_MACRO_AUC,
    MACRO_AUC,
    NUM_EXAMPLES,
    VAL_LOSS,
    Job,
)
from common.training import TrainConfig, Trainer, TrainResult
from server.rounds import next_global

SPACE = LabelSpace.from_dict({"name": "s", "labels": ["A", "B", "C"], "codebooks": {}})


def tiny_model(seed: int = 0, norm: str = "batch"):
    torch.manual_seed(seed)
    return build_model(
        "ribeiro_resnet", n_classes=len(SPACE), input_length=128, norm=norm, width=0.125
    )


class Records(TensorDataset):
    """(x, y, mask) items, with ``y`` and ``mask`` whole as a site's datasets have them."""

    @property
    def y(self) -> torch.Tensor:
        return self.tensors[1]

    @property
    def mask(self) -> torch.Tensor:
        return self.tensors[2]


def data(n: int = 24, seed: int = 3) -> Records:
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, len(SPACE), generator=g) < 0.5).float()
    x = torch.randn(n, 12, 128, generator=g) + 2 * y[:, :1, None]
    return Records(x, y, torch.ones_like(y))


def local_round(mode: str, personal=None, **settings) -> LocalRound:
    trainer = Trainer(TrainConfig(epochs=1, batch_size=8, lr=1e-2), SPACE.labels, progress=False)
    return LocalRound(trainer, data(), FinetuneSettings(mode=mode, **settings), personal)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before: dict, after: dict, keys) -> set[str]:
    return {k for k in keys if not torch.equal(before[k], after[k])}


def head_keys(state: dict) -> set[str]:
    return {k for k in state if k.startswith(HEAD)}


@pytest.fixture
def fit_calls(monkeypatch):
    """Each time the Trainer fitted: which parameters required grad, the model's state as it
    started, and whether a validation split was given (early stopping)."""
    calls = []
    real = Trainer.fit

    def spy(self, model, train_ds, val_ds):
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        calls.append((trainable, snapshot(model), val_ds is not None))
        return real(self, model, train_ds, val_ds)

    monkeypatch.setattr(Trainer, "fit", spy)
    return calls


def test_fedrep_trains_the_head_alone_first_then_the_body_alone(fit_calls):
    model = tiny_model()
    names = {n for n, _ in model.named_parameters()}
    head = {n for n in names if n.startswith(HEAD)}
    METHODS["fedrep"].round(model, local_round("fedrep"))
    assert [trainable for trainable, *_ in fit_calls] == [head, names - head]


def test_fedrep_starts_each_round_from_the_head_the_site_kept(fit_calls):
    model = tiny_model()
    _, kept = METHODS["fedrep"].round(model, local_round("fedrep"))
    assert set(kept) == head_keys(model.state_dict())
    received = tiny_model(seed=1)  # the next round's global model: another head
    METHODS["fedrep"].round(received, local_round("fedrep", personal=kept))
    assert torch.equal(fit_calls[-2][1]["head.weight"], kept["head.weight"])


def test_fedrep_head_never_leaves_the_site_and_the_coordinators_head_stays():
    model = tiny_model()
    before = ArrayRecord(snapshot(model))
    METHODS["fedrep"].round(model, local_round("fedrep"))
    sent = shared_state(model, METHODS["fedrep"])
    assert not head_keys(sent) and set(sent) == set(before) - head_keys(before)
    new_global = next_global(ArrayRecord(sent), before).to_torch_state_dict()
    old = before.to_torch_state_dict()
    assert not changed(old, new_global, head_keys(old))  # the coordinator's head is untouched
    assert changed(old, new_global, set(sent))  # the body moved


KEPT_AT_THE_SITE = {"fedrep": "head", "fedper": "head", "fedbabu": "head", "fedbn": "batchnorm"}


@pytest.mark.parametrize("mode", list(METHODS))
def test_each_method_sends_the_state_in_order_without_what_it_keeps_at_the_site(mode):
    model = tiny_model()
    state = snapshot(model)
    kept = {"head": head_keys(state), "batchnorm": batchnorm_keys(model)}.get(
        KEPT_AT_THE_SITE.get(mode), set()
    )
    assert list(shared_state(model, METHODS[mode])) == [k for k in state if k not in kept]
    assert (mode in personalise.CANDIDATES) == (mode != "auto" and not kept)


def test_fedbabu_keeps_the_head_frozen_during_the_rounds():
    model = tiny_model()
    before = snapshot(model)
    result, kept = METHODS["fedbabu"].round(model, local_round("fedbabu"))
    after = model.state_dict()
    assert kept is None and not changed(before, after, head_keys(before))
    assert changed(before, after, set(before) - head_keys(before))
    assert not head_keys(shared_state(model, METHODS["fedbabu"]))


def distance(a: dict, b: dict) -> float:
    return sum(((a[k] - b[k]) ** 2).sum().item() for k in a if a[k].is_floating_point())


def test_ditto_leaves_the_global_update_as_fedavgs_and_keeps_a_personal_model():
    plain, ditto = tiny_model(), tiny_model()
    start = snapshot(plain)
    METHODS["full"].round(plain, local_round("full"))
    _, personal = METHODS["ditto"].round(ditto, local_round("ditto"))
    assert all(torch.equal(v, ditto.state_dict()[k]) for k, v in plain.state_dict().items())
    assert distance(personal, ditto.state_dict()) > 0 and distance(personal, start) > 0


def test_ditto_pull_keeps_the_personal_model_nearer_the_global_one():
    far, near = (
        METHODS["ditto"].round(tiny_model(), local_round("ditto", ditto_lambda=lam))[1]
        for lam in (0.0, 100.0)
    )
    start = snapshot(tiny_model())
    assert distance(near, start) < 0.5 * distance(far, start)


def test_ditto_continues_the_personal_model_the_site_kept():
    kept = snapshot(tiny_model(seed=5))
    _, personal = METHODS["ditto"].round(tiny_model(), local_round("ditto", personal=kept))
    fresh = METHODS["ditto"].round(tiny_model(), local_round("ditto"))[1]
    assert distance(personal, kept) < distance(fresh, kept)


class Site:
    """A site's splits as tensors (SiteData's ``dataset`` is all a method uses)."""

    name = "tiny"

    def dataset(self, split: str, space: LabelSpace) -> TensorDataset:
        return data(24 if split == "train" else 12, seed={"train": 3, "val": 4, "test": 5}[split])


def fake_candidate(name: str, val: float | None) -> Method:
    def finish(model, run):
        model.val = val
        return Personalised(model, TrainResult(), Metrics((), 0, val, None, None, {}))

    return Method(name, METHODS[name].round, finish)


@pytest.mark.parametrize(
    ("scores", "best"),
    [
        ({"full": 0.7, "head": 0.9, "ditto": 0.8}, "head"),
        ({"full": 0.8, "head": 0.8, "ditto": 0.6}, "full"),  # a tie: the first candidate
        ({"full": None, "head": None, "ditto": 0.5}, "ditto"),  # undefined scores lose
    ],
)
def test_auto_keeps_the_candidate_best_on_the_sites_validation_split(monkeypatch, scores, best):
    for name, val in scores.items():
        monkeypatch.setitem(METHODS, name, fake_candidate(name, val))
    monkeypatch.setattr(personalise, "val_macro_auc", lambda model, run: model.val)
    run = SiteRun(Site(), SPACE, SPACE, FinetuneSettings(mode="auto"))
    done = METHODS["auto"].finish(tiny_model(), run)
    assert done.model.val == scores[best]
    assert {n: done.metrics[f"{n}-picked"] for n in scores} == {n: n == best for n in scores}
    for name, val in scores.items():
        got = done.metrics[f"{name}-val-auc"]
        assert math.isnan(got) if val is None else got == val


def test_auto_with_real_candidates_reports_each_and_keeps_the_best():
    settings = FinetuneSettings(mode="auto", train=TrainConfig(epochs=1, batch_size=8))
    run = SiteRun(Site(), SPACE, SPACE, settings)
    done = METHODS["auto"].finish(tiny_model(), run)
    vals = {n: done.metrics[f"{n}-val-auc"] for n in settings.candidates}
    (picked,) = [n for n in settings.candidates if done.metrics[f"{n}-picked"] == 1.0]
    assert vals[picked] == max(vals.values())
    assert personalise.val_macro_auc(done.model, run) == pytest.approx(vals[picked])
    assert done.after.macro_auc == pytest.approx(done.metrics[f"{picked}-test-auc"])


def test_mode_names_come_from_the_registry():
    assert set(METHODS) >= {"full", "head", "last_k", "discriminative"}
    assert set(METHODS) >= {"ditto", "fedrep", "fedper", "fedbabu", "auto"}
    assert tuple(METHODS) == personalise.MODES


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"finetune": {"mode": "fedavg"}}, "finetune.mode"),
        ({"finetune": {"mode": "fedrep"}, "federation": {"strategy": "fedadam"}}, "finetune.mode"),
        ({"finetune": {"mode": "auto", "candidates": ["fedbabu"]}}, "finetune.candidates"),
        ({"finetune": {"mode": "auto", "candidates": ["full", "full"]}}, "finetune.candidates"),
        ({"finetune": {"mode": "ditto", "labels": "superclasses"}}, "finetune.labels"),
        ({"finetune": {"ditto_lambda": -1}}, "finetune.ditto_lambda"),
    ],
)
def test_a_bad_personalisation_setting_names_its_key(settings, key):
    with pytest.raises(ConfigError, match=f"x.yaml: {key}"):
        from_dict(ExperimentConfig, settings, "x.yaml")


def test_fedrep_ends_with_the_kept_head_refitted_on_the_final_body(fit_calls):
    model, kept = tiny_model(), head_of(tiny_model(seed=7))
    settings = FinetuneSettings(mode="fedrep", train=TrainConfig(epochs=1, batch_size=8))
    body_before = {k: v for k, v in snapshot(model).items() if not k.startswith(HEAD)}
    done = METHODS["fedrep"].finish(model, SiteRun(Site(), SPACE, SPACE, settings, kept))
    assert torch.equal(fit_calls[0][1]["head.weight"], kept["head.weight"])
    assert not changed(body_before, done.model.state_dict(), body_before)
    assert not torch.equal(done.model.head.weight, kept["head.weight"])


def head_of(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in snapshot(model).items() if k.startswith(HEAD)}


def test_fedbn_keeps_every_batchnorm_found_by_type_whatever_its_name():
    model = build_model("xresnet1d18", n_classes=len(SPACE), input_length=128, width=0.125)
    state = model.state_dict()
    norms = {k.removesuffix(".running_var") for k in state if k.endswith(".running_var")}
    assert batchnorm_keys(model) == {k for k in state if k.rsplit(".", 1)[0] in norms}
    assert {"neck.1.weight", "neck.1.num_batches_tracked"} <= batchnorm_keys(model)  # no "norm"
    assert "neck.3.weight" not in batchnorm_keys(model)  # the Linear between them
    assert batchnorm_keys(tiny_model(norm="group")) == set()


class RunSite(Site):
    """What the site's message handlers use of SiteData."""

    def counts(self) -> dict[str, int]:
        return {split: len(self.dataset(split, SPACE)) for split in ("train", "val", "test")}


def job(mode: str = "fedbn", server_round: int = 1, run_id: str = "a1") -> Job:
    """A message's job for the tiny model and data above."""
    experiment = ExperimentConfig(
        model=ModelSettings("ribeiro_resnet", "batch", {"width": 0.125}),
        pipeline=PipelineConfig(fs=100.0, length_s=1.28),
        local=TrainConfig(epochs=1, batch_size=8, lr=1e-2),
        finetune=FinetuneSettings(mode=mode, train=TrainConfig(epochs=1, batch_size=8)),
    )
    return Job(experiment, SPACE, SPACE, "run", run_id, server_round=server_round)


def global_arrays(seed: int = 0) -> ArrayRecord:
    return ArrayRecord(snapshot(tiny_model(seed)))


BATCHNORM = batchnorm_keys(tiny_model())


def test_a_fedbn_site_keeps_its_batchnorm_sends_the_rest_and_the_coordinators_stays(tmp_path):
    received = global_arrays()
    sent, _ = task.train_on_site(job(), RunSite(), received, tmp_path)
    old = received.to_torch_state_dict()
    assert list(sent) == [k for k in old if k not in BATCHNORM]
    kept = task.kept(tmp_path, job())
    assert set(kept) == BATCHNORM and changed(old, kept, BATCHNORM) == BATCHNORM  # trained
    new_global = next_global(ArrayRecord(sent), received).to_torch_state_dict()
    assert not changed(old, new_global, BATCHNORM)
    assert all(new_global[k].dtype == old[k].dtype for k in BATCHNORM)
    assert changed(old, new_global, set(sent))


def test_a_fedbn_round_trains_as_a_plain_round(tmp_path):
    plain, _ = task.train_on_site(job("full"), RunSite(), global_arrays(), tmp_path / "full")
    sent, _ = task.train_on_site(job(), RunSite(), global_arrays(), tmp_path / "fedbn")
    kept = task.kept(tmp_path / "fedbn", job())
    assert not changed(plain, {**sent, **kept}, plain)


def test_a_fedbn_sites_next_round_starts_from_its_own_batchnorm(tmp_path, fit_calls):
    task.train_on_site(job(), RunSite(), global_arrays(), tmp_path)
    kept = task.kept(tmp_path, job())
    received = global_arrays(seed=1)
    task.train_on_site(job(server_round=2), RunSite(), received, tmp_path)
    start, new = fit_calls[-1][1], received.to_torch_state_dict()
    assert not changed(kept, start, BATCHNORM)
    assert not changed(new, start, set(new) - BATCHNORM)
    assert changed(kept, task.kept(tmp_path, job()), BATCHNORM)  # round 2's now


def test_what_an_earlier_run_of_the_same_name_kept_is_not_read(tmp_path, fit_calls):
    task.train_on_site(job(run_id="a1"), RunSite(), global_arrays(seed=2), tmp_path)
    assert task.kept(tmp_path, job(run_id="b2")) is None
    received = global_arrays(seed=1)
    task.train_on_site(job(server_round=2, run_id="b2"), RunSite(), received, tmp_path)
    start = fit_calls[-1][1]
    assert not changed(received.to_torch_state_dict(), start, BATCHNORM)  # the coordinator's
    assert set(task.kept(tmp_path, job(run_id="b2"))) == BATCHNORM  # now this run's


def test_a_fedbn_site_evaluates_the_global_model_with_its_own_batchnorm(tmp_path):
    received = global_arrays()
    task.train_on_site(job(), RunSite(), received, tmp_path / "site")
    own = ArrayRecord({**received.to_torch_state_dict(), **task.kept(tmp_path / "site", job())})
    at_site = task.evaluate_on_site(job(), RunSite(), received, tmp_path / "site")
    assert at_site == task.evaluate_on_site(job("full"), RunSite(), own, tmp_path / "nothing")
    coordinators = task.evaluate_on_site(job("full"), RunSite(), received, tmp_path / "nothing")
    assert at_site[VAL_LOSS] != pytest.approx(coordinators[VAL_LOSS])


@pytest.mark.parametrize("mode", ["fedbn", "fedrep", "fedper"])
def test_a_site_that_keeps_parts_but_never_trained_scores_nothing_before(tmp_path, mode):
    """Sampled out of every round: its head or BatchNorm would be the coordinator's untrained."""
    at_site = task.evaluate_on_site(job(mode, server_round=3), RunSite(), global_arrays(), tmp_path)
    assert at_site[NUM_EXAMPLES] == 0 and math.isnan(at_site[MACRO_AUC])
    metrics, _ = task.finetune_on_site(job(mode), RunSite(), global_arrays(), tmp_path)
    assert math.isnan(metrics[BEFORE_MACRO_AUC]) and not math.isnan(metrics[AFTER_MACRO_AUC])


def test_a_fedbabu_site_scores_the_global_model_it_trains_for(tmp_path):
    """FedBABU's head stays the coordinator's (frozen, not sent back): the global model is whole,
    so validation in every round and "before" fine-tuning score it, trained at the site or not."""
    received = global_arrays()
    for site in (tmp_path / "trained", tmp_path / "sampled-out"):
        if site.name == "trained":
            task.train_on_site(job("fedbabu"), RunSite(), received, site)
        at_site = task.evaluate_on_site(job("fedbabu", server_round=3), RunSite(), received, site)
        plain = task.evaluate_on_site(job("full"), RunSite(), received, tmp_path / "plain")
        assert at_site == plain and at_site[NUM_EXAMPLES] > 0
        metrics, _ = task.finetune_on_site(job("fedbabu"), RunSite(), received, site)
        assert not math.isnan(metrics[BEFORE_MACRO_AUC])


def test_a_ditto_sites_personal_model_is_not_what_evaluation_scores(tmp_path):
    received = global_arrays()
    task.train_on_site(job("ditto"), RunSite(), received, tmp_path / "site")
    assert task.kept(tmp_path / "site", job())  # Ditto's personal model
    assert task.evaluate_on_site(
        job("ditto"), RunSite(), received, tmp_path / "site"
    ) == task.evaluate_on_site(job("ditto"), RunSite(), received, tmp_path / "nothing-kept")


@pytest.mark.parametrize(
    ("mode", "own"), [("fedbn", BATCHNORM), ("fedrep", {"head.weight", "head.bias"}), ("ditto", ())]
)
def test_before_scores_the_global_model_with_what_the_site_keeps_of_its_own(
    tmp_path, monkeypatch, mode, own
):
    received = global_arrays()
    task.train_on_site(job(mode), RunSite(), received, tmp_path)
    kept = task.kept(tmp_path, job())
    scored, real = [], task.score
    monkeypatch.setattr(
        task, "score", lambda model, *a: scored.append(snapshot(model)) or real(model, *a)
    )
    task.finetune_on_site(job(mode), RunSite(), received, tmp_path)
    (before,) = scored
    coordinators = received.to_torch_state_dict()
    assert not changed(kept, before, own)
    assert not changed(coordinators, before, set(before) - set(own))
    assert changed(coordinators, before, own) == set(own)


def test_fedbn_ends_with_a_full_finetune_from_the_sites_own_batchnorm(fit_calls):
    trained = tiny_model(seed=7)
    METHODS["full"].round(trained, local_round("full"))
    kept = {k: v for k, v in snapshot(trained).items() if k in BATCHNORM}
    settings = FinetuneSettings(mode="fedbn", train=TrainConfig(epochs=1, batch_size=8))
    model = tiny_model()
    fit_calls.clear()
    METHODS["fedbn"].finish(model, SiteRun(Site(), SPACE, SPACE, settings, kept))
    ((trainable, start, validated),) = fit_calls
    assert trainable == {n for n, _ in model.named_parameters()} and validated
    assert not changed(kept, start, BATCHNORM)


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"model": {"norm": "group"}}, "with model.norm: group the model has none"),
        ({"federation": {"dp_sgd": {"noise_multiplier": 1.0}}}, "without privacy or dp_sgd"),
        (
            {"model": {"norm": "group"}, "federation": {"dp_sgd": {"noise_multiplier": 1.0}}},
            "without privacy or dp_sgd",
        ),
        ({"federation": {"strategy": "fedadam"}}, "fedavg, fedprox or fedexp"),
    ],
)
def test_fedbn_is_refused_without_batchnorm_or_with_dp_sgd_naming_the_mode(settings, says):
    with pytest.raises(ConfigError, match=f"x.yaml: finetune.mode: fedbn .*{says}"):
        from_dict(ExperimentConfig, {"finetune": {"mode": "fedbn"}, **settings}, "x.yaml")
    assert from_dict(ExperimentConfig, {"finetune": {"mode": "fedbn"}}).finetune.mode == "fedbn"


def test_a_cosine_over_the_rounds_sets_each_rounds_local_learning_rate(tmp_path, monkeypatch):
    """federation.round_lr: each site computes its round's rate from the round Flower sends."""
    rates = []
    real = Trainer.fit

    def spy(self, model, train_ds, val_ds):
        rates.append(self.cfg.lr)
        return real(self, model, train_ds, val_ds)

    monkeypatch.setattr(Trainer, "fit", spy)
    for schedule in ("constant", "cosine"):
        for rnd in (1, 2, 3):
            j = job("full", server_round=rnd)
            j.experiment.federation.rounds, j.experiment.federation.round_lr = 3, schedule
            task.train_on_site(j, RunSite(), global_arrays(), tmp_path / f"{schedule}{rnd}")
    assert rates[:3] == [1e-2] * 3
    assert rates[3:] == pytest.approx([1e-2, 1e-2 * 0.75, 1e-2 * 0.25])


def test_an_unknown_round_lr_schedule_is_refused_by_name():
    with pytest.raises(ConfigError, match="x.yaml: federation.round_lr"):
        from_dict(ExperimentConfig, {"federation": {"round_lr": "step"}}, "x.yaml")
