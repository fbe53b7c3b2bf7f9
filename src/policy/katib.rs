//! Behaviour 5: Katib trial pods and the Istio proxy's lifecycle.
//!
//! A trial pod (extension label + a metrics collector container) runs three containers that
//! share a process namespace: the training container, Katib's metrics collector and the Istio
//! proxy. Two things go wrong without help:
//! - the training container may start before the proxy routes traffic, so its first calls fail;
//! - the proxy never exits, so the Job never completes.
//!
//! So the training container first waits for the proxy (unless Istio already holds it, or the
//! proxy is a native sidecar), and the collector, once finished, stops the proxy while keeping
//! its own exit code and termination log. Every original argument is shell-quoted: arguments
//! are user data, never shell code. The pod is annotated so a re-invocation never wraps twice.

use super::{Decision, holds_until_proxy_starts};
use crate::{
    config::{Config, ProxyShutdown, ProxyStartup},
    model::{Container, Pod, PodSpec},
};

pub const STARTUP_RULE: &str = "katib-wait-for-proxy";
pub const SHUTDOWN_RULE: &str = "katib-stop-proxy";
/// Marks a pod whose containers were wrapped; its value lists the wrapped containers.
pub const WRAPPED_ANNOTATION: &str = "tenancy-fixer.kubeflow.org/wrapped";
/// Labels the Job controller puts on its pods, naming the Job.
const JOB_NAME_LABELS: [&str; 2] = ["batch.kubernetes.io/job-name", "job-name"];
/// The collector flag that makes it wait for every process in the pod, pilot-agent included
/// (Katib issue 1383: trials that never finish). Passed as two words so both Katib's Go
/// (`flag`) and Python (`argparse`) collectors read it.
const WAIT_ALL_FLAG: &str = "-w";
const SHELL: &str = "/bin/sh";
const DEFAULT_TERMINATION_LOG: &str = "/dev/termination-log";

pub(super) fn wrap_trial_pod(decision: &mut Decision<Pod<'_>>, config: &Config) {
    let settings = &config.settings;
    let Decision {
        object: pod,
        applied,
        skipped,
    } = decision;
    let Some(spec) = &mut pod.spec else { return };
    let is_collector = |c: &Container| {
        settings
            .katib
            .metrics_collector_containers
            .iter()
            .any(|name| c.name == *name)
    };
    let Some(collector) = spec.containers.iter().position(is_collector) else {
        return;
    };
    if pod.metadata.annotation(WRAPPED_ANNOTATION).is_some() {
        skipped.push("trial pod already wrapped".into());
        return;
    }
    if proxy_is_native_sidecar(spec, &settings.istio.proxy_container) {
        skipped.push("istio-proxy is a native sidecar: nothing to wrap".into());
        return;
    }
    if !spec
        .containers
        .iter()
        .any(|c| c.name == settings.istio.proxy_container)
    {
        skipped.push("trial pod has no istio-proxy container".into());
        return;
    }

    let mut wrapped = Vec::new();
    if holds_until_proxy_starts(&pod.metadata) {
        skipped.push("Istio holds the application until the proxy starts".into());
    } else {
        let job_name = JOB_NAME_LABELS
            .iter()
            .find_map(|key| pod.metadata.label(key));
        match training_container(
            spec,
            job_name,
            &is_collector,
            &settings.istio.proxy_container,
        ) {
            None => skipped.push("trial pod has no training container".into()),
            Some(training) => {
                let container = &mut spec.containers[training];
                match original_argv(container) {
                    None => skipped.push(
                        "training container has no command: its image entrypoint is unknown".into(),
                    ),
                    Some(argv) => {
                        let script =
                            format!("{}exec {}\n", wait_for_proxy(config), join_quoted(&argv));
                        run_script(container, script);
                        wrapped.push(container.name.clone());
                        applied.push(STARTUP_RULE);
                    }
                }
            }
        }
    }

    let container = &mut spec.containers[collector];
    let argv = collector_argv(container, &settings.katib.metrics_collector_entrypoint);
    let log = container
        .termination_message_path
        .as_deref()
        .unwrap_or(DEFAULT_TERMINATION_LOG);
    let script = run_then_stop_proxy(&argv, log, config);
    run_script(container, script);
    wrapped.push(container.name.clone());
    applied.push(SHUTDOWN_RULE);

    pod.metadata
        .set_annotation(WRAPPED_ANNOTATION, &wrapped.join(","));
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
    is_collector: &impl Fn(&Container) -> bool,
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

/// The program and arguments the container runs, when the pod says (it has a `command`).
fn original_argv<'c>(container: &'c Container) -> Option<Vec<&'c str>> {
    let command = container.command.as_ref().filter(|c| !c.is_empty())?;
    Some(
        command
            .iter()
            .chain(container.args.iter().flatten())
            .map(|word| &**word)
            .collect(),
    )
}

