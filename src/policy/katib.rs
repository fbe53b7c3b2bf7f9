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

pub(super) fn wrap_trial_pod(decision: &mut Decision<Pod>, config: &Config) {
    let settings = &config.settings;
    let Decision { object: pod, applied, skipped } = decision;
    let Some(spec) = &mut pod.spec else { return };
    let is_collector = |c: &Container| settings.katib.metrics_collector_containers.contains(&c.name);
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
    if !spec.containers.iter().any(|c| c.name == settings.istio.proxy_container) {
        skipped.push("trial pod has no istio-proxy container".into());
        return;
    }

    let mut wrapped = Vec::new();
    if holds_until_proxy_starts(&pod.metadata) {
        skipped.push("Istio holds the application until the proxy starts".into());
    } else {
        let job_name = JOB_NAME_LABELS.iter().find_map(|key| pod.metadata.label(key));
        match training_container(spec, job_name, &is_collector, &settings.istio.proxy_container) {
            None => skipped.push("trial pod has no training container".into()),
            Some(training) => {
                let container = &mut spec.containers[training];
                match original_argv(container) {
                    None => skipped.push("training container has no command: its image entrypoint is unknown".into()),
                    Some(argv) => {
                        let script = format!("{}exec {}\n", wait_for_proxy(config), join_quoted(&argv));
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
    let log = container.termination_message_path.as_deref().unwrap_or(DEFAULT_TERMINATION_LOG);
    let script = run_then_stop_proxy(&argv, log, config);
    run_script(container, script);
    wrapped.push(container.name.clone());
    applied.push(SHUTDOWN_RULE);

    pod.metadata.set_annotation(WRAPPED_ANNOTATION, &wrapped.join(","));
}

/// Istio >= 1.27 on Kubernetes >= 1.28 injects the proxy as an init container with
/// `restartPolicy: Always`: it starts before and stops after the application by itself.
fn proxy_is_native_sidecar(spec: &PodSpec, proxy: &str) -> bool {
    spec.init_containers
        .iter()
        .flatten()
        .any(|c| c.name == proxy && c.restart_policy.as_deref() == Some("Always"))
}

/// The container named after the pod's Job, else the first that is neither collector nor proxy.
fn training_container(
    spec: &PodSpec,
    job_name: Option<&str>,
    is_collector: &impl Fn(&Container) -> bool,
    proxy: &str,
) -> Option<usize> {
    job_name
        .and_then(|name| spec.containers.iter().position(|c| c.name == name))
        .or_else(|| spec.containers.iter().position(|c| !is_collector(c) && c.name != proxy))
}

/// The program and arguments the container runs, when the pod says (it has a `command`).
fn original_argv(container: &Container) -> Option<Vec<String>> {
    let command = container.command.as_ref().filter(|c| !c.is_empty())?;
    Some(command.iter().chain(container.args.iter().flatten()).cloned().collect())
}

/// The collector's program and arguments, with `-w false` when it runs Katib's own entrypoint.
fn collector_argv(container: &Container, entrypoint: &str) -> Vec<String> {
    if let Some(argv) = original_argv(container) {
        // A custom command: its flags are not Katib's, leave them alone.
        return argv;
    }
    let mut argv = vec![entrypoint.to_string(), WAIT_ALL_FLAG.to_string(), "false".to_string()];
    let mut args = container.args.iter().flatten();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-w" | "--w" => {
                args.next();
            }
            a if a.starts_with("-w=") || a.starts_with("--w=") => {}
            _ => argv.push(arg.clone()),
        }
    }
    argv
}

fn run_script(container: &mut Container, script: String) {
    container.command = Some(vec![SHELL.into(), "-c".into(), script]);
    container.args = None;
}

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
fn run_then_stop_proxy(argv: &[String], termination_log: &str, config: &Config) -> String {
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
         tf_saved=\"${{TMPDIR:-/tmp}}/tenancy-fixer-termination-log.$$\"\n\
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

fn join_quoted(argv: &[String]) -> String {
    argv.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ")
}
