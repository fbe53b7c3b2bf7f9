//! Katib trial pods, mutated by `tenancy-fixer mutate`, executed as a kubelet would (see
//! tests/kubelet): Katib's real file-metricscollector (built from its Go module by
//! testenv/katib/build.sh), a stand-in Istio proxy (`pilot-agent`: /healthz/ready, /quitquitquit,
//! SIGINT), a stand-in DB manager speaking Katib's gRPC API, stand-in training programs.
//!
//! Each scenario (one pod: sidecar kind × mode × collector) runs once, the first time a test
//! asks for it; each test checks one property of it. Scenarios: Katib's real file collector
//! with a classic sidecar in modern and legacy mode and with a native sidecar; the TF-event
//! collector (classic, modern); hostile words with a recording collector (classic modern,
//! classic legacy, native). Pods run one at a time. Without root the
//! scenarios cannot run: every test then says so on stderr and returns.

mod kubelet;

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, OnceLock},
    time::{Duration, UNIX_EPOCH},
};

use base64::Engine;
use kubelet::{Image, PodDir, PodRun, Registry, RunOptions, components, read_json_lines, toolbox};
use serde_json::{Value, json};

/// wait-ready + quitquitquit (Istio ≥ 1.7 without the hold annotation).
const MODERN: &str = "kfpAccess: header\nkatib:\n  proxyStartup: wait-ready\n  proxyStartupTimeoutSeconds: 30\n  proxyShutdown: quitquitquit\n";
/// sleep + pkill (Istio < 1.6: the prototype's recipe).
const LEGACY: &str =
    "kfpAccess: header\nkatib:\n  proxyStartup: sleep\n  sleepSeconds: 2\n  proxyShutdown: pkill\n";
const LEGACY_SLEEP: Duration = Duration::from_secs(2);
/// The stand-in proxy answers /healthz/ready with 200 only after this.
const PROXY_READY_AFTER: &str = "1500ms";

const TRIAL: &str = "random-exp-7mtk9x4q";
const TRAINING: &str = "training-container";
const FILE_COLLECTOR: &str = "metrics-logger-and-collector";
const TF_COLLECTOR: &str = "metrics-collector";
const PROXY: &str = "istio-proxy";
/// Metrics in Katib's TEXT format (an RFC 3339 time first), as the training program prints them.
const METRICS: &str = "2026-01-01T00:00:01Z epoch 1: loss=0.52 Train-accuracy=0.71\n\
                       2026-01-01T00:00:02Z epoch 2: loss=0.31 Train-accuracy=0.84\n";

