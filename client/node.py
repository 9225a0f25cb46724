"""What a message and this node's config say about the site: the coordinator's job (checked
against the hospital's policy) and the site's data, a hospital's folder or a virtual site.
"""

from __future__ import annotations

import json
import logging
import os
from functools import lru_cache
from pathlib import Path

from flwr.app import ConfigRecord, Context

from client.policy import POLICY_KEY, check_job, plain_name
from common import config, protocol
from common.experiment import ExperimentConfig
from common.hospital import SitePolicy
from common.preprocess import PipelineConfig
from common.protocol import Job
from common.site import SiteData

log = logging.getLogger("ecgfl.client")
PIPELINE_KEY = "pipeline-fingerprint"  # node config: the pipeline hospital.yaml prepared
#: Environment (read when the ClientApp loads): the virtual sites a process keeps open.
SITE_CACHE_ENV = "ECGFL_SITE_CACHE"
DEFAULT_SITE_CACHE = 32


def site_policy(context: Context) -> SitePolicy | None:
    """The hospital's policy, which its own ClientApp runner puts in the node config; None in a
    simulation (no hospital)."""
    text = context.node_config.get(POLICY_KEY)
    return SitePolicy.from_json(str(text)) if text else None


def read_job(record: ConfigRecord, context: Context) -> Job:
    """The coordinator's job, refused (``PolicyViolation``) where it breaks the site's policy."""
    job = Job.from_record(record)
    policy = site_policy(context)
    if policy is not None:
        spaces = [job.space, job.finetune_space]
        check_job(policy, job.experiment, spaces, job.run_name, job.server_round)
    return job


def open_site(context: Context, experiment: ExperimentConfig) -> SiteData:
    """This node's data: a hospital's folder (deployment) or a manifest entry (simulation)."""
    node = context.node_config
    if "data-dir" in node:
        own = node.get(PIPELINE_KEY)
        if own and own != experiment.pipeline.fingerprint:
            log.info(
                "the run's preprocessing differs from hospital.yaml's pipeline: using (or "
                "building) this site's cache for %s",
                json.dumps(experiment.pipeline.to_dict()),
            )
        return SiteData.from_folder(
            str(node.get("site", "site")),
            Path(str(node["data-dir"])),
            Path(str(node.get("cache-dir", Path(str(node["data-dir"])).parent / "ecgfl-cache"))),
            experiment.pipeline,
            str(node["format"]) if node.get("format") else None,
        )
    manifest = context.run_config.get(protocol.SITE_MANIFEST)
    if not manifest:
        raise config.ConfigError(
            "this node has no 'data-dir' in its node config and the run names no site-manifest"
        )
    return _virtual_site(Path(str(manifest)), int(node["partition-id"]), experiment.pipeline)


def site_cache_size() -> int:
    """How many virtual sites a simulation's ClientApp process keeps open (``ECGFL_SITE_CACHE``,
    default 32; 0 reopens the site for every message, as before this reuse existed)."""
    text = os.environ.get(SITE_CACHE_ENV, str(DEFAULT_SITE_CACHE))
    if not text.isdigit():
        raise config.ConfigError(f"{SITE_CACHE_ENV}={text!r}: expected a number of sites, >= 0")
    return int(text)


def _open_virtual_site(manifest: Path, partition: int, pipeline: PipelineConfig) -> SiteData:
    """The Simulation Engine reuses ClientApp processes across messages: open each site once,
    and keep its datasets (in memory) for the sites this process served last: bounded memory
    however many sites a run has."""
    return SiteData.from_manifest(manifest, partition, pipeline)


_virtual_site = lru_cache(maxsize=site_cache_size())(_open_virtual_site)


def output_dir(context: Context, site: SiteData, run_name: str) -> Path:
    """Where this site keeps what must not leave it (the fine-tuned model). Created by what
    writes there: most messages write nothing, and a 1,000-site simulation would otherwise
    leave a folder per site that ever trained."""
    node = context.node_config
    if "output-dir" in node:
        base = Path(str(node["output-dir"]))
    else:
        base = Path(str(context.run_config[protocol.RUN_DIR])) / "sites" / site.name
    return base / plain_name(run_name, protocol.RUN_NAME)
