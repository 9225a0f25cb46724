"""Personalisation methods: what each trains, keeps and sends, on a tiny model and tiny data."""

import math

import pytest
import torch
from flwr.app import ArrayRecord
from torch.utils.data import TensorDataset

from common import personalise
from common.config import ConfigError, from_dict
from common.experiment import ExperimentConfig, FinetuneSettings
from common.labels import LabelSpace
from common.metrics import Metrics
from common.models import build_model
from common.personalise import (
    HEAD,
    METHODS,
    LocalRound,
    Method,
    Personalised,
    SiteRun,
    shared_state,
)
from common.training import TrainConfig, Trainer, TrainResult
from server.rounds import next_global

SPACE = LabelSpace.from_dict({"name": "s", "labels": ["A", "B", "C"], "codebooks": {}})


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("ribeiro_resnet", n_classes=len(SPACE), input_length=128, width=0.125)


def data(n: int = 24, seed: int = 3) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, len(SPACE), generator=g) < 0.5).float()
    x = torch.randn(n, 12, 128, generator=g) + 2 * y[:, :1, None]
    return TensorDataset(x, y, torch.ones_like(y))


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
    """Which parameters required grad (and the head's weights) each time the Trainer fitted."""
    calls = []
    real = Trainer.fit

    def spy(self, model, train_ds, val_ds):
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        calls.append((trainable, model.head.weight.detach().clone()))
        return real(self, model, train_ds, val_ds)

    monkeypatch.setattr(Trainer, "fit", spy)
    return calls


def test_fedrep_trains_the_head_alone_first_then_the_body_alone(fit_calls):
    model = tiny_model()
    names = {n for n, _ in model.named_parameters()}
    head = {n for n in names if n.startswith(HEAD)}
    METHODS["fedrep"].round(model, local_round("fedrep"))
    assert [trainable for trainable, _ in fit_calls] == [head, names - head]


def test_fedrep_starts_each_round_from_the_head_the_site_kept(fit_calls):
    model = tiny_model()
    _, kept = METHODS["fedrep"].round(model, local_round("fedrep"))
    assert set(kept) == head_keys(model.state_dict())
    received = tiny_model(seed=1)  # the next round's global model: another head
    METHODS["fedrep"].round(received, local_round("fedrep", personal=kept))
    assert torch.equal(fit_calls[-2][1], kept["head.weight"])


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


KEEP_THE_HEAD = {"fedrep", "fedper", "fedbabu"}


@pytest.mark.parametrize("mode", list(METHODS))
def test_each_method_sends_the_state_in_order_without_what_it_keeps_at_the_site(mode):
    model = tiny_model()
    state = snapshot(model)
    kept = head_keys(state) if mode in KEEP_THE_HEAD else set()
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
    assert torch.equal(fit_calls[0][1], kept["head.weight"])
    assert not changed(body_before, done.model.state_dict(), body_before)
    assert not torch.equal(done.model.head.weight, kept["head.weight"])


def head_of(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in snapshot(model).items() if k.startswith(HEAD)}