// ---------------------------------------------------------------------------------------------
// Pods.

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The trial pod Katib's pod webhook and Istio's injector make (tests/data/katib-trial-pod.json:
/// StdOut collector, classic sidecar), named as the API server would name it.
fn katib_pod() -> Value {
    let review: Value = serde_json::from_str(
        &fs::read_to_string(repo().join("tests/data/katib-trial-pod.json")).unwrap(),
    )
    .unwrap();
    let mut pod = review["request"]["object"].clone();
    pod["metadata"]["name"] = json!(format!("{TRIAL}-x2k9p"));
    pod
}

fn containers(pod: &mut Value) -> &mut Vec<Value> {
    pod["spec"]["containers"].as_array_mut().unwrap()
}

fn container<'p>(pod: &'p Value, name: &str) -> &'p Value {
    pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(
            pod["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn container_mut<'p>(pod: &'p mut Value, name: &str) -> &'p mut Value {
    containers(pod)
        .iter_mut()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// Istio ≥ 1.27 on Kubernetes ≥ 1.28: the proxy is an init container with restartPolicy Always
/// and the startupProbe of Istio's injection template, after istio-init.
fn native_sidecar(mut pod: Value) -> Value {
    let list = containers(&mut pod);
    let at = list.iter().position(|c| c["name"] == PROXY).unwrap();
    let mut proxy = list.remove(at);
    proxy["restartPolicy"] = json!("Always");
    proxy["startupProbe"] = json!({
        "httpGet": {"path": "/healthz/ready", "port": 15021, "scheme": "HTTP"},
        "initialDelaySeconds": 0, "periodSeconds": 1, "timeoutSeconds": 3, "failureThreshold": 600
    });
    pod["spec"]["initContainers"]
        .as_array_mut()
        .unwrap()
        .push(proxy);
    pod
}

/// The pod Katib makes for a TF-event collector: sidecar `metrics-collector`, metrics directory
/// mounted at the path, no `-format`, training wrapped with the completed marker in that directory
/// (katib pkg/webhook/v1beta1/pod: getMetricsCollectorArgs, wrapWorkerContainer).
fn tfevent_pod() -> Value {
    let mut pod = katib_pod();
    let dir = "/var/log/katib/tfevent";
    let training = container_mut(&mut pod, TRAINING);
    training["args"] = json!([format!(
        "python3 /opt/pytorch-mnist/mnist.py --epochs=1 --log-path={dir} && echo completed > {dir}/$$$$.pid"
    )]);
    training["volumeMounts"][1]["mountPath"] = json!(dir);
    let collector = container_mut(&mut pod, FILE_COLLECTOR);
    collector["name"] = json!(TF_COLLECTOR);
    collector["image"] = json!("docker.io/kubeflowkatib/tfevent-metrics-collector:v0.17.0");
    collector["args"] = json!([
        "-t",
        TRIAL,
        "-m",
        "accuracy",
        "-o-type",
        "maximize",
        "-s-db",
        "katib-db-manager.kubeflow:6789",
        "-path",
        dir
    ]);
    collector["volumeMounts"][1]["mountPath"] = json!(dir);
    pod
}

/// Words a shell would love to interpret; `{dir}` is the pod directory (visible to the host),
/// `/tmp/…` are inside the container's own /tmp.
fn hostile_words(dir: &Path) -> Vec<String> {
    let d = dir.display();
    [
        "it's".to_string(),
        format!("$(touch {d}/pwned-arg)"),
        "$(touch /tmp/x)".into(),
        format!("`touch {d}/pwned-backtick`"),
        format!("'; touch {d}/pwned-quote; '"),
        format!("\"; touch {d}/pwned-dquote; \""),
        "$(MYVAR)".into(),
        "$(MYVAR_TMP)".into(),
        "<$(MYVAR)>".into(),
        "$$".into(),
        "$$(MYVAR)".into(),
        "$$$$.pid".into(),
        "$HOME ${HOME} $1 $@".into(),
        "line\nbreak\n".into(),
        String::new(),
        " ".into(),
        "*".into(),
        "\\".into(),
        "'".into(),
        "%s\\0".into(),
        "-w".into(),
        "true".into(),
        "é ☃".into(),
    ]
    .into()
}

fn hostile_env(dir: &Path) -> Value {
    json!([
        {"name": "MYVAR", "value": format!("x'$(touch {}/pwned-env)'y", dir.display())},
        {"name": "MYVAR_TMP", "value": "x'$(touch /tmp/p)'y"},
    ])
}

/// Katib's pod with hostile words: the training container runs its program directly (as for
/// collectors Katib does not wrap the training for) with hostile arguments and env values, the
/// collector gets hostile arguments (and `-w true`, as Katib adds when configured to wait).
fn hostile_pod(dir: &Path) -> Value {
    let mut pod = katib_pod();
    let words = hostile_words(dir);
    let training = container_mut(&mut pod, TRAINING);
    training["command"] = json!(["python3", "/opt/pytorch-mnist/mnist.py"]);
    training["args"] = json!(words);
    training["env"] = hostile_env(dir);
    let collector = container_mut(&mut pod, FILE_COLLECTOR);
    let mut args = strings(&collector["args"]);
    args.extend(["-w".into(), "true".into(), "-x".into()]);
    args.extend(words);
    collector["args"] = json!(args);
    collector["env"] = hostile_env(dir);
    pod
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// The AdmissionReview the API server sends for the pod: tests/data/katib-trial-pod.json's
/// request (the Job controller creating the pod for the Job that controls it) with `pod` as its
/// object. A bare object would be judged as an untrusted user's, who may not keep the reserved
/// label, and a pod without the label is no Katib trial pod of ours.
fn review_of(pod: &Value) -> Value {
    let mut review: Value = serde_json::from_str(
        &fs::read_to_string(repo().join("tests/data/katib-trial-pod.json")).unwrap(),
    )
    .unwrap();
    review["request"]["object"] = pod.clone();
    review
}

/// `tenancy-fixer mutate` on the pod's AdmissionReview, with the settings given: the pod with
/// the answer's patch applied.
fn mutate(pod: &Value, settings: &str, dir: &PodDir) -> Value {
    let input = dir.path("review.json");
    let config = dir.path("config.yaml");
    fs::write(&input, serde_json::to_vec_pretty(&review_of(pod)).unwrap()).unwrap();
    fs::write(&config, settings).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tenancy-fixer"))
        .args(["mutate", "-o", "json", "-f"])
        .arg(&input)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tenancy-fixer mutate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    let response = &answer["response"];
    assert_eq!(response["allowed"], true, "{answer}");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(
            response["patch"]
                .as_str()
                .unwrap_or_else(|| panic!("no patch: {answer}")),
        )
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut mutated = pod.clone();
    json_patch::patch(&mut mutated, &patch).unwrap();
    fs::write(
        dir.path("mutated.json"),
        serde_json::to_vec_pretty(&mutated).unwrap(),
    )
    .unwrap();
    mutated
}

// ---------------------------------------------------------------------------------------------
// Images.

const BUSYBOX: &[&str] = &[
    "sh", "cat", "cp", "rm", "mv", "mkdir", "ls", "sleep", "echo", "printf", "test", "[", "true",
    "false", "kill", "pkill", "ps", "head", "tail", "tr", "sed", "grep", "env", "date", "id",
    "touch", "wget",
];
const DEBIAN_SLIM: &[&str] = &[
    "sh", "bash", "cat", "cp", "rm", "mv", "mkdir", "ls", "sleep", "echo", "printf", "test", "[",
    "true", "false", "head", "tail", "tr", "sed", "grep", "env", "date", "id", "touch",
];

/// The host's Python 3 (Debian's, when present: what python:3.11-slim has).
fn python3() -> String {
    let debian = Path::new("/usr/bin/python3");
    if debian.exists() {
        return debian.display().to_string();
    }
    kubelet::which("python3", "/usr/local/bin:/usr/bin:/bin")
        .expect("python3 on the host")
        .display()
        .to_string()
}

/// A PATH holding only `tools` (plus python3/python when `python`): what the image has.
fn path_of(dir: &Path, tools: &[&str], python: bool) -> String {
    let mut links: Vec<(&str, &str)> = tools.iter().map(|t| (*t, *t)).collect();
    let python3 = python3();
    if python {
        links.extend([("python3", python3.as_str()), ("python", python3.as_str())]);
    }
    toolbox(dir, &links).display().to_string()
}

fn link(target: &Path, link: &Path) {
    fs::create_dir_all(link.parent().unwrap()).unwrap();
    let _ = fs::remove_file(link);
    std::os::unix::fs::symlink(target, link).unwrap();
}

fn copy(source: &Path, target: &Path) {
    fs::create_dir_all(target.parent().unwrap()).unwrap();
    fs::copy(source, target).unwrap();
}

fn env(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// What runs as the file collector: Katib's real one, or a recorder answering to its name.
enum FileCollector {
    Katib,
    /// trial-program: records its argv, stays `run_for`, writes a termination message, exits 3.
    Recorder,
}

const RECORDER_EXIT: i32 = 3;
const RECORDER_MESSAGE: &str = "collector: it's over $(MYVAR) $$\nsecond line";

/// The images of a trial pod, their records going to the pod directory.
fn registry(dir: &PodDir, file_collector: FileCollector) -> Registry {
    let bin = components();
    let images = dir.path("images");
    let standins = repo().join("testenv/katib/standins");

    let mnist = images.join("pytorch-mnist/opt");
    copy(&standins.join("mnist.py"), &mnist.join("mnist.py"));
    link(&bin.join("trial-program"), &mnist.join("trial-program"));
    let training = Image {
        workdir: images.join("pytorch-mnist/workdir"),
        env: env(&[
            (
                "PATH",
                path_of(&images.join("pytorch-mnist/bin"), DEBIAN_SLIM, true),
            ),
            (
                "STANDIN_RECORD",
                dir.path("training.jsonl").display().to_string(),
            ),
            (
                "STANDIN_PROBE_URL",
                "http://127.0.0.1:15021/healthz/ready".into(),
            ),
            ("STANDIN_OUTPUT", METRICS.into()),
            ("STANDIN_RUN_FOR", "1s".into()),
        ]),
        files: vec![("/opt/pytorch-mnist".into(), mnist)],
        ..Default::default()
    };

    let app = images.join("file-metrics-collector/app");
    let mut collector_env = vec![(
        "PATH".to_string(),
        path_of(&images.join("file-metrics-collector/bin"), BUSYBOX, false),
    )];
    match file_collector {
        FileCollector::Katib => link(
            &bin.join("file-metricscollector"),
            &app.join("file-metricscollector"),
        ),
        FileCollector::Recorder => {
            link(
                &bin.join("trial-program"),
                &app.join("file-metricscollector"),
            );
            collector_env.extend(env(&[
                (
                    "STANDIN_RECORD",
                    dir.path("collector.jsonl").display().to_string(),
                ),
                ("STANDIN_RUN_FOR", "5s".into()),
                ("STANDIN_TERMINATION_MESSAGE", RECORDER_MESSAGE.into()),
                ("STANDIN_EXIT_CODE", RECORDER_EXIT.to_string()),
            ]));
        }
    }
    let file_collector = Image {
        entrypoint: vec!["./file-metricscollector".into()],
        workdir: app,
        env: collector_env,
        ..Default::default()
    };

    let tfevent_dir = images.join("tfevent-metrics-collector/workdir");
    copy(
        &standins.join("tfevent_main.py"),
        &tfevent_dir.join("main.py"),
    );
    let tfevent = Image {
        entrypoint: vec!["python".into(), "main.py".into()],
        workdir: tfevent_dir,
        env: env(&[
            (
                "PATH",
                path_of(
                    &images.join("tfevent-metrics-collector/bin"),
                    DEBIAN_SLIM,
                    true,
                ),
            ),
            (
                "STANDIN_RECORD",
                dir.path("tfevent.jsonl").display().to_string(),
            ),
            ("PYTHONDONTWRITEBYTECODE", "1".into()),
        ]),
        ..Default::default()
    };

    let proxy = Image {
        entrypoint: vec![bin.join("pilot-agent").display().to_string()],
        workdir: images.join("proxyv2/workdir"),
        env: env(&[
            (
                "PATH",
                path_of(&images.join("proxyv2/bin"), DEBIAN_SLIM, false),
            ),
            (
                "PILOT_STANDIN_EVENTS",
                dir.path("pilot-agent.jsonl").display().to_string(),
            ),
            ("PILOT_STANDIN_READY_AFTER", PROXY_READY_AFTER.into()),
        ]),
        ..Default::default()
    };
    for image in [&training, &file_collector, &tfevent, &proxy] {
        fs::create_dir_all(&image.workdir).unwrap();
    }
    Registry::default()
        .with("docker.io/kubeflowkatib/pytorch-mnist-cpu", training)
        .with(
            "docker.io/kubeflowkatib/file-metrics-collector",
            file_collector,
        )
        .with("docker.io/kubeflowkatib/tfevent-metrics-collector", tfevent)
        .with("docker.io/istio/proxyv2", proxy)
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

struct Scenario {
    original: Value,
    mutated: Value,
    run: PodRun,
    dir: PodDir,
}

impl Scenario {
    fn records(&self, file: &str) -> Vec<Value> {
        read_json_lines(&self.dir.path(file))
    }

    /// The one record a stand-in wrote (it runs once per pod).
    fn record(&self, file: &str) -> Value {
        let records = self.records(file);
        assert_eq!(
            records.len(),
            1,
            "{file}: {records:?}\n{}",
            self.run.describe()
        );
        records.into_iter().next().unwrap()
    }

    fn proxy_events(&self) -> Vec<Value> {
        self.records("pilot-agent.jsonl")
    }

    fn proxy_event(&self, event: &str) -> Option<Value> {
        self.proxy_events()
            .into_iter()
            .find(|e| e["event"] == event)
    }
}

/// Runs pods one at a time: their timing assertions need the CPU.
static ONE_POD_AT_A_TIME: Mutex<()> = Mutex::new(());

fn scenario(
    cell: &'static OnceLock<Scenario>,
    name: &str,
    settings: &str,
    file_collector: FileCollector,
    make: impl FnOnce(&Path) -> Value,
) -> Option<&'static Scenario> {
    if let Some(reason) = kubelet::unavailable() {
        // Straight to stderr, past the test harness's capture: a skip must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED trial pod execution ({name}): {reason}"
        );
        return None;
    }
    Some(cell.get_or_init(|| {
        let _one = ONE_POD_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let dir = PodDir::new(name);
        let original = make(&dir.0);
        let mutated = mutate(&original, settings, &dir);
        let registry = registry(&dir, file_collector);
        let run = kubelet::run(&mutated, &registry, &dir, &RunOptions::default());
        Scenario {
            original,
            mutated,
            run,
            dir,
        }
    }))
}

macro_rules! scenario {
    ($fn:ident, $settings:expr, $collector:expr, $make:expr) => {
        fn $fn() -> Option<&'static Scenario> {
            static CELL: OnceLock<Scenario> = OnceLock::new();
            scenario(&CELL, stringify!($fn), $settings, $collector, $make)
        }
    };
}

scenario!(file_modern, MODERN, FileCollector::Katib, |_| katib_pod());
scenario!(file_legacy, LEGACY, FileCollector::Katib, |_| katib_pod());
scenario!(file_native, MODERN, FileCollector::Katib, |_| {
    native_sidecar(katib_pod())
});
scenario!(tfevent_modern, MODERN, FileCollector::Katib, |_| {
    tfevent_pod()
});
scenario!(hostile_modern, MODERN, FileCollector::Recorder, hostile_pod);
scenario!(hostile_legacy, LEGACY, FileCollector::Recorder, hostile_pod);
scenario!(hostile_native, LEGACY, FileCollector::Recorder, |dir| {
    native_sidecar(hostile_pod(dir))
});

// ---------------------------------------------------------------------------------------------
// Checks shared by scenarios.

fn unix_ns(time: std::time::SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64
}

fn assert_pod_finished(s: &Scenario, phase: &str) {
    let run = &s.run;
    assert!(run.finished, "the pod never finished\n{}", run.describe());
    assert_eq!(run.phase(), phase, "{}", run.describe());
    assert!(
        run.containers.iter().all(|c| c.exit_code.is_some()),
        "{}",
        run.describe()
    );
    assert_eq!(run.leftovers, Vec::<String>::new(), "{}", run.describe());
}

fn assert_metrics_reported(s: &Scenario) {
    let run = &s.run;
    assert_eq!(run.db_reports.len(), 1, "{}", run.describe());
    let report = &run.db_reports[0];
    assert_eq!(report["trialName"], TRIAL, "{report}");
    let logged: Vec<(String, String)> = report["observationLog"]["metricLogs"]
        .as_array()
        .unwrap_or_else(|| panic!("no metric logs: {report}"))
        .iter()
        .map(|l| {
            (
                l["metric"]["name"].as_str().unwrap().to_string(),
                l["metric"]["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for expected in [
        ("loss", "0.52"),
        ("loss", "0.31"),
        ("Train-accuracy", "0.71"),
        ("Train-accuracy", "0.84"),
    ] {
        assert!(
            logged.contains(&(expected.0.into(), expected.1.into())),
            "{expected:?} not in {logged:?}"
        );
    }
}

fn assert_proxy_quit_over_http(s: &Scenario) {
    let quit = s.proxy_event("quitquitquit");
    assert_eq!(
        quit.as_ref().map(|q| &q["method"]),
        Some(&json!("POST")),
        "events {:?}\n{}",
        s.proxy_events(),
        s.run.describe()
    );
    assert_eq!(
        s.run.container(PROXY).exit_code,
        Some(0),
        "{}",
        s.run.describe()
    );
}

fn assert_proxy_interrupted(s: &Scenario) {
    let signal = s.proxy_event("signal");
    assert_eq!(
        signal.as_ref().map(|e| &e["signal"]),
        Some(&json!("interrupt")),
        "events {:?}\n{}",
        s.proxy_events(),
        s.run.describe()
    );
    assert_eq!(
        s.run.container(PROXY).exit_code,
        Some(0),
        "{}",
        s.run.describe()
    );
}

/// The native sidecar is stopped by the kubelet (SIGTERM) after the collector is over.
fn assert_native_proxy_stopped_by_kubelet(s: &Scenario, collector: &str) {
    let signal = s
        .proxy_event("signal")
        .unwrap_or_else(|| panic!("events {:?}\n{}", s.proxy_events(), s.run.describe()));
    assert_eq!(signal["signal"], "terminated");
    let collector_end = unix_ns(s.run.container(collector).finished_at.unwrap());
    assert!(signal["unix_ns"].as_i64().unwrap() >= collector_end);
    assert!(s.proxy_event("quitquitquit").is_none());
}

fn assert_training_waited_for_readiness(s: &Scenario) {
    let training = s.record("training.jsonl");
    let ready = s
        .proxy_event("ready")
        .unwrap_or_else(|| panic!("the proxy never said ready\n{}", s.run.describe()));
    assert_eq!(
        training["probe_status"], 200,
        "the training program found the proxy not ready: {training}"
    );
    assert!(
        training["start_unix_ns"].as_i64() >= ready["unix_ns"].as_i64(),
        "training started at {} before the proxy was ready at {}",
        training["start_unix_ns"],
        ready["unix_ns"]
    );
}

fn decoded_argv(record: &Value) -> Vec<String> {
    record["argv_base64"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(w.as_str().unwrap())
                .unwrap();
            String::from_utf8(bytes).unwrap()
        })
        .collect()
}

fn recorded_env(record: &Value, name: &str) -> Option<String> {
    record["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")).map(str::to_string))
}

/// The argv the kubelet gives the container of the unmutated pod: what the program must get.
fn argv_without_us(s: &Scenario, name: &str) -> Vec<String> {
    let container = container(&s.original, name);
    let declared = kubelet::kubelet_env(&s.original, container);
    kubelet::container_argv(container, &Image::default(), &declared)
}

/// Splits Go-flag-style `-w VALUE` pairs out of `args`: (the other words, the -w values).
fn without_wait_flag(args: &[String]) -> (Vec<String>, Vec<String>) {
    let (mut rest, mut values) = (Vec::new(), Vec::new());
    let mut words = args.iter();
    while let Some(word) = words.next() {
        if word == "-w" || word == "--w" {
            values.push(words.next().cloned().unwrap_or_default());
        } else {
            rest.push(word.clone());
        }
    }
    (rest, values)
}

fn assert_hostile_words_arrive_intact(s: &Scenario) {
    let training = s.record("training.jsonl");
    // mnist.py passes its own arguments on: the program sees the script path, then the words.
    assert_eq!(
        decoded_argv(&training),
        argv_without_us(s, TRAINING)[1..],
        "training argv\n{}",
        s.run.describe()
    );
    for name in ["MYVAR", "MYVAR_TMP"] {
        let declared = kubelet::kubelet_env(&s.original, container(&s.original, TRAINING));
        let expected = declared
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone());
        assert_eq!(recorded_env(&training, name), expected, "{name}");
    }

    let collector = s.record("collector.jsonl");
    let argv = decoded_argv(&collector);
    assert_eq!(argv[0], "./file-metricscollector", "{argv:?}");
    // Katib's own argv, its `-w true` replaced by `-w false` (the only value the flag takes).
    let (rest, wait) = without_wait_flag(&argv[1..]);
    let (expected, _) = without_wait_flag(&argv_without_us(s, FILE_COLLECTOR));
    assert_eq!(wait, ["false"], "{argv:?}");
    assert_eq!(rest, expected, "collector argv\n{}", s.run.describe());
}

fn assert_nothing_executed(s: &Scenario) {
    let mut found = Vec::new();
    let mut dirs = vec![s.dir.0.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().unwrap().is_dir() {
                dirs.push(path.clone());
            }
            let in_container_tmp =
                path.parent().is_some_and(|p| p.ends_with("tmp")) && (name == "x" || name == "p");
            if name.starts_with("pwned") || in_container_tmp {
                found.push(path);
            }
        }
    }
    assert_eq!(
        found,
        Vec::<PathBuf>::new(),
        "shell text ran\n{}",
        s.run.describe()
    );
}

