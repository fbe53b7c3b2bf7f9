//! Behaviour 5: Katib trial pods and the Istio proxy's lifecycle.
//!
//! A trial pod (extension label + a metrics collector container) runs three containers that
//! share a process namespace: the training container, Katib's metrics collector and the Istio
//! proxy. Three things go wrong without help:
//! - the training container may start before the proxy routes traffic, so its first calls fail;
//! - Katib's collector, with its default `-w true`, waits for every top-level process of the pod,
//!   pilot-agent included, with no timeout (Katib issue 1383) — also when the proxy is a native
//!   sidecar, which only stops after the collector;
//! - a classic-sidecar proxy never exits, so the Job never completes.
//!
//! So the collector always runs with `-w false` when a proxy shares the pod; with a classic
//! sidecar the training container first waits for the proxy (unless Istio already holds it) and
//! the collector, once finished, stops the proxy while keeping its own exit code and termination
//! log.
//!
//! User words never become shell text. The kubelet expands `$(NAME)` and `$$` in `command` and
//! `args` after we have written them, so a word quoted into a script could be broken out of by an
//! env value. The scripts are constant (they depend on the configuration only) and contain
//! neither `$(` nor `$$`; the original words follow them as arguments (`sh -c SCRIPT sh WORD...`,
//! run as `"$@"`), so the kubelet expands each word on its own, exactly as without us. Words we
//! add ourselves (configured entrypoints, the termination-log path) have every `$` doubled, so
//! the kubelet hands them over literally. The pod is annotated so a re-invocation never wraps
//! twice.

use super::{Decision, holds_until_proxy_starts};
use crate::{
    config::{Config, ProxyShutdown, ProxyStartup},
    model::{Container, Pod, PodSpec, Str},
};

pub const STARTUP_RULE: &str = "katib-wait-for-proxy";
pub const SHUTDOWN_RULE: &str = "katib-stop-proxy";
pub const NO_WAIT_RULE: &str = "katib-collector-no-wait";
/// Marks a pod whose containers were wrapped; its value lists the wrapped containers.
pub const WRAPPED_ANNOTATION: &str = "tenancy-fixer.kubeflow.org/wrapped";
/// Labels the Job controller puts on its pods, naming the Job.
const JOB_NAME_LABELS: [&str; 2] = ["batch.kubernetes.io/job-name", "job-name"];
/// The collector flag that makes it wait for every process in the pod. Both of Katib's
/// collectors read `-w VALUE` (Go `flag` string flag; Python `argparse` `-w/--wait_all_processes`).
const WAIT_ALL_FLAG: &str = "-w";
/// The Python collector's long name of the same flag (argparse also accepts any unique prefix).
const WAIT_ALL_LONG: &str = "wait_all_processes";
const SHELL: &str = "/bin/sh";
/// `$0` of the wrapper scripts.
const SCRIPT_NAME: &str = "sh";
const DEFAULT_TERMINATION_LOG: &str = "/dev/termination-log";

pub(super) fn wrap_trial_pod(decision: &mut Decision<Pod<'_>>, config: &Config) {
    let settings = &config.settings;
    let Decision {
        object: pod,
        applied,
        skipped,
    } = decision;
    let Some(spec) = &mut pod.spec else { return };
    let collectors = &settings.katib.metrics_collectors;
    let Some(collector) = spec
        .containers
        .iter()
        .position(|c| collectors.contains_key(&*c.name))
    else {
        return;
    };
    if pod.metadata.annotation(WRAPPED_ANNOTATION).is_some() {
        skipped.push("trial pod already wrapped".into());
        return;
    }
    let proxy = &settings.istio.proxy_container;
    let native = proxy_is_native_sidecar(spec, proxy);
    if !native && !spec.containers.iter().any(|c| c.name == *proxy) {
        skipped.push("trial pod has no istio-proxy container".into());
        return;
    }
    let entrypoint = &collectors[&*spec.containers[collector].name];

    if native {
        // The proxy starts before and stops after the application by itself; only the
        // collector must not wait for it.
        let container = &mut spec.containers[collector];
        if container.command.as_ref().is_some_and(|c| !c.is_empty()) {
            skipped.push("collector has its own command: its flags are not Katib's".into());
        } else if !is_katibs_own(container) {
            skipped.push(UNKNOWN_COLLECTOR.into());
        } else {
            let args = without_wait_all(container.args.as_deref().unwrap_or_default());
            if container.args.as_deref() != Some(&args[..]) {
                container.args = Some(args);
                applied.push(NO_WAIT_RULE);
            }
        }
        return;
    }

    let mut wrapped = Vec::new();
    if holds_until_proxy_starts(&pod.metadata) {
        skipped.push("Istio holds the application until the proxy starts".into());
    } else {
        let job_name = JOB_NAME_LABELS
            .iter()
            .find_map(|key| pod.metadata.label(key));
        match training_container(spec, job_name, |c| collectors.contains_key(&*c.name), proxy) {
            None => skipped.push("trial pod has no training container".into()),
            Some(training) => {
                let container = &mut spec.containers[training];
                match original_argv(container) {
                    None => skipped.push(
                        "training container has no command: its image entrypoint is unknown".into(),
                    ),
                    Some(argv) => {
                        run_script(container, wait_then_exec(config), argv);
                        wrapped.push(container.name.to_string());
                        applied.push(STARTUP_RULE);
                    }
                }
            }
        }
    }

    let container = &mut spec.containers[collector];
    match collector_argv(container, entrypoint) {
        None => skipped.push(UNKNOWN_COLLECTOR.into()),
        Some(argv) => {
            let log = container
                .termination_message_path
                .as_deref()
                .filter(|path| !path.is_empty())
                .unwrap_or(DEFAULT_TERMINATION_LOG);
            let mut words = vec![literal(log)];
            words.extend(argv);
            run_script(container, run_then_stop_proxy(config), words);
            wrapped.push(container.name.to_string());
            applied.push(SHUTDOWN_RULE);
        }
    }
    if !wrapped.is_empty() {
        pod.metadata
            .set_annotation(WRAPPED_ANNOTATION, &wrapped.join(","));
    }
}

