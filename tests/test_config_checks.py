"""A config that cannot run is refused at load, before any data is generated or read, with one
precise error naming file and key; no config loader raises anything else or hangs."""

import contextlib
import dataclasses
import os
import resource
import subprocess
import sys
import types
import typing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.config import MAX_YAML_BYTES, ConfigError, Range, check, from_dict, load_yaml
from common.experiment import ExperimentConfig
from common.hospital import HospitalConfig
from common.training import TrainConfig
from server.coordinator import CoordinatorConfig
from simulations.attack import AttackExperiment, AttackSettings
from simulations.centralized import CentralizedConfig
from simulations.config import SimulationConfig

SIMULATE = Path(sys.executable).with_name("ecgfl-simulate")
MEMORY_CAP = 4 * 2**30  # bytes of address space: reading /dev/zero would pass it quickly


@dataclass(frozen=True)
class Case:
    """One malformed run config: its YAML (None: no file) and what the error must name."""

    text: str | None
    names: tuple[str, ...]


CASES = {  # malformed configs tried on the command in real processes (memory cap, timeout)
    # Started generating data before this work.
    "lr NaN": Case("experiment: {local: {lr: .nan}}\n", ("experiment.local.lr", "finite")),
    "lr inf": Case(
        "experiment: {finetune: {train: {lr: .inf}}}\n",
        ("experiment.finetune.train.lr", "finite"),
    ),
    "unknown model kwargs": Case(
        "experiment: {model: {kwargs: {widht: 0.5}}}\n", ("experiment.model", "'widht'")
    ),
    "width 1e6": Case(
        "experiment: {model: {kwargs: {width: 1000000.0}}}\n", ("experiment.model", "resource cap")
    ),
    "missing finetune.labels": Case(
        "experiment: {finetune: {labels: no-such-space.yaml}}\n",
        ("experiment.finetune.labels", "no such file"),
    ),
    "missing init_checkpoint": Case(
        "experiment: {federation: {init_checkpoint: no-such.pt}}\n",
        ("experiment.federation.init_checkpoint", "no such file"),
    ),
    "missing data.ptbxl": Case("data: {ptbxl: no-such-ptbxl}\n", ("data.ptbxl", "no such folder")),
    "negative workers": Case("workers: -1\n", ("workers", ">= 1")),
    "negative cpus": Case("cpus_per_site: -2.0\n", ("cpus_per_site", "> 0")),
    "negative timeout": Case(
        "experiment: {federation: {round_timeout_s: -5}}\n",
        ("experiment.federation.round_timeout_s", "> 0"),
    ),
    "fs 1e9": Case(
        "experiment: {pipeline: {fs: 1000000000.0}}\n", ("experiment.pipeline.fs", "resource cap")
    ),
    "batch 1e20": Case(
        "experiment: {local: {batch_size: 100000000000000000000}}\n",
        ("experiment.local.batch_size", "resource cap"),
    ),
    "rounds 1e9": Case(
        "experiment: {federation: {rounds: 1000000000}}\n",
        ("experiment.federation.rounds", "resource cap"),
    ),
    "n_records 1e12": Case(
        "data: {tis: {n_records: 1000000000000}}\n", ("data.tis.n_records", "resource cap")
    ),
    # Hung, and read 7 GB.
    "self-referencing alias": Case(
        "experiment: {model: {kwargs: &k {inner: *k}}}\n", ("anchors and aliases", "line 1")
    ),
    "base /dev/zero": Case("base: /dev/zero\n", ("bad.yaml: base: /dev/zero: not a regular file",)),
}