fn assert_collector_code_and_message_kept(s: &Scenario) {
    let collector = s.run.container(FILE_COLLECTOR);
    assert_eq!(
        collector.exit_code,
        Some(RECORDER_EXIT),
        "{}",
        s.run.describe()
    );
    assert_eq!(
        collector.termination_message,
        RECORDER_MESSAGE,
        "{}",
        s.run.describe()
    );
}

// ---------------------------------------------------------------------------------------------
// Classic sidecar, modern mode, Katib's real file collector.

#[test]
fn modern_training_starts_only_after_the_proxy_is_ready() {
    let Some(s) = file_modern() else { return };
    assert_training_waited_for_readiness(s);
}

#[test]
fn modern_metrics_reach_the_db_manager() {
    let Some(s) = file_modern() else { return };
    assert_metrics_reported(s);
}

#[test]
fn modern_collector_stops_the_proxy_with_quitquitquit() {
    let Some(s) = file_modern() else { return };
    assert_proxy_quit_over_http(s);
}

#[test]
fn modern_pod_finishes_with_every_process() {
    let Some(s) = file_modern() else { return };
    assert_pod_finished(s, "Succeeded");
}

// Classic sidecar, legacy mode (sleep, pkill), Katib's real file collector.

#[test]
fn legacy_training_starts_after_the_sleep() {
    let Some(s) = file_legacy() else { return };
    let training = s.record("training.jsonl");
    let container_start = unix_ns(s.run.container(TRAINING).started_at.unwrap());
    let waited = training["start_unix_ns"].as_i64().unwrap() - container_start;
    assert!(
        waited >= LEGACY_SLEEP.as_nanos() as i64,
        "training started {waited} ns after its container"
    );
}