/// Istio >= 1.27 on Kubernetes >= 1.28 injects the proxy as an init container with
/// `restartPolicy: Always`: it starts before and stops after the application by itself.
fn proxy_is_native_sidecar(spec: &PodSpec<'_>, proxy: &str) -> bool {
    spec.init_containers
        .iter()
        .flatten()
        .any(|c| c.name == proxy && c.restart_policy.as_deref() == Some("Always"))
}

/// The container named after the pod's Job, else the first that is neither collector nor proxy.
fn training_container(
    spec: &PodSpec<'_>,
    job_name: Option<&str>,
    is_collector: impl Fn(&Container) -> bool,
    proxy: &str,
) -> Option<usize> {
    job_name
        .and_then(|name| spec.containers.iter().position(|c| c.name == name))
        .or_else(|| {
            spec.containers
                .iter()
                .position(|c| !is_collector(c) && c.name != proxy)
        })
}

/// The words the container runs, when the pod says (it has a `command`): command, then args.
fn original_argv<'a>(container: &Container<'a>) -> Option<Vec<Str<'a>>> {
    let command = container.command.as_ref().filter(|c| !c.is_empty())?;
    Some(
        command
            .iter()
            .chain(container.args.iter().flatten())
            .cloned()
            .collect(),
    )
}

const UNKNOWN_COLLECTOR: &str =
    "collector gives no command and is not one of Katib's own: its entrypoint is unknown";

/// The collector's words: its own command when it has one (its flags are not Katib's: left
/// alone); for one of Katib's own collectors the image's entrypoint for this container name
/// followed by its args with `-w false`; `None` for any other collector without a command (a
/// Custom collector is named like the TF-event one, but runs an image we do not know).
fn collector_argv<'a>(container: &Container<'a>, entrypoint: &[String]) -> Option<Vec<Str<'a>>> {
    if let Some(argv) = original_argv(container) {
        return Some(argv);
    }
    if !is_katibs_own(container) {
        return None;
    }
    let mut argv: Vec<Str<'a>> = entrypoint.iter().map(|word| literal(word)).collect();
    argv.extend(without_wait_all(
        container.args.as_deref().unwrap_or_default(),
    ));
    Some(argv)
}

/// Katib's pod webhook gives its own collectors the DB manager's address (`-s-db`; `-s` in
/// v1alpha3) and no command; a Custom collector is the user's container as written.
fn is_katibs_own(container: &Container<'_>) -> bool {
    container.args.iter().flatten().any(|word| {
        let flag = word.split_once('=').map_or(&**word, |(flag, _)| flag);
        flag == "-s-db" || flag == "-s"
    })
}

/// The collector's args with `-w false` first and every other spelling of the flag removed, so
/// that no later occurrence overrides it. Both collectors take a value with every flag, so a
/// flag word without `=` consumes the next word; parsing stops at `--`, as both parsers do.
fn without_wait_all<'a>(args: &[Str<'a>]) -> Vec<Str<'a>> {
    let mut out: Vec<Str<'a>> = vec![WAIT_ALL_FLAG.into(), "false".into()];
    let mut words = args.iter();
    while let Some(word) = words.next() {
        if *word == "--" {
            out.push(word.clone());
            out.extend(words.by_ref().cloned());
            break;
        }
        match wait_all_spelling(word) {
            Some(true) => {
                words.next();
            }
            Some(false) => {}
            None => {
                out.push(word.clone());
                if word.starts_with('-') && word.len() > 1 && !word.contains('=') {
                    // The flag's value, whatever it looks like.
                    if let Some(value) = words.next() {
                        out.push(value.clone());
                    }
                }
            }
        }
    }
    out
}

/// Is `word` the wait-all flag? `Some(true)` when its value is the next word, `Some(false)`
/// when the word carries it (`-w=x`, `-wx`, `--wait_all_processes=x`).
fn wait_all_spelling(word: &str) -> Option<bool> {
    if let Some(long) = word.strip_prefix("--") {
        let (name, value) = match long.split_once('=') {
            Some((name, _)) => (name, true),
            None => (long, false),
        };
        // `--w` (Go) or any prefix of the Python collector's long name (argparse abbreviations).
        let matches = name == "w" || (!name.is_empty() && WAIT_ALL_LONG.starts_with(name));
        return matches.then_some(!value);
    }
    let short = word.strip_prefix('-')?;
    match short {
        "w" => Some(true),
        // `-w=x` (Go, argparse) and `-wx` (argparse).
        s if s.starts_with('w') => Some(false),
        _ => None,
    }
}

/// A word of ours that the kubelet must hand over unchanged: `$` doubled.
fn literal<'a>(word: &str) -> Str<'a> {
    word.replace('$', "$$").into()
}

/// The container runs `sh -c SCRIPT sh WORD...`: the constant script with the words as `"$@"`.
fn run_script<'a>(container: &mut Container<'a>, script: String, words: Vec<Str<'a>>) {
    container.command = Some(vec![
        SHELL.into(),
        "-c".into(),
        script.into(),
        SCRIPT_NAME.into(),
    ]);
    container.args = Some(words);
}

// The scripts below are shell text the kubelet also reads: they must contain neither `$(`
// (expanded when an env var of that name exists, and env names may be almost anything) nor
// `$$`. So no `$(...)` command substitution and no `$((...))` arithmetic.