/// The collector's program and arguments, with `-w false` when it runs Katib's own entrypoint.
fn collector_argv<'c>(container: &'c Container, entrypoint: &'c str) -> Vec<&'c str> {
    if let Some(argv) = original_argv(container) {
        // A custom command: its flags are not Katib's, leave them alone.
        return argv;
    }
    let mut argv = vec![entrypoint, WAIT_ALL_FLAG, "false"];
    let mut args = container.args.iter().flatten().map(|arg| &**arg);
    while let Some(arg) = args.next() {
        match arg {
            "-w" | "--w" => {
                args.next();
            }
            a if a.starts_with("-w=") || a.starts_with("--w=") => {}
            _ => argv.push(arg),
        }
    }
    argv
}

fn run_script(container: &mut Container, script: String) {
    container.command = Some(vec![SHELL.into(), "-c".into(), script.into()]);
    container.args = None;
}

// The kubelet expands `$(NAME)` and turns `$$` into `$` in command and args, so the scripts
// below use neither (`$((...))` is arithmetic, which it leaves alone).

/// Shell lines that return once the proxy is ready (bounded), or after a fixed sleep.
fn wait_for_proxy(config: &Config) -> String {
    let katib = &config.settings.katib;
    match config.modes.proxy_startup {
        ProxyStartup::Sleep => format!("sleep {}\n", katib.sleep_seconds),
        ProxyStartup::WaitReady | ProxyStartup::HoldAnnotation => {
            let url = shell_quote(&config.settings.istio.readiness_url);
            let timeout = katib.proxy_startup_timeout_seconds;
            format!(
                "tf_ready() {{ curl -fs -o /dev/null --max-time 2 \"$1\" 2>/dev/null || wget -q -T 2 -O /dev/null \"$1\" 2>/dev/null || python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \"$1\" 2>/dev/null; }}\n\
                 tf_left={timeout}\n\
                 until tf_ready {url}; do\n\
                 \x20 tf_left=$((tf_left - 1))\n\
                 \x20 if [ \"$tf_left\" -le 0 ]; then echo 'tenancy-fixer: istio-proxy not ready after {timeout}s, starting anyway' >&2; break; fi\n\
                 \x20 sleep 1\n\
                 done\n"
            )
        }
    }
}

/// Runs the collector, keeps its exit code, stops the proxy, restores the termination log
/// (stopping the proxy must not replace the collector's message) and exits with the code.
fn run_then_stop_proxy(argv: &[&str], termination_log: &str, config: &Config) -> String {
    let istio = &config.settings.istio;
    let stop = match config.modes.proxy_shutdown {
        ProxyShutdown::Quitquitquit => {
            let url = shell_quote(&istio.quit_url);
            format!(
                "curl -fs -o /dev/null --max-time 5 -X POST {url} 2>/dev/null || wget -q -T 5 -O /dev/null --post-data='' {url} 2>/dev/null || echo 'tenancy-fixer: could not stop istio-proxy' >&2"
            )
        }
        ProxyShutdown::Pkill => format!(
            "pkill -INT {} 2>/dev/null || echo 'tenancy-fixer: could not stop istio-proxy' >&2",
            shell_quote(&istio.pilot_agent_process)
        ),
    };
    format!(
        "{command}\n\
         tf_code=$?\n\
         tf_log={log}\n\
         tf_saved=\"${{TMPDIR:-/tmp}}/tenancy-fixer-termination-log\"\n\
         cp \"$tf_log\" \"$tf_saved\" 2>/dev/null\n\
         {stop}\n\
         if [ -f \"$tf_saved\" ]; then cat \"$tf_saved\" > \"$tf_log\" 2>/dev/null; rm -f \"$tf_saved\"; fi\n\
         exit \"$tf_code\"\n",
        command = join_quoted(argv),
        log = shell_quote(termination_log),
    )
}