#[test]
fn legacy_metrics_reach_the_db_manager() {
    let Some(s) = file_legacy() else { return };
    assert_metrics_reported(s);
}

#[test]
fn legacy_collector_interrupts_pilot_agent() {
    let Some(s) = file_legacy() else { return };
    assert_proxy_interrupted(s);
}

#[test]
fn legacy_pod_finishes_with_every_process() {
    let Some(s) = file_legacy() else { return };
    assert_pod_finished(s, "Succeeded");
}

// Native sidecar, Katib's real file collector: only `-w false`, and the pod must not hang.

#[test]
fn native_sidecar_pod_gets_only_wait_false() {
    let Some(s) = file_native() else { return };
    assert_eq!(
        container(&s.mutated, TRAINING),
        container(&s.original, TRAINING)
    );
    let collector = container(&s.mutated, FILE_COLLECTOR);
    assert_eq!(collector.get("command"), None, "{collector}");
    let (rest, wait) = without_wait_flag(&strings(&collector["args"]));
    assert_eq!(wait, ["false"], "{collector}");
    assert_eq!(
        rest,
        strings(&container(&s.original, FILE_COLLECTOR)["args"])
    );
}

#[test]
fn native_sidecar_pod_finishes_and_reports() {
    let Some(s) = file_native() else { return };
    assert_pod_finished(s, "Succeeded");
    assert_metrics_reported(s);
    assert_native_proxy_stopped_by_kubelet(s, FILE_COLLECTOR);
}