MORE_CASES = {  # more of the same kinds, run in this process
    # Refused at once since before the hostile-config work (no isolation needed).
    "unknown key": Case("epochs: 3\n", ("unknown key(s) ['epochs']",)),
    "wrong type": Case(
        "experiment: {federation: {rounds: three}}\n",
        ("experiment.federation.rounds", "expected an integer"),
    ),
    "unknown strategy": Case(
        "experiment: {federation: {strategy: fedsgd}}\n",
        ("experiment.federation.strategy", "'fedsgd'", "fedavg"),
    ),
    "unknown model": Case(
        "experiment: {model: {name: resnet9000}}\n", ("experiment.model", "name='resnet9000'")
    ),
    "invalid YAML": Case("experiment: {name: [x\n", ("not valid YAML", "line 2")),
    "top-level list": Case("- experiment\n- data\n", ("expected a mapping at the top level",)),
    "missing file": Case(None, ("no such file",)),
    "base loops": Case("base: bad.yaml\n", ("bad.yaml: base: loops back",)),
    "fraction out of range": Case(
        "experiment: {federation: {fraction_train: 2.0}}\n",
        ("experiment.federation.fraction_train", "<= 1"),
    ),
    "fedprox without mu": Case(
        "experiment: {federation: {strategy: fedprox}}\n", ("experiment.federation", "proximal_mu")
    ),
    "alias bomb": Case(
        "a: &a [x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n"
            for i in range(8)
        ),
        ("anchors and aliases",),
    ),
    "base a folder": Case("base: .\n", ("base: ", "not a regular file")),
    "unknown label space": Case(
        "experiment: {labels: seed7}\n", ("experiment.labels", "unknown label space 'seed7'")
    ),
    "too deep": Case("experiment: " + "[" * 40 + "]" * 40 + "\n", ("nested deeper",)),
    "more CPUs than here": Case("cpus_per_site: 1000.0\n", ("cpus_per_site", "this machine")),
    "annotated label not in the space": Case(
        "partition: {annotated: {tis: [AFIB, FOO]}}\n", ("partition.annotated.tis", "'FOO'")
    ),
    "too large": Case("# " + "x" * MAX_YAML_BYTES + "\n", ("larger than",)),
}


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def _refuse(name: str, case: Case, root: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """``ecgfl-simulate run --config`` on the case in a folder of its own."""
    folder = root / name.replace(" ", "-").replace("/", "")
    folder.mkdir()
    if case.text is not None:
        (folder / "bad.yaml").write_text(case.text)
    result = subprocess.run(
        [str(SIMULATE), "run", "--config", "bad.yaml", "--quiet"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=_limit_memory,
    )
    return result, folder


@pytest.fixture(scope="module")
def refusals(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Every case at once: each is a process that imports torch, a few seconds of CPU."""
    root = tmp_path_factory.mktemp("refusals")
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        futures = {n: pool.submit(_refuse, n, c, root) for n, c in CASES.items()}
        return {n: f.result() for n, f in futures.items()}


@pytest.mark.e2e  # 16 real ecgfl-simulate processes (~30 s): outside the quick tier
@pytest.mark.parametrize("name", CASES)
def test_a_bad_run_config_is_refused_before_any_work(refusals, name):
    result, folder = refusals[name]
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert len(lines) == 1 and lines[0].startswith("ecgfl-simulate run: error: ")
    assert all(part in lines[0] for part in CASES[name].names), lines[0]
    assert sorted(p.name for p in folder.iterdir()) == (["bad.yaml"] if CASES[name].text else [])


@pytest.mark.parametrize("name", MORE_CASES)
def test_more_bad_run_configs_are_refused_before_any_work(tmp_path, monkeypatch, capsys, name):
    from simulations import cli

    monkeypatch.chdir(tmp_path)
    case = MORE_CASES[name]
    if case.text is not None:
        (tmp_path / "bad.yaml").write_text(case.text)
    assert cli.main(["run", "--config", "bad.yaml", "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("ecgfl-simulate run: error: ")
    assert "Traceback" not in error
    assert all(part in error for part in case.names), error
    assert sorted(p.name for p in tmp_path.iterdir()) == (["bad.yaml"] if case.text else [])


def test_a_fifo_as_base_is_refused_without_waiting_for_a_writer(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "run.yaml").write_text("base: pipe\n")
    with pytest.raises(ConfigError, match="pipe: not a regular file"):
        SimulationConfig.load(tmp_path / "run.yaml")


def test_settings_from_the_coordinator_are_not_looked_for_at_the_hospital():
    """Paths and label-space files in a received experiment are the coordinator's own."""
    remote = {"labels": "/coordinator/space.yaml", "federation": {"init_checkpoint": "/c/w.pt"}}
    experiment = from_dict(ExperimentConfig, remote, "coordinator's experiment")
    assert experiment.federation.init_checkpoint == "/c/w.pt"


def test_paths_a_config_names_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.pt").write_bytes(b"")
    (tmp_path / "exp.yaml").write_text("federation: {init_checkpoint: w.pt}\n")
    loaded = ExperimentConfig.load(tmp_path / "exp.yaml")
    assert loaded.federation.init_checkpoint == str(tmp_path / "w.pt")


def test_a_folder_where_a_file_is_expected_is_named_as_such(tmp_path):
    (tmp_path / "exp.yaml").write_text(f"federation: {{init_checkpoint: {tmp_path}}}\n")
    with pytest.raises(ConfigError, match="federation.init_checkpoint: .*: not a file"):
        ExperimentConfig.load(tmp_path / "exp.yaml")


def test_settings_built_in_code_are_checked_like_read_ones():
    with pytest.raises(ConfigError, match="epochs: expected >= 1, got 0"):
        check(TrainConfig(epochs=0), "training")


def test_a_float_written_without_a_dot_gets_a_hint(tmp_path):
    (tmp_path / "exp.yaml").write_text("local: {lr: 3e-4}\n")
    with pytest.raises(ConfigError, match=r"local.lr: .*write it with a dot"):
        ExperimentConfig.load(tmp_path / "exp.yaml")


@pytest.mark.parametrize("command", ["centralized", "attack"])
def test_centralized_and_attack_refuse_before_any_work(tmp_path, monkeypatch, capsys, command):
    from simulations import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("experiment: {federation: {rounds: 1000000000}}\n")
    assert cli.main([command, "--config", "bad.yaml", "--quiet"]) == 2
    assert "experiment.federation.rounds" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_coordinator_run_refuses_before_any_work(tmp_path, monkeypatch, capsys):
    from server import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "coordinator.yaml").write_text("address: ecg.example.org:8000\n")
    (tmp_path / "bad.yaml").write_text("local: {lr: .nan}\n")
    argv = ["run", "--config", "bad.yaml", "--run-dir", "runs/x"]
    assert cli.main(argv) == 2
    assert "bad.yaml: local.lr: expected a finite number" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# Random documents for every loader: each loads or raises ConfigError, quickly. Most documents
# follow the loader's own settings tree, with values near and past every bound and junk
# anywhere, so they reach the checks deep inside; some are random text.

NAMES = st.sampled_from(
    ["seed6", "superclasses", "ribeiro_resnet", "inception1d", "xresnet1d18", "group", "batch"]
    + ["fedavg", "fedexp", "fedprox", "krum", "natural", "dirichlet", "noise", "full", "float16"]
    + ["last_k", "auto", "ditto"]
    + ["~no-such-user/x", "/dev/zero", ".", "a\0b", "x.yaml", "host:1", "", "tis", "ptbxl", "NORM"]
)
NUMBERS = st.one_of(
    st.integers(-3, 12),
    st.integers(),
    st.sampled_from([2**63, 10**30, 10_000, 10_001, 65_537, 0.5, 1e-300]),
    st.builds(lambda e: 10**e, st.integers(300, 400)),  # past any float
    st.floats(),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=12), NAMES)
JUNK = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=6) | st.integers() | NAMES, inner, max_size=4)
    ),
    max_leaves=12,
)
MODEL_KWARGS = st.dictionaries(
    st.sampled_from(["width", "depth", "kernel_size", "dropout", "head_hidden", "filters"])
    | st.text(max_size=6),
    st.one_of(st.sampled_from([0.25, 1.0, 3, 6, 18, 60, 63]), NUMBERS, JUNK),
    max_size=3,
)


