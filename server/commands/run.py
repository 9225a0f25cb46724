"""Submit a federated job to the running coordinator and follow it to its report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common.config import ConfigError, SettingError, load_yaml
from common.errors import RunFailed
from common.flower_process import APP_DIR, plain
from common.names import RULE, is_plain_name
from server import coordinator, runs


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="experiment YAML (not with --resume)")
    p.add_argument("--coordinator", type=Path, default=Path("coordinator.yaml"))
    p.add_argument(
        "--run-dir",
        type=Path,
        help="default: STATE_DIR/runs/NAME (the experiment's name:; a new run needs a new name)",
    )
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a stopped run")
    p.add_argument("--app", type=Path, default=APP_DIR, help="the Flower app (project folder)")


def run_name(experiment: Path) -> str:
    """The experiment's ``name:`` (what the researcher called it), else the file's name; it
    becomes a folder at every hospital, so it must be a plain name."""
    name = load_yaml(experiment).get("name") or experiment.stem
    if not is_plain_name(str(name)):
        raise ConfigError(f"{experiment}: name {name!r}: the run folder needs {RULE}")
    return str(name)


def run(args: argparse.Namespace) -> int:
    cfg = coordinator.CoordinatorConfig.load(args.coordinator)
    if args.resume and (args.config or args.run_dir):
        raise ConfigError("--resume RUN_DIR continues with that run's own settings and folder")
    if not args.resume and not args.config:
        raise ConfigError("give --config EXPERIMENT.yaml (or --resume RUN_DIR)")
    from common.experiment import ExperimentConfig  # torch: only for this command

    experiment = None if args.resume else ExperimentConfig.load(args.config)
    if experiment is not None:
        from server import strategies  # Flower's server strategies: only for this command

        try:
            strategies.check(experiment.federation)
        except SettingError as exc:
            raise ConfigError(f"{args.config}: {exc.key}: {exc}") from exc
    if args.resume:
        run_dir = args.resume
    elif args.run_dir:
        run_dir = args.run_dir
    else:
        run_dir = cfg.state / "runs" / run_name(args.config)
    run_dir = run_dir.resolve()
    if not args.resume and (run_dir / runs.EXPERIMENT).exists():
        raise ConfigError(
            f"run {run_dir.name} exists ({run_dir}): give the experiment a new name: (it names "
            f"the run's folder here and at every hospital), or continue it with --resume {run_dir}"
        )
    if coordinator.running_pid(cfg) is None:
        raise RunFailed(
            f"the coordinator of {args.coordinator} is not running: start it first "
            f"(ecgfl-coordinator start --config {args.coordinator} --detach)"
        )
    coordinator.prepare_run(cfg, experiment, run_dir)
    code = coordinator.submit(cfg, args.app.resolve(), run_dir)
    summary = run_dir / runs.SUMMARY
    if code != 0 or not summary.exists():
        log_tail = plain((run_dir / runs.FLOWER_LOG).read_text(errors="replace")[-4000:])
        if (what_to_do := coordinator.advice(cfg, log_tail)) is not None:
            print(what_to_do)
        print(f"the run did not finish (flwr exit {code}); resume with --resume {run_dir}")
        return code or 1
    stopped = json.loads(summary.read_text()).get("stopped")
    if stopped:
        print(f"the run stopped: {stopped} (full reasons: {run_dir / 'failures.log'})")
        return 1
    print(f"report: {run_dir / 'report.md'}")
    return 0