// TF-event collector (`metrics-collector`, python main.py on python:3.11-slim: no curl, no wget).

#[test]
fn tfevent_collector_runs_python_main_py_without_waiting_for_all() {
    let Some(s) = tfevent_modern() else { return };
    let record = s.record("tfevent.jsonl");
    let argv = strings(&record["orig_argv"]);
    assert_eq!(argv[..2], ["python", "main.py"], "{record}");
    let (rest, wait) = without_wait_flag(&argv[2..]);
    assert_eq!(wait, ["false"], "{record}");
    assert_eq!(rest, strings(&container(&s.original, TF_COLLECTOR)["args"]));
    assert_eq!(record["wait_all"], false);
    assert_eq!(record["marker"], "completed", "{record}");
    assert!(
        record["main_process"]
            .as_str()
            .is_some_and(|m| m.contains("echo completed > /var/log/katib/tfevent")),
        "{record}"
    );
}

#[test]
fn tfevent_collector_stops_the_proxy_with_python_only() {
    let Some(s) = tfevent_modern() else { return };
    assert_proxy_quit_over_http(s);
    assert_pod_finished(s, "Succeeded");
}

#[test]
fn tfevent_training_starts_only_after_the_proxy_is_ready() {
    let Some(s) = tfevent_modern() else { return };
    assert_training_waited_for_readiness(s);
}

