"""ecgfl's Flower ClientApp: a hospital trains, evaluates and fine-tunes on data kept on site."""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client import task

app = ClientApp()


def _reply(msg: Message, site: str, metrics: dict, arrays: dict | None = None) -> Message:
    content = RecordDict({"metrics": MetricRecord(metrics), "site": ConfigRecord({"name": site})})
    if arrays is not None:
        content["arrays"] = ArrayRecord(arrays)
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    job = task.Job.from_config(msg.content["config"])
    site = task.open_site(context, job.experiment)
    weights, metrics = task.train_on_site(job, site, msg.content["arrays"])
    return _reply(msg, site.name, metrics, weights)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    job = task.Job.from_config(msg.content["config"])
    site = task.open_site(context, job.experiment)
    return _reply(msg, site.name, task.evaluate_on_site(job, site, msg.content["arrays"]))


@app.train("finetune")
def finetune(msg: Message, context: Context) -> Message:
    """The fine-tuned weights stay in the site's output folder; only scores go back."""
    job = task.Job.from_config(msg.content["config"])
    site = task.open_site(context, job.experiment)
    out = task.output_dir(context, site, job.run_name)
    metrics, _ = task.finetune_on_site(job, site, msg.content["arrays"], out)
    return _reply(msg, site.name, metrics)
