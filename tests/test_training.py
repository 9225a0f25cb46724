import json
import math

import pytest
import torch
from torch.nn.utils import parameters_to_vector
from torch.utils.data import TensorDataset

from common.config import ConfigError, from_dict
from common.metrics import compute_metrics
from common.models import build_model
from common.training import TrainConfig, Trainer, evaluate, masked_bce

LENGTH = 256


def sine_task(n: int, length: int = LENGTH, seed: int = 0, invert: bool = False) -> TensorDataset:
    """Label j = a 5 Hz sinusoid (at 100 Hz) rides on lead j; noise everywhere."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, 2, generator=g) < 0.5).float()
    x = 0.5 * torch.randn(n, 12, length, generator=g)
    wave = torch.sin(2 * math.pi * 5 * torch.arange(length) / 100)
    x[:, :2] += y[:, :, None] * wave
    return TensorDataset(x, 1 - y if invert else y, torch.ones_like(y))


def tiny_model(length: int = LENGTH, name: str = "ribeiro_resnet"):
    torch.manual_seed(0)
    return build_model(name, n_classes=2, input_length=length, width=0.125)


def test_masked_bce_equals_manual_mean_over_annotated_entries():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    p = torch.sigmoid(logits)
    manual = -(y * p.log() + (1 - y) * (1 - p).log())
    expected = manual[mask > 0].mean()
    assert torch.allclose(masked_bce(logits, y, mask), expected)


def test_masked_logits_get_zero_gradient():
    logits = torch.randn(4, 3, requires_grad=True)
    y = torch.randint(0, 2, (4, 3)).float()
    mask = torch.tensor([[1.0, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]])
    masked_bce(logits, y, mask).backward()
    assert torch.all(logits.grad[mask == 0] == 0)
    assert torch.all(logits.grad[mask == 1] != 0)


def test_all_masked_batch_gives_zero_loss_and_finite_gradient():
    logits = torch.randn(3, 2, requires_grad=True)
    loss = masked_bce(logits, torch.ones(3, 2), torch.zeros(3, 2))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logits.grad == 0)


def test_pos_weight_scales_positive_terms():
    logits, y, mask = torch.zeros(2, 1), torch.tensor([[1.0], [0.0]]), torch.ones(2, 1)
    plain = masked_bce(logits, y, mask)
    weighted = masked_bce(logits, y, mask, pos_weight=torch.tensor([3.0]))
    assert torch.allclose(weighted, plain * 2)  # (3*log2 + log2) / 2 vs (log2 + log2) / 2


def test_tiny_model_learns_an_easy_task_within_seconds():
    cfg = TrainConfig(epochs=3, batch_size=32, lr=3e-3)
    result = Trainer(cfg, progress=False).fit(tiny_model(), sine_task(256), sine_task(128, seed=1))
    assert result.val_metrics.macro_auc > 0.9
    assert len(result.history) == 3 and result.n_train == 256
    json.dumps(result.history)


def test_early_stopping_restores_the_best_epoch():
    # Validation labels are inverted: the better the model learns, the worse validation gets.
    cfg = TrainConfig(epochs=15, batch_size=32, lr=3e-3, early_stopping_patience=2)
    model = tiny_model()
    val = sine_task(64, seed=1, invert=True)
    result = Trainer(cfg, progress=False).fit(model, sine_task(128), val)
    assert result.stopped_early
    assert len(result.history) == result.best_epoch + 2
    aucs = [h["val_macro_auc"] for h in result.history]
    assert result.best_score == max(aucs) > aucs[-1]
    probs, y, mask = evaluate(model, val)
    assert math.isclose(compute_metrics(probs, y, mask).macro_auc, max(aucs))


def test_with_start_competing_a_fine_tune_that_only_hurts_returns_the_start_unchanged():
    # A model already good on the task, then "fine-tuned" on inverted labels: every epoch
    # scores worse on validation than the weights it started from, which come back as they were.
    model = tiny_model()
    Trainer(TrainConfig(epochs=3, batch_size=32, lr=3e-3), progress=False).fit(
        model, sine_task(256), None
    )
    start = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(epochs=4, batch_size=32, lr=3e-3, early_stopping_patience=2)
    trainer = Trainer(cfg, progress=False, start_competes=True)
    result = trainer.fit(model, sine_task(128, invert=True), sine_task(64, seed=1))
    assert result.best_epoch == 0 and result.stopped_early and len(result.history) == 2
    assert result.best_score > max(h["val_macro_auc"] for h in result.history)
    assert all(torch.equal(start[k], v) for k, v in model.state_dict().items())
    # Without it, the best epoch trained is returned, worse than the start.
    plain = Trainer(cfg, progress=False).fit(
        model, sine_task(128, invert=True), sine_task(64, seed=1)
    )
    assert plain.best_epoch >= 1 and plain.best_score < result.best_score


def _drift(model, reference):
    return (parameters_to_vector(model.parameters()) - parameters_to_vector(reference)).norm()


def test_proximal_term_keeps_weights_near_the_reference():
    cfg = dict(epochs=2, batch_size=32, lr=0.01, optimizer="sgd")
    drifts = {}
    for mu in (0.0, 200.0):
        model = tiny_model()
        reference = [p.detach().clone() for p in model.parameters()]
        Trainer(TrainConfig(**cfg, proximal_mu=mu), progress=False, proximal_to=reference).fit(
            model, sine_task(128), None
        )
        drifts[mu] = _drift(model, reference)
    assert drifts[200.0] < 0.2 * drifts[0.0]


def test_proximal_reference_may_be_a_state_dict():
    model = tiny_model()
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.01, optimizer="sgd", proximal_mu=50.0)
    Trainer(cfg, progress=False, proximal_to=reference).fit(model, sine_task(64), None)
    assert _drift(model, [reference[n] for n, _ in model.named_parameters()]) < 1.0


def test_sliding_windows_take_the_max_over_windows_covering_the_record():
    model = tiny_model(length=100).eval()
    x = torch.randn(3, 12, 250)
    ds = TensorDataset(x, torch.zeros(3, 2), torch.ones(3, 2))
    probs, _, _ = evaluate(model, ds, stride=100)
    with torch.no_grad():  # windows at 0, 100 and, aligned to the end, 150
        manual = torch.stack([torch.sigmoid(model(x[..., s : s + 100])) for s in (0, 100, 150)])
    assert torch.allclose(torch.from_numpy(probs), manual.amax(0), atol=1e-6)


def test_training_on_longer_records_uses_random_crops():
    cfg = TrainConfig(epochs=1, batch_size=16)
    result = Trainer(cfg, progress=False).fit(
        tiny_model(length=100), sine_task(32, length=250), sine_task(16, length=250)
    )
    assert result.val_metrics.n_samples == 16


def test_records_shorter_than_the_model_input_are_refused_clearly():
    with pytest.raises(ValueError, match="needs at least 256"):
        evaluate(tiny_model(), sine_task(4, length=200))


def test_every_optimizer_scheduler_and_class_weighting_runs():
    for optimizer, scheduler in (("adamw", "cosine"), ("sgd", "onecycle")):
        cfg = TrainConfig(
            epochs=1,
            batch_size=16,
            optimizer=optimizer,
            scheduler=scheduler,
            class_weights="balanced",
            max_grad_norm=1.0,
        )
        result = Trainer(cfg, progress=False).fit(tiny_model(), sine_task(33), None)
        assert math.isfinite(result.history[0]["train_loss"])


def test_train_config_rejects_bad_values_with_the_key():
    with pytest.raises(ConfigError, match="optimizer"):
        from_dict(TrainConfig, {"optimizer": "lbfgs"})
    with pytest.raises(ConfigError, match="early_stopping_patience"):
        from_dict(TrainConfig, {"early_stopping_patience": 0})


def test_an_empty_validation_set_gives_no_scores_instead_of_a_crash():
    empty = TensorDataset(torch.zeros(0, 12, LENGTH), torch.zeros(0, 2), torch.zeros(0, 2))
    result = Trainer(TrainConfig(epochs=1), progress=False).fit(tiny_model(), sine_task(16), empty)
    assert result.val_metrics.macro_auc is None
    assert result.val_metrics.per_class["0"]["reason"] == "no annotated samples"


def test_bf16_autocast_learns_what_fp32_learns_on_the_main_jobs_geometry():
    """precision: bf16 (the main job's choice on CPUs that do bf16 natively) stays within
    tolerance of float32: the same first outputs to bf16's 3 digits, and after training the
    same separation of the classes. Weights stay float32."""
    train, val = sine_task(96, length=1000), sine_task(48, length=1000, seed=1)
    x = val.tensors[0][:8]
    reference = tiny_model(length=1000).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = reference(x).float()
    assert torch.allclose(low, reference(x), atol=0.05, rtol=0.05)
    scores = {}
    for number_format in ("fp32", "bf16"):
        model = tiny_model(length=1000)
        cfg = TrainConfig(epochs=3, batch_size=16, precision=number_format)
        scores[number_format] = Trainer(cfg, progress=False).fit(model, train, val).val_metrics
        assert all(p.dtype == torch.float32 for p in model.parameters())
    assert scores["fp32"].macro_auc > 0.9
    assert abs(scores["bf16"].macro_auc - scores["fp32"].macro_auc) < 0.05


def test_auto_precision_is_bf16_only_where_native_and_never_under_dp_sgd(monkeypatch):
    from common import precision

    cpu = torch.device("cpu")
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(precision, "cpu_has_bf16", lambda native=native: native)
        assert precision.resolve("auto", cpu) == expected
        assert precision.resolve("auto", cpu, private=True) == "fp32"
        assert precision.resolve("fp32", cpu) == "fp32"
        assert precision.resolve("bf16", cpu) == "bf16"
    with pytest.raises(ConfigError, match="precision"):
        from_dict(TrainConfig, {"precision": "fp16"})


def test_a_loss_that_turns_nan_stops_training_with_where_it_happened():
    poisoned = sine_task(32)
    poisoned.tensors[0][20] = float("nan")
    cfg = TrainConfig(epochs=1, batch_size=16)
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 1, batch \d"):
        Trainer(cfg, progress=False).fit(tiny_model(), poisoned, None)


def test_a_model_left_with_non_finite_weights_is_never_returned():
    """A finite loss can come with NaN/inf updates; here a BatchNorm's running variance (which
    training mode does not use) is inf and stays so."""
    model = tiny_model()
    next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)).running_var.fill_(
        float("inf")
    )
    with pytest.raises(FloatingPointError, match="running_var is not finite"):
        Trainer(TrainConfig(epochs=1, batch_size=16), progress=False).fit(
            model, sine_task(32), None
        )