/// Quotes one word for a POSIX shell: single quotes, with `'` written as `'\''`.
pub fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

fn join_quoted(argv: &[&str]) -> String {
    argv.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::TcpListener,
        process::Command,
        sync::mpsc,
        thread,
    };

    use super::*;
    use crate::{
        model::{InitContainer, ObjectMeta, OwnerReference},
        policy::mutate_pod,
        testing::config,
    };

    /// Arguments a shell would love to interpret.
    const NASTY: [&str; 9] = [
        "it's",
        "$(touch /tmp/tf-pwned)",
        "a  b",
        "\"dq\"",
        "line\nbreak",
        "`id`",
        "*",
        "",
        "; exit 7",
    ];

    fn container<'a>(
        name: &'a str,
        command: Option<&[&'a str]>,
        args: &[&'a str],
    ) -> Container<'a> {
        Container {
            name: name.into(),
            command: command.map(|c| c.iter().map(|&s| s.into()).collect()),
            args: (!args.is_empty()).then(|| args.iter().map(|&s| s.into()).collect()),
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

    fn katib_pod() -> Pod<'static> {
        trial_pod(
            container(
                "training-container",
                Some(&["python3", "/opt/train.py"]),
                &["--lr", "0.1"],
            ),
            container(
                "metrics-logger-and-collector",
                None,
                &[
                    "-t",
                    "trial-1",
                    "-m",
                    "accuracy",
                    "-w",
                    "true",
                    "-path",
                    "/var/log/katib/metrics.log",
                ],
            ),
        )
    }

    fn wrapped<'a>(pod: &Pod<'a>, config: &Config) -> Decision<Pod<'a>> {
        let job_controller = "system:serviceaccount:kube-system:job-controller";
        mutate_pod(pod, "alice", Some(job_controller), config)
    }

    fn script<'p>(pod: &'p Pod, index: usize) -> &'p str {
        let c = &pod.spec.as_ref().unwrap().containers[index];
        assert_eq!(c.args, None);
        let command = c.command.as_ref().unwrap();
        assert_eq!(&command[..2], ["/bin/sh", "-c"]);
        &command[2]
    }

    #[test]
    fn trial_pod_training_waits_and_collector_stops_the_proxy() {
        let c = config("kfpAccess: header\nkatib:\n  proxyStartup: wait-ready\n");
        let d = wrapped(&katib_pod(), &c);
        assert_eq!(d.applied, vec![STARTUP_RULE, SHUTDOWN_RULE]);
        let pod = &d.object;
        assert_eq!(
            pod.metadata.annotation(WRAPPED_ANNOTATION),
            Some("training-container,metrics-logger-and-collector")
        );
        let training = script(pod, 0);
        assert!(
            training.contains("'http://127.0.0.1:15021/healthz/ready'"),
            "{training}"
        );
        assert!(training.contains("tf_left=60"), "{training}");
        assert!(
            training.ends_with("exec 'python3' '/opt/train.py' '--lr' '0.1'\n"),
            "{training}"
        );
        let collector = script(pod, 1);
        assert!(
            collector.starts_with(
                "'./file-metricscollector' '-w' 'false' '-t' 'trial-1' '-m' 'accuracy' '-path' '/var/log/katib/metrics.log'\n"
            ),
            "{collector}"
        );
        assert!(
            collector.contains("-X POST 'http://127.0.0.1:15020/quitquitquit'"),
            "{collector}"
        );
        assert!(
            collector.contains("tf_log='/dev/termination-log'"),
            "{collector}"
        );
        assert_eq!(
            pod.spec.as_ref().unwrap().containers[2],
            katib_pod().spec.unwrap().containers[2]
        );
    }

    #[test]
    fn legacy_modes_sleep_and_pkill() {
        let c = config(
            "kfpAccess: header\nkatib:\n  proxyStartup: sleep\n  sleepSeconds: 12\n  proxyShutdown: pkill\n",
        );
        let d = wrapped(&katib_pod(), &c);
        assert!(script(&d.object, 0).starts_with("sleep 12\nexec 'python3'"));
        assert!(script(&d.object, 1).contains("pkill -INT 'pilot-agent'"));
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
        assert_eq!(
            d.object.spec.as_ref().unwrap().containers[0],
            pod.spec.as_ref().unwrap().containers[0]
        );
    }

    #[test]
    fn native_sidecar_proxy_needs_nothing() {
        let mut pod = katib_pod();
        let spec = pod.spec.as_mut().unwrap();
        spec.containers.pop();
        spec.init_containers = Some(vec![InitContainer {
            name: "istio-proxy".into(),
            restart_policy: Some("Always".into()),
        }]);
        let d = wrapped(&pod, &config("kfpAccess: header"));
        assert!(!d.changed(), "{:?}", d.applied);
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
            container("metrics-collector", None, &[]),
        );
        let d = wrapped(
            &pod,
            &config("kfpAccess: header\nkatib:\n  proxyStartup: wait-ready\n"),
        );
        assert_eq!(d.applied, vec![SHUTDOWN_RULE]);
        assert_eq!(
            d.object.spec.as_ref().unwrap().containers[0],
            pod.spec.as_ref().unwrap().containers[0]
        );
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
        let d = wrapped(
            &pod,
            &config("kfpAccess: header\nkatib:\n  proxyStartup: wait-ready\n"),
        );
        let containers = &d.object.spec.as_ref().unwrap().containers;
        assert_eq!(containers[0], container("helper", Some(&["sleep"]), &["1"]));
        assert!(script(&d.object, 1).contains("exec 'python3'"));
    }

    #[test]
    fn wrapping_twice_changes_nothing() {
        for yaml in [
            "kfpAccess: header\nkatib:\n  proxyStartup: wait-ready\n",
            "kfpAccess: token",
        ] {
            let c = config(yaml);
            let once = wrapped(&katib_pod(), &c).object;
            let twice = wrapped(&once, &c);
            assert!(!twice.changed(), "{:?}", twice.applied);
            assert_eq!(twice.object, once);
        }
    }

    #[test]
    fn scripts_survive_kubelet_variable_expansion() {
        for yaml in [
            "kfpAccess: header\nkatib:\n  proxyStartup: wait-ready\n",
            "kfpAccess: header\nkatib:\n  proxyStartup: sleep\n  proxyShutdown: pkill\n",
        ] {
            let d = wrapped(&katib_pod(), &config(yaml));
            for index in [0, 1] {
                let script = script(&d.object, index);
                assert!(!script.contains("$$"), "{script}");
                let expanded = script
                    .match_indices("$(")
                    .filter(|(i, _)| !script[i + 2..].starts_with('('));
                assert_eq!(expanded.count(), 0, "{script}");
            }
        }
    }

    #[test]
    fn shell_quote_round_trips_through_sh() {
        for word in NASTY {
            let out = Command::new("/bin/sh")
                .args(["-c", &format!("printf '%s' {}", shell_quote(word))])
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), word);
        }
    }

    /// Runs a wrapped container's script the way the kubelet would.
    fn run(script: &str) -> std::process::Output {
        Command::new("/bin/sh")
            .args(["-c", script])
            .output()
            .unwrap()
    }

    /// Runs a collector script with its own scratch directory (each container has its own /tmp).
    fn run_in(dir: &std::path::Path, script: &str) -> std::process::Output {
        Command::new("/bin/sh")
            .args(["-c", script])
            .env("TMPDIR", dir)
            .output()
            .unwrap()
    }

    #[test]
    fn training_arguments_survive_wrapping_byte_for_byte() {
        let mut args = vec!["%s\\0"];
        args.extend(NASTY);
        for yaml in [
            "kfpAccess: header\nkatib:\n  proxyStartup: sleep\n  sleepSeconds: 0\n",
            // Nothing listens there: the wait gives up after the bound and starts anyway.
            "kfpAccess: header\nkatib:\n  proxyStartup: wait-ready\n  proxyStartupTimeoutSeconds: 1\nistio:\n  readinessUrl: http://127.0.0.1:9/never\n",
        ] {
            let pod = trial_pod(
                container("training-container", Some(&["printf"]), &args),
                container("metrics-collector", None, &[]),
            );
            let d = wrapped(&pod, &config(yaml));
            let out = run(script(&d.object, 0));
            let expected: Vec<u8> = NASTY.iter().flat_map(|a| a.bytes().chain([0])).collect();
            assert_eq!(out.stdout, expected, "{yaml}");
            assert!(out.status.success());
        }
        assert!(!std::path::Path::new("/tmp/tf-pwned").exists());
    }

    /// An HTTP server answering one request with `status`; sends the request line back.
    fn one_shot_server(
        status: &'static str,
        on_request: impl FnOnce() + Send + 'static,
    ) -> (String, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap();
            let request = String::from_utf8_lossy(&buf[..n])
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            on_request();
            write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
            .unwrap();
            tx.send(request).unwrap();
        });
        (url, rx)
    }

    #[test]
    fn training_starts_once_the_proxy_is_ready() {
        let (url, requests) = one_shot_server("200 OK", || {});
        let yaml = format!(
            "kfpAccess: header\nkatib:\n  proxyStartup: wait-ready\n  proxyStartupTimeoutSeconds: 30\nistio:\n  readinessUrl: {url}/healthz/ready\n"
        );
        let pod = trial_pod(
            container("training-container", Some(&["echo"]), &["trained"]),
            container("metrics-collector", None, &[]),
        );
        let d = wrapped(&pod, &config(&yaml));
        let out = run(script(&d.object, 0));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "trained\n");
        assert!(requests.recv().unwrap().starts_with("GET /healthz/ready"));
    }

    fn collector_pod(log: &std::path::Path, code: i32) -> Pod<'static> {
        let body = format!(
            "printf 'collector says %s' \"$1\" > {}; exit {code}",
            shell_quote(&log.display().to_string())
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
        let dir = std::env::temp_dir().join(format!("tf-katib-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("termination-log");
        let clobber = log.clone();
        // The proxy's shutdown overwrites the termination log, as the prototype saw.
        let (url, requests) = one_shot_server("200 OK", move || {
            std::fs::write(&clobber, "proxy was here").unwrap()
        });
        let yaml = format!("kfpAccess: header\nistio:\n  quitUrl: {url}/quitquitquit\n");
        let d = wrapped(&collector_pod(&log, 3), &config(&yaml));
        let out = run_in(&dir, script(&d.object, 1));
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

    #[test]
    fn collector_success_is_kept_when_the_proxy_is_already_gone() {
        let dir = std::env::temp_dir().join(format!("tf-katib-ok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("termination-log");
        let yaml = "kfpAccess: header\nistio:\n  quitUrl: http://127.0.0.1:9/quitquitquit\n";
        let d = wrapped(&collector_pod(&log, 0), &config(yaml));
        let out = run_in(&dir, script(&d.object, 1));
        assert_eq!(out.status.code(), Some(0));
        assert!(String::from_utf8_lossy(&out.stderr).contains("could not stop istio-proxy"));
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "collector says it's done"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn pkill_mode_interrupts_pilot_agent() {
        let dir = std::env::temp_dir().join(format!("tf-katib-pkill-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A stand-in pilot-agent: `sleep` under a unique process name.
        let name = format!("tfpa{}", std::process::id() % 100_000);
        let agent_path = dir.join(&name);
        std::fs::copy("/bin/sleep", &agent_path).unwrap();
        let mut agent = Command::new(&agent_path).arg("60").spawn().unwrap();
        let log = dir.join("termination-log");
        let yaml = format!(
            "kfpAccess: header\nkatib:\n  proxyShutdown: pkill\nistio:\n  pilotAgentProcess: {name}\n"
        );
        let d = wrapped(&collector_pod(&log, 5), &config(&yaml));
        let out = run_in(&dir, script(&d.object, 1));
        assert_eq!(out.status.code(), Some(5));
        let status = agent.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(2), "pilot-agent got SIGINT");
        std::fs::remove_dir_all(&dir).ok();
    }
}
