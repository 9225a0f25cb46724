"""The hospital's own ClientApp process: what runs at the hospital for each coordinator message.

The hospital's SuperNode runs with ``--isolation process``: it runs no app code itself and hands
each task only to a launcher holding the hospital's SuperExec secret (``client.daemon.Launcher``),
which starts this module. It pulls the message and the coordinator's bundle from the SuperNode,
refuses a bundle the hospital has not approved (an error reply and an audit line with the bundle's
hash; nothing else leaves), and otherwise runs the hospital's installed ClientApp (``client.app``)
with the node config built from ``hospital.yaml``. The bundle's code is never imported here.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from flwr.app import Context, Message
from flwr.app.error import Error
from flwr.common.constant import ErrorCode, SubStatus
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.logger import update_console_handler
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

from client import audit, bundle
from client.daemon import node_values
from client.egress import EgressViolation
from client.policy import PolicyViolation
from common import protocol
from common.config import ConfigError
from common.dpsgd import SiteBudgetExhausted
from common.hospital import HospitalConfig

log = logging.getLogger("ecgfl.hospital")
NOT_APPROVED = "app not approved by this hospital"
# Refusals whose text the hospital wrote itself and may send back; any other failure is reported
# by type only, so an exception message cannot carry site data out.
TOLD = (PolicyViolation, SiteBudgetExhausted, EgressViolation, ConfigError)


def _error(message: Message, reason: str) -> Message:
    error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason)
    return Message(error, reply_to=message)


def bundles_dir(cfg: HospitalConfig) -> Path:
    """Where refused bundles wait for the hospital's review."""
    return Path(cfg.state_dir) / "bundles"


def handle(cfg: HospitalConfig, message: Message, context: Context, fab_content: bytes) -> Message:
    """The reply to one message: a refusal, or what the installed ClientApp answers."""
    context.node_config = node_values(cfg)  # the hospital's own, whatever the SuperNode was told
    audit_log = Path(cfg.audit_log)
    try:
        found = bundle.review(fab_content)
    except bundle.BundleError as exc:
        audit.write(audit_log, {**audit.entry("refused", message), "reason": str(exc)})
        return _error(message, f"{NOT_APPROVED}: {exc}")
    verdict = bundle.approval(cfg.policy, found)
    if verdict is None:
        kept = bundle.keep_refused(bundles_dir(cfg), fab_content, found, context.run_id)
        entry = {"bundle_sha256": found.sha256, "bundle": found.name, "reason": NOT_APPROVED}
        audit.write(audit_log, {**audit.entry("refused", message), **entry})
        log.error(
            "refused run %d: %s (bundle %s, sha256 %s, kept as %s); review it with: "
            "ecgfl-hospital approve --config hospital.yaml --run %d",
            context.run_id,
            NOT_APPROVED,
            found.name,
            found.sha256,
            kept,
            context.run_id,
        )
        return _error(message, f"{NOT_APPROVED} (bundle sha256 {found.sha256})")
    log.info("run %d: bundle %s accepted: %s", context.run_id, found.sha256[:12], verdict)
    from client.app import app  # installed code; imported only for an approved run

    try:
        reply = app(message, context)
    except TOLD as exc:
        log.error("run %d: refused: %s", context.run_id, exc)
        return _error(message, f"refused by this hospital: {exc}")
    except Exception as exc:  # noqa: BLE001 - reported by type only, logged here in full
        log.exception("run %d: the ClientApp failed", context.run_id)
        failed = type(exc).__name__
        return _error(message, f"the hospital's ClientApp failed ({failed}); see its log")
    log.info("%s", answered(cfg, message, reply))
    return reply


def answered(cfg: HospitalConfig, message: Message, reply: Message) -> str:
    """One plain line for the hospital's log: what was asked and what left (or was kept)."""
    what = audit.entry("sent", message)
    head = f"run {what['run'] or message.metadata.run_id}"
    if what["server_round"] is not None:
        head += f" round {what['server_round']}"
    kind = message.metadata.message_type
    if reply.has_error():
        return f"{head}: {kind} answered with an error: {reply.error.reason}"
    sent = audit.describe(reply.content)
    arrays = sum(r.get("bytes", 0) for r in sent.values() if r["kind"] == "arrays")
    line = f"{head}: {kind} answered: " + (f"weights ({arrays:,} bytes) and " if arrays else "")
    line += f"metrics {', '.join(sent['metrics']['keys']) if 'metrics' in sent else '-'}"
    if kind == protocol.FINETUNE:
        m = reply.content[protocol.METRICS_RECORD]
        kept = Path(cfg.output_dir) / str(what["run"]) / "finetuned.pt"
        line += (
            f"; fine-tuned model kept at {kept}, test macro AUC "
            f"{m[protocol.BEFORE_MACRO_AUC]:.3f} -> {m[protocol.AFTER_MACRO_AUC]:.3f}"
        )
    return line


def run_task(cfg: HospitalConfig, runtime_api_address: str, token: str) -> int:
    """Pull one task from the SuperNode, answer it, push the reply and the task's status."""
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address,
        insecure=True,  # loopback only: the SuperNode's Runtime API binds 127.0.0.1
        root_certificates=None,
        interceptors=[
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token),
        ],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    context, status, details = None, SubStatus.FAILED, "the hospital's runner failed"
    try:
        message, context, _run, fab = pull_task_input(client)
        reply = handle(cfg, message, context, fab.content)
        push_message(client, reply, context)
        if not reply.has_error():
            status, details = SubStatus.COMPLETED, ""
        else:
            details = reply.error.reason
    finally:
        push_task_output(client, context, status, details)
        heartbeat.stop()
        client.close()
    return 0 if status == SubStatus.COMPLETED else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="hospital.yaml")
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--parent-pid", type=int)
    args = parser.parse_args(argv)
    if args.parent_pid:
        start_parent_process_monitor(args.parent_pid)
    update_console_handler(colored=False)  # its output lands in the hospital's log file
    cfg = HospitalConfig.load(args.config)
    logging.basicConfig(
        filename=cfg.log_file,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return run_task(cfg, args.runtime_api_address, args.token)


if __name__ == "__main__":
    sys.exit(main())