// Hostile words: arguments and env values reach the programs byte-for-byte, nothing runs.

#[test]
fn hostile_words_arrive_intact_modern() {
    let Some(s) = hostile_modern() else { return };
    assert_nothing_executed(s);
    assert_hostile_words_arrive_intact(s);
}

#[test]
fn hostile_words_arrive_intact_legacy() {
    let Some(s) = hostile_legacy() else { return };
    assert_nothing_executed(s);
    assert_hostile_words_arrive_intact(s);
}

#[test]
fn hostile_words_arrive_intact_native() {
    let Some(s) = hostile_native() else { return };
    assert_nothing_executed(s);
    assert_hostile_words_arrive_intact(s);
}

// The collector's exit code and termination log survive the proxy stop.

#[test]
fn collector_exit_code_and_termination_log_are_kept_modern() {
    let Some(s) = hostile_modern() else { return };
    assert_collector_code_and_message_kept(s);
    assert_proxy_quit_over_http(s);
    assert_pod_finished(s, "Failed");
}

#[test]
fn collector_exit_code_and_termination_log_are_kept_legacy() {
    let Some(s) = hostile_legacy() else { return };
    assert_collector_code_and_message_kept(s);
    assert_proxy_interrupted(s);
    assert_pod_finished(s, "Failed");
}

#[test]
fn collector_exit_code_and_termination_log_are_kept_native() {
    let Some(s) = hostile_native() else { return };
    assert_collector_code_and_message_kept(s);
    assert_native_proxy_stopped_by_kubelet(s, FILE_COLLECTOR);
    assert_pod_finished(s, "Failed");
}