/// `tf_http METHOD URL SECONDS`: one HTTP request with whichever client the image has (curl,
/// busybox wget, python3), each bounded by SECONDS; status 2 when the image has none.
const HTTP_FUNCTION: &str = r#"tf_http() {
  if command -v curl >/dev/null 2>&1; then
    curl -fs -o /dev/null --max-time "$3" -X "$1" "$2" 2>/dev/null
  elif command -v wget >/dev/null 2>&1; then
    if [ "$1" = POST ]; then wget -q -T "$3" -O /dev/null --post-data= "$2" 2>/dev/null
    else wget -q -T "$3" -O /dev/null "$2" 2>/dev/null; fi
  elif command -v python3 >/dev/null 2>&1; then
    python3 -c 'import sys, urllib.request as u
data = b"" if sys.argv[1] == "POST" else None
u.urlopen(u.Request(sys.argv[2], data=data, method=sys.argv[1]), timeout=float(sys.argv[3]))' "$1" "$2" "$3" 2>/dev/null
  else
    return 2
  fi
}
"#;

/// Seconds one readiness probe may take.
const PROBE_SECONDS: u32 = 1;
/// Seconds the request stopping the proxy may take.
const QUIT_SECONDS: u32 = 5;

/// The training container's script: wait for the proxy, or sleep a fixed time on legacy Istio,
/// then `exec` the original words. The wait is bounded in wall-clock seconds by a `sleep`
/// running beside it (no clock arithmetic, which would need `$((...))`, `expr` or `date`
/// that a minimal image may lack): once that timer has ended, the next failed probe gives up.
/// The timer is reaped before the `exec`, so the program inherits no child of ours.
/// Each probe is bounded too, so the whole wait is at most the bound plus one probe and one
/// pause.
fn wait_then_exec(config: &Config) -> String {
    let katib = &config.settings.katib;
    let wait = match config.modes.proxy_startup {
        ProxyStartup::Sleep => format!("sleep {}\n", katib.sleep_seconds),
        ProxyStartup::WaitReady | ProxyStartup::HoldAnnotation => {
            let url = shell_quote(&config.settings.istio.readiness_url);
            let timeout = katib.proxy_startup_timeout_seconds;
            format!(
                "{HTTP_FUNCTION}\
                 sleep {timeout} &\n\
                 tf_timer=$!\n\
                 until tf_http GET {url} {PROBE_SECONDS}; do\n\
                 \x20 if ! kill -0 \"$tf_timer\" 2>/dev/null; then\n\
                 \x20   echo 'tenancy-fixer: istio-proxy not ready after {timeout}s, starting anyway' >&2\n\
                 \x20   break\n\
                 \x20 fi\n\
                 \x20 sleep 1\n\
                 done\n\
                 kill \"$tf_timer\" 2>/dev/null\n\
                 wait \"$tf_timer\" 2>/dev/null\n"
            )
        }
    };
    format!("{wait}exec \"$@\"\n")
}

/// The collector's script (`$1` the termination log, the rest the collector's words): runs the
/// collector, keeps its exit code, stops the proxy, restores the termination log (stopping the
/// proxy must not replace the collector's message) and exits with the code.
fn run_then_stop_proxy(config: &Config) -> String {
    let istio = &config.settings.istio;
    let stop = match config.modes.proxy_shutdown {
        ProxyShutdown::Quitquitquit => format!(
            "{HTTP_FUNCTION}tf_stop() {{ tf_http POST {} {QUIT_SECONDS}; }}\n",
            shell_quote(&istio.quit_url)
        ),
        // Images without pkill (python:3.11-slim) signal through /proc; the pod shares its
        // process namespace, so pilot-agent is visible.
        ProxyShutdown::Pkill => format!(
            "tf_stop() {{\n\
             \x20 if command -v pkill >/dev/null 2>&1; then pkill -INT {name}; return; fi\n\
             \x20 tf_found=1\n\
             \x20 for tf_proc in /proc/[0-9]*; do\n\
             \x20   read -r tf_comm < \"$tf_proc/comm\" 2>/dev/null || continue\n\
             \x20   if [ \"$tf_comm\" = {name} ]; then kill -INT \"${{tf_proc#/proc/}}\" && tf_found=0; fi\n\
             \x20 done\n\
             \x20 return \"$tf_found\"\n\
             }}\n",
            name = shell_quote(&istio.pilot_agent_process)
        ),
    };
    format!(
        "{stop}\
         tf_log=\"$1\"\n\
         shift\n\
         \"$@\"\n\
         tf_code=$?\n\
         tf_saved=\"${{TMPDIR:-/tmp}}/tenancy-fixer-termination-log\"\n\
         cp \"$tf_log\" \"$tf_saved\" 2>/dev/null\n\
         tf_stop 2>/dev/null || echo 'tenancy-fixer: could not stop istio-proxy' >&2\n\
         if [ -f \"$tf_saved\" ]; then cat \"$tf_saved\" > \"$tf_log\" 2>/dev/null; rm -f \"$tf_saved\"; fi\n\
         exit \"$tf_code\"\n"
    )
}