def rarely_junk(values: st.SearchStrategy) -> st.SearchStrategy:
    """``values`` nine times in ten, junk otherwise: documents mostly get past their first key."""
    return st.integers(0, 9).flatmap(lambda i: JUNK if i == 0 else values)


def in_range(hint, bounds: Range) -> st.SearchStrategy:
    low = bounds.low if bounds.low is not None else -5
    high = min(x for x in (bounds.high, bounds.cap, low + 50) if x is not None)
    if hint is int:
        return st.integers(int(low), int(high))
    return st.floats(low, high, exclude_min=bounds.low_open, exclude_max=bounds.high_open)


def plausible(hint) -> st.SearchStrategy:
    """Values for a setting of type ``hint``: within its bounds, at and past them, or junk."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        bounds = [in_range(args[0], m) for m in hint.__metadata__ if isinstance(m, Range)]
        return st.one_of(*bounds, plausible(args[0]))
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(plausible(a) for a in args))
    if dataclasses.is_dataclass(hint):
        return rarely_junk(st.deferred(lambda: settings_of(hint)))
    if origin in (list, tuple):
        return rarely_junk(st.lists(plausible(args[0]), min_size=1, max_size=3))
    if origin is dict:
        keys = st.one_of(NAMES, st.text(max_size=6), st.integers())
        return rarely_junk(st.dictionaries(keys, plausible(args[1]), max_size=3))
    typed = {
        dict: MODEL_KWARGS,
        float: NUMBERS,
        int: NUMBERS,
        bool: st.booleans(),
        str: NAMES | st.text(max_size=12) | st.sampled_from(["127.0.0.1:9092", "h:65536"]),
        type(None): st.none(),
    }
    return rarely_junk(typed.get(hint, JUNK))


def settings_of(cls, extra: dict | None = None) -> st.SearchStrategy[dict]:
    """A mapping for dataclass ``cls``: the keys it needs, some it may have, and now and then
    one it does not know."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = dataclasses.fields(cls)
    needed = {f.name for f in fields if f.default is f.default_factory is dataclasses.MISSING}
    optional = {f.name: plausible(hints[f.name]) for f in fields if f.name not in needed}
    known = st.fixed_dictionaries(
        {name: plausible(hints[name]) for name in needed}, optional={**optional, **(extra or {})}
    )
    unknown = st.builds(lambda d, j: {**d, "bogus": j} if isinstance(d, dict) else d, known, JUNK)
    return rarely_junk(st.integers(0, 9).flatmap(lambda i: unknown if i == 0 else known))


