#!/usr/bin/env python3
"""End-to-end smoke check of the testenv binary (python3 stdlib only).

Starts target/testenv/testenv, waits for the ready line, then: creates a
namespace, applies deploy/crds/kubeflow/*.yaml, creates a Profile and reads it back,
checks ownerReference garbage collection and namespace deletion, and finally
sends SIGTERM and checks for a clean exit. Prints timings and RSS.

usage: python3 testenv/smoke.py [--binary PATH] [--no-controllers]
"""
import argparse
import base64
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(msg):
    print(f"smoke: {msg}", flush=True)


class Client:
    def __init__(self, kubeconfig, tmp):
        text = open(kubeconfig).read()

        def field(name):
            m = re.search(rf"^\s*{name}:\s*(\S+)\s*$", text, re.M)
            if not m:
                raise SystemExit(f"kubeconfig has no {name}")
            return m.group(1)

        self.server = field("server")
        files = {}
        for name in ("certificate-authority-data", "client-certificate-data", "client-key-data"):
            path = os.path.join(tmp, name)
            with open(path, "wb") as f:
                f.write(base64.b64decode(field(name)))
            files[name] = path
        self.ctx = ssl.create_default_context(cafile=files["certificate-authority-data"])
        self.ctx.load_cert_chain(files["client-certificate-data"], files["client-key-data"])

    def req(self, method, path, body=None, ctype="application/json"):
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        r = urllib.request.Request(self.server + path, data=data, method=method)
        if data is not None:
            r.add_header("Content-Type", ctype)
        try:
            with urllib.request.urlopen(r, context=self.ctx, timeout=30) as resp:
                raw = resp.read()
                return resp.status, (json.loads(raw) if raw[:1] == b"{" else raw.decode())
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, raw.decode(errors="replace")

    def must(self, method, path, body=None, ok=(200, 201, 202)):
        code, obj = self.req(method, path, body)
        if code not in ok:
            raise SystemExit(f"{method} {path} -> {code}: {obj}")
        return obj

    def wait(self, what, fn, timeout=90):
        t0 = time.time()
        while time.time() - t0 < timeout:
            if fn():
                dt = time.time() - t0
                log(f"{what}: ok after {dt:.1f}s")
                return dt
            time.sleep(0.2)
        raise SystemExit(f"timed out ({timeout}s) waiting for: {what}")