/// Quotes a configured word for a POSIX shell: single quotes, with `'` written as `'\''`.
/// (Configuration only: user words are never quoted into a script.)
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        io::{Read, Write},
        net::TcpListener,
        path::{Path, PathBuf},
        process::{Command, Output},
        sync::mpsc,
        thread,
        time::{Duration, Instant},
    };

    use super::*;
    use crate::{
        model::{InitContainer, ObjectMeta, OwnerReference},
        policy::mutate_pod,
        testing::config,
    };

    /// Words a shell would love to interpret.
    const NASTY: [&str; 10] = [
        "it's",
        "$(touch /tmp/tf-pwned)",
        "a  b",
        "\"dq\"",
        "line\nbreak",
        "`touch /tmp/tf-pwned`",
        "*",
        "",
        "; exit 7",
        "'; touch /tmp/tf-pwned; '",
    ];

    fn words<'a>(words: &[&'a str]) -> Vec<Str<'a>> {
        words.iter().map(|&w| w.into()).collect()
    }

    fn container<'a>(
        name: &'a str,
        command: Option<&[&'a str]>,
        args: &[&'a str],
    ) -> Container<'a> {
        Container {
            name: name.into(),
            command: command.map(words),
            args: (!args.is_empty()).then(|| words(args)),
            ..Default::default()
        }
    }

    fn trial_pod<'a>(training: Container<'a>, collector: Container<'a>) -> Pod<'a> {
        Pod {
            metadata: ObjectMeta {
                name: Some("trial-1-abcde".into()),
                labels: Some(
                    [("kubeflow-extension", "true"), ("job-name", "trial-1")]
                        .map(|(k, v)| (k.into(), v.into()))
                        .into(),
                ),
                owner_references: Some(vec![OwnerReference {
                    api_version: "batch/v1".into(),
                    kind: "Job".into(),
                    name: "trial-1".into(),
                    controller: Some(true),
                }]),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![
                    training,
                    collector,
                    container("istio-proxy", None, &["proxy"]),
                ],
                ..Default::default()
            }),
        }
    }

    const COLLECTOR_ARGS: [&str; 10] = [
        "-t",
        "trial-1",
        "-m",
        "accuracy",
        "-s-db",
        "katib-db-manager.kubeflow:6789",
        "-w",
        "true",
        "-path",
        "/var/log/katib/metrics.log",
    ];

    fn katib_pod() -> Pod<'static> {
        trial_pod(
            container(
                "training-container",
                Some(&["python3", "/opt/train.py"]),
                &["--lr", "0.1"],
            ),
            container("metrics-logger-and-collector", None, &COLLECTOR_ARGS),
        )
    }

    /// The same pod with istio-proxy injected as a native sidecar.
    fn native_sidecar(mut pod: Pod<'static>) -> Pod<'static> {
        let spec = pod.spec.as_mut().unwrap();
        spec.containers.pop();
        spec.init_containers = Some(vec![InitContainer {
            name: "istio-proxy".into(),
            restart_policy: Some("Always".into()),
        }]);
        pod
    }

    fn wrapped<'a>(pod: &Pod<'a>, config: &Config) -> Decision<Pod<'a>> {
        let job_controller = "system:serviceaccount:kube-system:job-controller";
        mutate_pod(pod, "alice", Some(job_controller), config)
    }

    fn containers<'p>(pod: &'p Pod) -> &'p [Container<'p>] {
        &pod.spec.as_ref().unwrap().containers
    }

    /// The script of a wrapped container (it must be `sh -c SCRIPT sh`) and its words.
    fn script<'p>(pod: &'p Pod, index: usize) -> (&'p str, Vec<&'p str>) {
        let c = &containers(pod)[index];
        let command = c.command.as_ref().unwrap();
        assert_eq!(command.len(), 4, "{command:?}");
        assert_eq!(
            [&*command[0], &*command[1], &*command[3]],
            ["/bin/sh", "-c", "sh"]
        );
        let args = c.args.iter().flatten().map(|w| &**w).collect();
        (&command[2], args)
    }

    const WAIT_READY: &str = "kfpAccess: header\nkatib:\n  proxyStartup: wait-ready\n";

    #[test]
    fn trial_pod_training_waits_and_collector_stops_the_proxy() {
        let d = wrapped(&katib_pod(), &config(WAIT_READY));
        assert_eq!(d.applied, vec![STARTUP_RULE, SHUTDOWN_RULE]);
        let pod = &d.object;
        assert_eq!(
            pod.metadata.annotation(WRAPPED_ANNOTATION),
            Some("training-container,metrics-logger-and-collector")
        );
        let (training, argv) = script(pod, 0);
        assert!(
            training.contains("'http://127.0.0.1:15021/healthz/ready'"),
            "{training}"
        );
        assert!(training.contains("sleep 60 &\n"), "{training}");
        assert!(training.ends_with("exec \"$@\"\n"), "{training}");
        assert_eq!(argv, ["python3", "/opt/train.py", "--lr", "0.1"]);
        let (collector, argv) = script(pod, 1);
        assert_eq!(
            argv,
            [
                "/dev/termination-log",
                "./file-metricscollector",
                "-w",
                "false",
                "-t",
                "trial-1",
                "-m",
                "accuracy",
                "-s-db",
                "katib-db-manager.kubeflow:6789",
                "-path",
                "/var/log/katib/metrics.log"
            ]
        );
        assert!(
            collector.contains("POST 'http://127.0.0.1:15020/quitquitquit'"),
            "{collector}"
        );
        assert_eq!(containers(pod)[2], containers(&katib_pod())[2]);
    }

    #[test]
    fn scripts_are_the_same_whatever_the_pod_says() {
        let c = config(WAIT_READY);
        let mut other = trial_pod(
            container("train", Some(&["sh", "-c"]), &NASTY),
            container("metrics-logger-and-collector", None, &{
                let mut args = vec!["-s-db", "db:1"];
                args.extend(NASTY);
                args
            }),
        );
        other.spec.as_mut().unwrap().containers[1].termination_message_path =
            Some("/tmp/$(X)'log".into());
        let (a, b) = (wrapped(&katib_pod(), &c).object, wrapped(&other, &c).object);
        assert_eq!(script(&a, 0).0, script(&b, 0).0);
        assert_eq!(script(&a, 1).0, script(&b, 1).0);
    }

    #[test]
    fn tf_event_collector_runs_its_own_entrypoint() {
        let pod = trial_pod(
            container("training-container", Some(&["python3", "train.py"]), &[]),
            container(
                "metrics-collector",
                None,
                &[
                    "-t",
                    "trial-1",
                    "-s-db",
                    "db:6789",
                    "-path",
                    "/var/log/katib/tfevent/",
                ],
            ),
        );
        let d = wrapped(&pod, &config(WAIT_READY));
        let (_, argv) = script(&d.object, 1);
        assert_eq!(
            argv,
            [
                "/dev/termination-log",
                "python",
                "main.py",
                "-w",
                "false",
                "-t",
                "trial-1",
                "-s-db",
                "db:6789",
                "-path",
                "/var/log/katib/tfevent/"
            ]
        );
    }

    #[test]
    fn collector_entrypoints_are_configurable_per_container() {
        let c = config("kfpAccess: header\nkatib:\n  metricsCollectors:\n    mc: [/bin/mc, --x]\n");
        let pod = trial_pod(
            container("training-container", Some(&["true"]), &[]),
            container("mc", None, &["-s-db", "db:1"]),
        );
        let d = wrapped(&pod, &c);
        assert_eq!(
            script(&d.object, 1).1,
            [
                "/dev/termination-log",
                "/bin/mc",
                "--x",
                "-w",
                "false",
                "-s-db",
                "db:1"
            ]
        );
        // A container named after a default collector is not one under this configuration.
        assert!(!wrapped(&katib_pod(), &c).changed());
    }

    #[test]
    fn every_spelling_of_the_wait_flag_gives_way_to_false() {
        let cases: [(&[&str], &[&str]); 9] = [
            (&["-w", "true", "-t", "x"], &["-t", "x"]),
            (&["--w", "true"], &[]),
            (&["-w=true", "-m", "-w"], &["-m", "-w"]),
            (&["--w=true"], &[]),
            (&["-wtrue"], &[]),
            (&["--wait_all_processes", "True"], &[]),
            (&["--wait=true", "--wait_all", "1"], &[]),
            // Values are not flags; `--` ends the flags.
            (&["-t", "-w", "-p", "1s"], &["-t", "-w", "-p", "1s"]),
            (&["--", "-w", "true"], &["--", "-w", "true"]),
        ];
        for (args, kept) in cases {
            let mut expected = vec!["-w", "false"];
            expected.extend(kept);
            let got = without_wait_all(&words(args));
            assert_eq!(got, words(&expected), "{args:?}");
            // Applying it again changes nothing.
            assert_eq!(without_wait_all(&got), got, "{args:?}");
        }
        // Other flags of both collectors are no spelling of it.
        for word in [
            "-t",
            "--timeout",
            "-s-db",
            "--trial_name",
            "-",
            "--",
            "--x=1",
        ] {
            assert_eq!(wait_all_spelling(word), None, "{word}");
        }
    }

    #[test]
    fn legacy_modes_sleep_and_pkill() {
        let c = config(
            "kfpAccess: header\nkatib:\n  proxyStartup: sleep\n  sleepSeconds: 12\n  proxyShutdown: pkill\n",
        );
        let d = wrapped(&katib_pod(), &c);
        assert_eq!(script(&d.object, 0).0, "sleep 12\nexec \"$@\"\n");
        assert!(script(&d.object, 1).0.contains("pkill -INT 'pilot-agent'"));
    }

    #[test]
    fn hold_annotation_leaves_the_training_container_alone() {
        let mut pod = katib_pod();
        pod.metadata.set_annotation(
            "proxy.istio.io/config",
            "holdApplicationUntilProxyStarts: true\n",
        );
        let d = wrapped(&pod, &config("kfpAccess: header"));
        assert_eq!(d.applied, vec![SHUTDOWN_RULE]);
        assert_eq!(containers(&d.object)[0], containers(&pod)[0]);
    }

    #[test]
    fn native_sidecar_proxy_only_stops_the_collector_waiting() {
        let pod = native_sidecar(katib_pod());
        let d = wrapped(&pod, &config(WAIT_READY));
        assert_eq!(d.applied, vec![NO_WAIT_RULE]);
        let (training, collector) = (&containers(&d.object)[0], &containers(&d.object)[1]);
        assert_eq!(training, &containers(&pod)[0]);
        assert_eq!(collector.command, None);
        assert_eq!(
            collector.args.as_deref().unwrap(),
            words(&[
                "-w",
                "false",
                "-t",
                "trial-1",
                "-m",
                "accuracy",
                "-s-db",
                "katib-db-manager.kubeflow:6789",
                "-path",
                "/var/log/katib/metrics.log"
            ])
        );
        assert_eq!(d.object.metadata.annotation(WRAPPED_ANNOTATION), None);
        let again = wrapped(&d.object, &config(WAIT_READY));
        assert!(!again.changed(), "{:?}", again.applied);
    }

    #[test]
    fn native_sidecar_collector_with_own_command_is_left_alone() {
        let pod = native_sidecar(trial_pod(
            container("training-container", Some(&["true"]), &[]),
            container("metrics-collector", Some(&["/mc"]), &["-w", "true"]),
        ));
        let d = wrapped(&pod, &config(WAIT_READY));
        assert!(!d.changed());
        assert_eq!(d.object, pod);
    }

    #[test]
    fn pod_without_collector_or_proxy_is_not_wrapped() {
        let mut no_collector = katib_pod();
        no_collector.spec.as_mut().unwrap().containers.remove(1);
        let mut no_proxy = katib_pod();
        no_proxy.spec.as_mut().unwrap().containers.pop();
        for pod in [no_collector, no_proxy] {
            let d = wrapped(&pod, &config("kfpAccess: header"));
            assert!(!d.changed(), "{:?}", d.applied);
            assert_eq!(d.object, pod);
        }
    }

    #[test]
    fn training_without_command_keeps_its_entrypoint() {
        let pod = trial_pod(
            container("training-container", None, &["--epochs", "3"]),
            container("metrics-collector", None, &["-s-db", "db:6789"]),
        );
        let d = wrapped(&pod, &config(WAIT_READY));
        assert_eq!(d.applied, vec![SHUTDOWN_RULE]);
        assert_eq!(containers(&d.object)[0], containers(&pod)[0]);
        assert!(
            d.skipped.iter().any(|s| s.contains("no command")),
            "{:?}",
            d.skipped
        );
    }

    #[test]
    fn container_named_after_the_job_is_the_training_container() {
        let mut pod = katib_pod();
        let spec = pod.spec.as_mut().unwrap();
        spec.containers
            .insert(0, container("helper", Some(&["sleep"]), &["1"]));
        spec.containers[1].name = "trial-1".into();
        let d = wrapped(&pod, &config(WAIT_READY));
        let containers = containers(&d.object);
        assert_eq!(containers[0], container("helper", Some(&["sleep"]), &["1"]));
        assert_eq!(script(&d.object, 1).1[0], "python3");
    }

    #[test]
    fn wrapping_twice_changes_nothing() {
        for yaml in [WAIT_READY, "kfpAccess: token"] {
            let c = config(yaml);
            let once = wrapped(&katib_pod(), &c).object;
            let twice = wrapped(&once, &c);
            assert!(!twice.changed(), "{:?}", twice.applied);
            assert_eq!(twice.object, once);
        }
    }

    #[test]
    fn scripts_hold_nothing_the_kubelet_expands() {
        for yaml in [
            WAIT_READY,
            "kfpAccess: header\nkatib:\n  proxyStartup: sleep\n  proxyShutdown: pkill\n",
        ] {
            let d = wrapped(&katib_pod(), &config(yaml));
            for index in [0, 1] {
                let (script, _) = script(&d.object, index);
                assert!(!script.contains("$$"), "{script}");
                assert!(!script.contains("$("), "{script}");
            }
        }
    }

    /// The kubelet's expansion of `$(NAME)` and `$$` in command and args
    /// (k8s.io/kubernetes third_party/forked/golang/expansion): `$$` is a literal `$`, `$(NAME)`
    /// is the value of NAME when it is defined and stays as written otherwise.
    fn kubelet_expand(word: &str, env: &BTreeMap<&str, &str>) -> String {
        let mut out = String::new();
        let mut rest = word;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                out.push('$');
                rest = tail;
            } else if let Some(inner) = after.strip_prefix('(') {
                match inner.find(')') {
                    Some(end) => {
                        let name = &inner[..end];
                        match env.get(name) {
                            Some(value) => out.push_str(value),
                            None => out.push_str(&format!("$({name})")),
                        }
                        rest = &inner[end + 1..];
                    }
                    None => {
                        out.push_str("$(");
                        rest = inner;
                    }
                }
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
        out
    }

    #[test]
    fn kubelet_expansion_follows_upstream() {
        let env = BTreeMap::from([("A", "x"), ("(tf_left - 1", "boom")]);
        for (word, expected) in [
            ("$(A)", "x"),
            ("$$(A)", "$(A)"),
            ("$$$(A)", "$x"),
            ("$(B)", "$(B)"),
            ("a$b", "a$b"),
            ("$((tf_left - 1))", "boom)"),
            ("$(", "$("),
        ] {
            assert_eq!(kubelet_expand(word, &env), expected, "{word}");
        }
    }

    /// Runs a container as the kubelet would: command and args expanded with `env`, in `dir`.
    fn run_as_kubelet(container: &Container, env: &[(&str, &str)], dir: &Path) -> Output {
        let vars: BTreeMap<&str, &str> = env.iter().copied().collect();
        let argv: Vec<String> = container
            .command
            .iter()
            .flatten()
            .chain(container.args.iter().flatten())
            .map(|w| kubelet_expand(w, &vars))
            .collect();
        Command::new(&argv[0])
            .args(&argv[1..])
            .envs(env.iter().copied())
            .env("TMPDIR", dir)
            .current_dir(dir)
            .output()
            .unwrap()
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tf-katib-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const QUICK_MODES: [&str; 2] = [
        "kfpAccess: header\nkatib:\n  proxyStartup: sleep\n  sleepSeconds: 0\n",
        // Nothing listens there: the wait gives up after the bound and starts anyway.
        "kfpAccess: header\nkatib:\n  proxyStartup: wait-ready\n  proxyStartupTimeoutSeconds: 1\nistio:\n  readinessUrl: http://127.0.0.1:9/never\n",
    ];

    #[test]
    fn hostile_words_and_env_reach_the_program_byte_for_byte() {
        let dir = scratch("words");
        let pwned = dir.join("pwned");
        let pwned = pwned.to_str().unwrap();
        let evil = format!("x'$(touch {pwned})'y");
        let backquote = format!("`touch {pwned}`");
        let env = [("MYVAR", evil.as_str()), ("OTHER", backquote.as_str())];
        let mut args = vec![
            "%s\\0",
            "$(MYVAR)",
            "$(OTHER)",
            "$$(MYVAR)",
            "$$",
            "$(UNSET)",
        ];
        args.extend(NASTY);
        let expected: Vec<u8> = [evil.as_str(), &backquote, "$(MYVAR)", "$", "$(UNSET)"]
            .into_iter()
            .chain(NASTY)
            .flat_map(|a| a.bytes().chain([0]))
            .collect();
        for yaml in QUICK_MODES {
            let pod = trial_pod(
                container("training-container", Some(&["printf"]), &args),
                container("metrics-collector", Some(&["printf"]), &args),
            );
            let d = wrapped(&pod, &config(yaml));
            for index in [0, 1] {
                let out = run_as_kubelet(&containers(&d.object)[index], &env, &dir);
                assert_eq!(
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&expected),
                    "{yaml} container {index}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            assert!(!Path::new(pwned).exists(), "{yaml}: a word was executed");
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    /// An HTTP server answering each request with `status` after `ready_after` (connections are
    /// refused before); sends each request line back.
    fn http_server(
        status: &'static str,
        ready_after: Duration,
        on_request: impl Fn() + Send + 'static,
    ) -> (String, mpsc::Receiver<String>) {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            thread::sleep(ready_after);
            let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut buf = [0u8; 4096];
                let n = stream.read(&mut buf).unwrap_or(0);
                let line = String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                on_request();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        (url, rx)
    }

    fn training_pod() -> Pod<'static> {
        trial_pod(
            container("training-container", Some(&["echo"]), &["trained"]),
            container("metrics-collector", None, &["-s-db", "db:6789"]),
        )
    }

    #[test]
    fn custom_collector_without_command_is_not_guessed() {
        // Katib names a Custom collector `metrics-collector` too, as the user wrote it: no
        // `-s-db`, image unknown.
        let custom = container("metrics-collector", None, &["--my-flag", "1"]);
        let pod = trial_pod(
            container("training-container", Some(&["true"]), &[]),
            custom,
        );
        let d = wrapped(&pod, &config(WAIT_READY));
        assert_eq!(d.applied, vec![STARTUP_RULE]);
        assert_eq!(containers(&d.object)[1], containers(&pod)[1]);
        assert_eq!(
            d.object.metadata.annotation(WRAPPED_ANNOTATION),
            Some("training-container")
        );
        assert!(
            d.skipped.iter().any(|s| s == UNKNOWN_COLLECTOR),
            "{:?}",
            d.skipped
        );
        let native = wrapped(&native_sidecar(pod.clone()), &config(WAIT_READY));
        assert!(!native.changed());
        // Katib's own, in either generation of its flags, is recognised.
        for flag in ["-s-db", "-s", "-s-db=db:1"] {
            let own = container("metrics-collector", None, &[flag, "db:1"]);
            assert!(is_katibs_own(&own), "{flag}");
        }
    }

    #[test]
    fn training_starts_once_the_proxy_is_ready() {
        let (url, requests) = http_server("200 OK", Duration::ZERO, || {});
        let yaml = format!(
            "kfpAccess: header\nkatib:\n  proxyStartup: wait-ready\n  proxyStartupTimeoutSeconds: 30\nistio:\n  readinessUrl: {url}/healthz/ready\n"
        );
        let d = wrapped(&training_pod(), &config(&yaml));
        let dir = scratch("ready");
        let out = run_as_kubelet(&containers(&d.object)[0], &[], &dir);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "trained\n");
        assert!(requests.recv().unwrap().starts_with("GET /healthz/ready"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn readiness_wait_counts_seconds_not_attempts() {
        // Ready after 2.2 s with a 3 s bound: the training waits for it.
        let (url, _requests) = http_server("200 OK", Duration::from_millis(2200), || {});
        let yaml = format!(
            "kfpAccess: header\nkatib:\n  proxyStartup: wait-ready\n  proxyStartupTimeoutSeconds: 3\nistio:\n  readinessUrl: {url}/healthz/ready\n"
        );
        let d = wrapped(&training_pod(), &config(&yaml));
        let dir = scratch("seconds");
        let start = Instant::now();
        let out = run_as_kubelet(&containers(&d.object)[0], &[], &dir);
        let took = start.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("not ready"),
            "gave up after {took:?}: {stderr}"
        );
        assert!(took >= Duration::from_millis(2200), "{took:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "trained\n");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn readiness_wait_needs_only_sh_and_sleep_and_is_bounded_without_a_client() {
        let (url, _requests) = http_server("200 OK", Duration::from_millis(1200), || {});
        for (client, bound, ready) in [(Some("wget"), 5, true), (None, 2, false)] {
            let yaml = format!(
                "kfpAccess: header\nkatib:\n  proxyStartup: wait-ready\n  proxyStartupTimeoutSeconds: {bound}\nistio:\n  readinessUrl: {url}/healthz/ready\n"
            );
            let d = wrapped(&training_pod(), &config(&yaml));
            let dir = scratch(&format!("minimal-{ready}"));
            let mut tools = vec!["sh", "sleep", "echo"];
            tools.extend(client);
            let path = path_with_only(&dir, &tools);
            let start = Instant::now();
            let out = run_as_kubelet(&containers(&d.object)[0], &[("PATH", &path)], &dir);
            let took = start.elapsed();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "trained\n",
                "{client:?}: {stderr}"
            );
            assert_eq!(!stderr.contains("not ready"), ready, "{client:?}: {stderr}");
            if ready {
                assert!(took >= Duration::from_millis(1200), "{took:?}");
            } else {
                let most = Duration::from_millis((bound + 1) * 1000 + 800);
                assert!(
                    took >= Duration::from_secs(bound) && took <= most,
                    "{took:?}"
                );
            }
            std::fs::remove_dir_all(&dir).ok();
        }
    }

    #[test]
    fn readiness_wait_is_bounded_against_a_port_that_hangs() {
        // Accepts connections and never answers.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/healthz/ready", listener.local_addr().unwrap());
        thread::spawn(move || {
            let held: Vec<_> = listener.incoming().take(64).collect();
            thread::sleep(Duration::from_secs(60));
            drop(held);
        });
        let yaml = format!(
            "kfpAccess: header\nkatib:\n  proxyStartup: wait-ready\n  proxyStartupTimeoutSeconds: 2\nistio:\n  readinessUrl: {url}\n"
        );
        let d = wrapped(&training_pod(), &config(&yaml));
        let dir = scratch("hang");
        let start = Instant::now();
        let out = run_as_kubelet(&containers(&d.object)[0], &[], &dir);
        let took = start.elapsed();
        assert!(String::from_utf8_lossy(&out.stderr).contains("not ready after 2s"));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "trained\n");
        // At least the bound; at most the bound, one probe and one pause, and some slack for a
        // busy machine.
        let most = Duration::from_millis((2 + u64::from(PROBE_SECONDS) + 1) * 1000 + 800);
        assert!(took >= Duration::from_secs(2) && took <= most, "{took:?}");
        std::fs::remove_dir_all(&dir).ok();
    }

    fn collector_pod(log: &Path, code: i32) -> Pod<'static> {
        let body = format!(
            "printf 'collector says %s' \"$1\" > '{}'; exit {code}",
            log.display()
        );
        let mut collector = container("metrics-collector", None, &["it's done"]);
        collector.command = Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            body.into(),
            "sh".into(),
        ]);
        collector.termination_message_path = Some(log.display().to_string().into());
        trial_pod(
            container("training-container", Some(&["true"]), &[]),
            collector,
        )
    }

    #[test]
    fn collector_keeps_exit_code_and_log_and_quits_the_proxy() {
        let dir = scratch("quit");
        let log = dir.join("termination-log");
        let clobber = log.clone();
        // The proxy's shutdown overwrites the termination log, as the prototype saw.
        let (url, requests) = http_server("200 OK", Duration::ZERO, move || {
            std::fs::write(&clobber, "proxy was here").unwrap()
        });
        let yaml = format!("kfpAccess: header\nistio:\n  quitUrl: {url}/quitquitquit\n");
        let d = wrapped(&collector_pod(&log, 3), &config(&yaml));
        let out = run_as_kubelet(&containers(&d.object)[1], &[], &dir);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(requests.recv().unwrap().starts_with("POST /quitquitquit"));
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "collector says it's done"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    /// A PATH holding only `tools` (linked from the machine's own), as in an image without them.
    fn path_with_only(dir: &Path, tools: &[&str]) -> String {
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for tool in tools {
            let found = if *tool == "python3" {
                // The real interpreter, not a version manager's shim.
                let out = Command::new("python3")
                    .args(["-c", "import sys; print(sys.executable)"])
                    .output()
                    .expect("python3");
                String::from_utf8(out.stdout).unwrap().trim().to_string()
            } else {
                // The program on the host's PATH (`command -v` would name a shell builtin,
                // such as `echo`, by its bare name).
                std::env::var("PATH")
                    .unwrap_or_default()
                    .split(':')
                    .map(|dir| Path::new(dir).join(tool))
                    .find(|candidate| candidate.is_file())
                    .map(|found| found.display().to_string())
                    .unwrap_or_default()
            };
            assert!(!found.is_empty(), "{tool} is needed by this test");
            std::os::unix::fs::symlink(found, bin.join(tool)).unwrap();
        }
        bin.display().to_string()
    }

    #[test]
    fn proxy_is_stopped_with_whichever_client_the_image_has() {
        // python:3.11-slim (TF-event collector) has python3 but neither curl nor wget; the
        // alpine image of the file collector has busybox wget.
        for client in ["python3", "wget", "curl"] {
            let dir = scratch(&format!("client-{client}"));
            let log = dir.join("termination-log");
            let (url, requests) = http_server("200 OK", Duration::ZERO, || {});
            let yaml = format!("kfpAccess: header\nistio:\n  quitUrl: {url}/quitquitquit\n");
            let d = wrapped(&collector_pod(&log, 0), &config(&yaml));
            let path = path_with_only(&dir, &["sh", "printf", "cp", "cat", "rm", client]);
            let out = run_as_kubelet(&containers(&d.object)[1], &[("PATH", &path)], &dir);
            assert_eq!(out.status.code(), Some(0), "{client}");
            let line = requests.recv_timeout(Duration::from_secs(10));
            assert!(
                line.as_deref()
                    .is_ok_and(|l| l.starts_with("POST /quitquitquit")),
                "{client}: {line:?} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::remove_dir_all(&dir).ok();
        }
    }

    #[test]
    fn collector_success_is_kept_when_the_proxy_is_already_gone() {
        let dir = scratch("gone");
        let log = dir.join("termination-log");
        let yaml = "kfpAccess: header\nistio:\n  quitUrl: http://127.0.0.1:9/quitquitquit\n";
        let d = wrapped(&collector_pod(&log, 0), &config(yaml));
        let out = run_as_kubelet(&containers(&d.object)[1], &[], &dir);
        assert_eq!(out.status.code(), Some(0));
        assert!(String::from_utf8_lossy(&out.stderr).contains("could not stop istio-proxy"));
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "collector says it's done"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn pkill_mode_interrupts_pilot_agent_with_or_without_pkill() {
        for tools in [
            &["sh", "printf", "cp", "cat", "rm", "pkill"][..],
            &["sh", "printf", "cp", "cat", "rm"],
        ] {
            let dir = scratch(&format!("pkill-{}", tools.len()));
            // A stand-in pilot-agent: `sleep` under a unique process name.
            let name = format!("tfpa{}{}", tools.len(), std::process::id() % 10_000);
            let agent_path = dir.join(&name);
            std::fs::copy("/bin/sleep", &agent_path).unwrap();
            let mut agent = Command::new(&agent_path).arg("60").spawn().unwrap();
            let log = dir.join("termination-log");
            let yaml = format!(
                "kfpAccess: header\nkatib:\n  proxyShutdown: pkill\nistio:\n  pilotAgentProcess: {name}\n"
            );
            let d = wrapped(&collector_pod(&log, 5), &config(&yaml));
            let path = path_with_only(&dir, tools);
            let out = run_as_kubelet(&containers(&d.object)[1], &[("PATH", &path)], &dir);
            assert_eq!(out.status.code(), Some(5), "{tools:?}");
            let status = agent.wait().unwrap();
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                status.signal(),
                Some(2),
                "{tools:?}: pilot-agent got SIGINT"
            );
            std::fs::remove_dir_all(&dir).ok();
        }
    }
}