ATTACK = {
    "attack": plausible(AttackSettings),
    "attacks": plausible(list[AttackSettings]),
    "strategies": plausible(list[str]),
}
LOADERS = {
    "simulation": (SimulationConfig.load, settings_of(SimulationConfig, {"base": NAMES})),
    "experiment": (ExperimentConfig.load, settings_of(ExperimentConfig)),
    "centralized": (CentralizedConfig.load, settings_of(CentralizedConfig)),
    "attack": (AttackExperiment.load, settings_of(SimulationConfig, ATTACK)),
    "hospital": (HospitalConfig.load, settings_of(HospitalConfig)),
    "coordinator": (CoordinatorConfig.load, settings_of(CoordinatorConfig)),
}


def documents(loader: str) -> st.SearchStrategy[str]:
    tree = LOADERS[loader][1].map(lambda d: yaml.safe_dump(d, allow_unicode=True))
    return tree | tree | st.text(max_size=200)


def _fuzz(tmp_path_factory, loader: str, data: st.DataObject) -> None:
    path = tmp_path_factory.getbasetemp() / f"fuzz-{loader}.yaml"
    path.write_text(data.draw(documents(loader)))
    with contextlib.suppress(ConfigError):
        LOADERS[loader][0](path)


FUZZ = dict(deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("loader", LOADERS)
@settings(max_examples=200, derandomize=True, **FUZZ)
@given(data=st.data())
def test_every_loader_loads_or_refuses_random_documents(tmp_path_factory, loader, data):
    _fuzz(tmp_path_factory, loader, data)


@pytest.mark.slow
@pytest.mark.parametrize("loader", LOADERS)
@settings(max_examples=10_000, **FUZZ)
@given(data=st.data())
def test_every_loader_loads_or_refuses_many_random_documents(tmp_path_factory, loader, data):
    _fuzz(tmp_path_factory, loader, data)


@pytest.mark.parametrize("loader", ["hospital", "coordinator"])
def test_a_path_under_an_unknown_home_is_a_config_error(tmp_path, loader):
    required = {
        "hospital": "site: a\nsuperlink: h:1\ndata_dir: d\n",
        "coordinator": "address: h:1\n",
    }
    (tmp_path / "c.yaml").write_text(required[loader] + "state_dir: ~no-such-user/state\n")
    with pytest.raises(ConfigError, match="state_dir"):
        LOADERS[loader][0](tmp_path / "c.yaml")


def test_load_yaml_refuses_what_is_not_a_config_file(tmp_path):
    (tmp_path / "ok.yaml").write_text("a: 1\n")
    assert load_yaml(tmp_path / "ok.yaml") == {"a": 1}
    if Path("/dev/zero").exists():
        with pytest.raises(ConfigError, match="not a regular file"):
            load_yaml("/dev/zero")
    with pytest.raises(ConfigError, match="not a regular file"):
        load_yaml(tmp_path)