def yaml_crd_to_json(path):
    # The CRDs are plain YAML; use PyYAML when present, otherwise the apiserver
    # accepts YAML bodies directly.
    try:
        import yaml  # noqa: F401
        return json.dumps(yaml.safe_load(open(path))).encode(), "application/json"
    except ImportError:
        return open(path, "rb").read(), "application/yaml"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/testenv/testenv"))
    ap.add_argument("--no-controllers", action="store_true")
    ap.add_argument("--preload-crds", action="store_true", help="pass --crds deploy/crds/kubeflow to testenv")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="testenv-smoke-")
    state = os.path.join(tmp, "state")
    cmd = [args.binary, "--dir", state, "--exit-on-stdin-eof"]
    if args.no_controllers:
        cmd.append("--controllers=false")
    crd_dir = os.path.join(ROOT, "deploy/crds/kubeflow")
    if args.preload_crds:
        cmd += ["--crds", crd_dir]
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    ready_s = time.time() - t0
    m = re.fullmatch(r"testenv ready kubeconfig=(\S+) server=(https://127\.0\.0\.1:\d+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"bad ready line {line!r}; see {state}/testenv.log")
    log(f"ready line after {ready_s:.1f}s: {line}")
    c = Client(m.group(1), tmp)
    assert c.server == m.group(2)

    # namespace
    c.must("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "smoke"}})

    # CRDs
    t_crd = time.time()
    names = []
    for fn in sorted(os.listdir(crd_dir)):
        if fn.endswith(".yaml"):
            body, ctype = yaml_crd_to_json(os.path.join(crd_dir, fn))
            code, obj = c.req("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", body, ctype)
            if code == 409 and args.preload_crds:
                obj = json.loads(body) if ctype == "application/json" else {"metadata": {"name": re.search(
                    r"^  name: (\S+)", body.decode(), re.M).group(1)}}
            elif code not in (200, 201):
                raise SystemExit(f"create CRD {fn} -> {code}: {obj}")
            names.append(obj["metadata"]["name"])

    def established(name):
        code, obj = c.req("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        return code == 200 and any(
            x["type"] == "Established" and x["status"] == "True" for x in obj.get("status", {}).get("conditions", []))

    for n in names:
        c.wait(f"CRD {n} established", lambda n=n: established(n))
    c.wait("profiles served", lambda: c.req("GET", "/apis/kubeflow.org/v1/profiles")[0] == 200)
    log(f"all {len(names)} CRDs established+served {time.time() - t_crd:.1f}s after the first POST")

    # Profile
    c.must("POST", "/apis/kubeflow.org/v1/profiles", {
        "apiVersion": "kubeflow.org/v1", "kind": "Profile", "metadata": {"name": "alice"},
        "spec": {"owner": {"kind": "User", "name": "alice@example.com"}}})
    p = c.must("GET", "/apis/kubeflow.org/v1/profiles/alice")
    assert p["spec"]["owner"]["name"] == "alice@example.com", p
    p = c.must("GET", "/apis/kubeflow.org/v1beta1/profiles/alice")
    assert p["apiVersion"] == "kubeflow.org/v1beta1", p
    c.must("PUT", "/apis/kubeflow.org/v1/profiles/alice/status",
           dict(p, apiVersion="kubeflow.org/v1", status={"conditions": [{"type": "Ready"}]}))
    log("profile created, served as v1 and v1beta1, status subresource works")

    if args.no_controllers:
        # control: without the garbage collector the dependent must stay
        owner = c.must("POST", "/api/v1/namespaces/smoke/configmaps", {
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}})
        c.must("POST", "/api/v1/namespaces/smoke/configmaps", {
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dependent", "ownerReferences": [{
                "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}]}})
        c.must("DELETE", "/api/v1/namespaces/smoke/configmaps/owner")
        time.sleep(3)
        c.must("GET", "/api/v1/namespaces/smoke/configmaps/dependent")
        c.must("DELETE", "/api/v1/namespaces/smoke")
        time.sleep(2)
        ns = c.must("GET", "/api/v1/namespaces/smoke")
        assert ns["status"]["phase"] == "Terminating", ns
        log("controllers disabled: dependent kept, namespace stays Terminating (as expected)")
    else:
        # GC: dependent ConfigMap owned by another ConfigMap
        owner = c.must("POST", "/api/v1/namespaces/smoke/configmaps", {
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}})
        c.must("POST", "/api/v1/namespaces/smoke/configmaps", {
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dependent", "ownerReferences": [{
                "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}]}})
        c.must("DELETE", "/api/v1/namespaces/smoke/configmaps/owner")
        c.wait("GC deleted the dependent ConfigMap",
               lambda: c.req("GET", "/api/v1/namespaces/smoke/configmaps/dependent")[0] == 404)

        # GC with a custom-resource owner (cluster-scoped Profile owns a namespace)
        prof = c.must("GET", "/apis/kubeflow.org/v1/profiles/alice")
        c.must("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": "alice", "ownerReferences": [{"apiVersion": "kubeflow.org/v1", "kind": "Profile", "name": "alice",
                                                  "uid": prof["metadata"]["uid"], "controller": True,
                                                  "blockOwnerDeletion": True}]}})
        c.must("DELETE", "/apis/kubeflow.org/v1/profiles/alice")
        c.wait("GC deleted the namespace owned by the Profile (CR owner)",
               lambda: c.req("GET", "/api/v1/namespaces/alice")[0] == 404, timeout=120)

        # namespace controller
        c.must("DELETE", "/api/v1/namespaces/smoke")
        c.wait("namespace smoke deleted (contents + finalizer)",
               lambda: c.req("GET", "/api/v1/namespaces/smoke")[0] == 404)

    rss = rss_kib(proc.pid)
    log(f"RSS of testenv: {rss / 1024:.0f} MiB")

    t_term = time.time()
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise SystemExit("testenv did not exit within 30s of SIGTERM")
    log(f"exit code {rc} {time.time() - t_term:.1f}s after SIGTERM")
    if rc != 0:
        raise SystemExit(f"testenv exited {rc}; see {state}/testenv.log")
    rest = proc.stdout.read()
    if rest.strip():
        raise SystemExit(f"unexpected stdout after the ready line: {rest!r}")
    log("all checks passed")


if __name__ == "__main__":
    main()
