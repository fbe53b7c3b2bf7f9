#!/usr/bin/env python3
"""Regenerates the benchmark's AdmissionReview bodies (minified) from tests/data.

- notebook-pod.json: the test notebook pod with more env vars (and their managedFields
  entries), ~10 KB minified: the headline workload.
- plain-pod.json: the same pod without the notebook label: a full-size pod no rule touches.
- trial-job.json, katib-trial-pod.json: the test fixtures, minified.
Run from the repository root: python3 bench/data/make-data.py
"""
import copy
import json
import pathlib

root = pathlib.Path(__file__).resolve().parents[2]
src = root / "tests" / "data"
out = root / "bench" / "data"


def dump(name, review):
    text = json.dumps(review, separators=(",", ":"))
    (out / name).write_text(text + "\n")
    print(f"{name}: {len(text)} bytes")


notebook = json.loads((src / "notebook-pod.json").read_text())
pod = notebook["request"]["object"]
container = pod["spec"]["containers"][0]
fields = pod["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]["f:containers"]
cfields = fields[next(iter(fields))]["f:env"]
extra = {
    "KF_PIPELINES_ENDPOINT": "http://ml-pipeline-ui.kubeflow.svc.cluster.local",
    "KATIB_UI_URL": "http://katib-ui.kubeflow.svc.cluster.local/katib/",
    "SPARK_MASTER": "k8s://https://kubernetes.default.svc",
    "DASK_SCHEDULER": "tcp://dask-scheduler.alice.svc.cluster.local:8786",
    "WANDB_MODE": "offline",
    "TORCH_HOME": "/home/jovyan/.cache/torch",
    "XDG_CACHE_HOME": "/home/jovyan/.cache",
    "GIT_AUTHOR_NAME": "Alice Example",
    "GIT_AUTHOR_EMAIL": "alice@example.com",
    "REQUESTS_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt",
}
for name, value in extra.items():
    container["env"].append({"name": name, "value": value})
    cfields[f'k:{{"name":"{name}"}}'] = {".": {}, "f:name": {}, "f:value": {}}
dump("notebook-pod.json", notebook)

plain = copy.deepcopy(notebook)
plain["request"]["uid"] = "0e9d8c7b-6a5f-4e3d-2c1b-0a9f8e7d6c5b"
meta = plain["request"]["object"]["metadata"]
del meta["labels"]["notebook-name"]
dump("plain-pod.json", plain)

for name in ["trial-job.json", "katib-trial-pod.json"]:
    dump(name, json.loads((src / name).read_text()))

# The proxy-config annotation a tenant controls (issue 9.1): the largest value the rules still
# read (4 KiB, 8 levels of nesting) and the 80 KB nested value that cost serde_yaml seconds.
job = json.loads((src / "trial-job.json").read_text())
template = job["request"]["object"]["spec"]["template"]
annotations = template.setdefault("metadata", {}).setdefault("annotations", {})
# `{a: [[[[[[[x, x, ...]]]]]]]}`: 8 levels, 3 * 1359 + 17 = 4094 bytes.
widest = "{a: " + "[" * 7 + ", ".join(["x"] * 1359) + "]" * 7 + "}"
assert len(widest) <= 4096
annotations["proxy.istio.io/config"] = widest
dump("trial-job-proxy-config-at-bound.json", job)
annotations["proxy.istio.io/config"] = "a: " + "[" * 40_000 + "]" * 40_000
dump("trial-job-proxy-config-deep.json", job)
