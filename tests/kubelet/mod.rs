//! A kubelet, emulated for one pod at a time: runs a (mutated) pod's containers as processes
//! the way the kubelet and its container runtime would, close enough that Katib's real metrics
//! collector and a stand-in Istio proxy behave as in a cluster.
//!
//! What is modelled:
//! - argv: `command`/`args` with `$(VAR)` and `$$` expanded exactly as
//!   k8s.io/kubernetes third_party/forked/golang/expansion (v1.36), over the container's env, whose
//!   values are themselves expanded in declaration order; the image's entrypoint/cmd fill in
//!   what the container leaves out (Docker rules); argv[0] is looked up on the container's PATH.
//! - env: the image's ENV, then `HOSTNAME`, then the container's `env` (`value`, and `valueFrom`
//!   `fieldRef` for `metadata.name`, `metadata.namespace`, `metadata.labels['…']`), nothing else.
//! - one pod = one PID, network, IPC and UTS namespace held by a `pause` process (PID 1, which
//!   reaps orphans), every container entered from outside, so its first process has parent pid 0
//!   inside the pod as under `shareProcessNamespace: true` (Katib's collector relies on that);
//!   its own loopback, so Istio's fixed ports (15021, 15020) and Katib's DB manager port are the
//!   real ones; `/etc/hosts` names `katib-db-manager.kubeflow` (the DB manager stand-in runs in
//!   the pod's network namespace, outside its PID namespace).
//! - per container: its own mount namespace with a private `/tmp`, a private `/dev` holding the
//!   termination log (a file per container, read after exit), `emptyDir` volumes shared between
//!   containers, and image files (e.g. a training script) bind-mounted where the image has them;
//!   the image's working directory (a host directory standing for the image's WORKDIR).
//! - start order: init containers one by one (a restartable one, i.e. a native sidecar, counts as
//!   started once its startupProbe succeeds), then containers in order, each once its process runs
//!   its argv; the pod ends when every regular container has exited; native sidecars are then
//!   sent SIGTERM, as the kubelet does.
//!
//! Not modelled: images (programs come from the host and target/katib/bin), users and security
//! contexts (everything runs as root), volumes other than `emptyDir`, resources, probes other
//! than an httpGet startupProbe, restarts, service environment variables.
//!
//! Needs root (namespaces and mounts): [`unavailable`] says why it cannot run, and callers skip.
#![allow(dead_code)] // each scenario uses its own part of the emulation

use std::{
    collections::HashMap,
    fs,
    io::{BufRead, BufReader},
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::OnceLock,
    thread,
    time::{Duration, Instant, SystemTime},
};

use serde_json::Value;

/// Programs this emulation itself runs, from the host.
const HOST_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// The service name Katib's pod webhook gives the collector (`-s-db`), resolved in the pod.
pub const DB_MANAGER_HOSTS: &str = "katib-db-manager.kubeflow katib-db-manager.kubeflow.svc katib-db-manager.kubeflow.svc.cluster.local";
pub const DB_MANAGER_LISTEN: &str = "127.0.0.1:6789";
/// How long a native sidecar gets between SIGTERM and SIGKILL.
const SIDECAR_GRACE: Duration = Duration::from_secs(5);

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The test components built by testenv/katib/build.sh (built here when stale).
pub fn components() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let status = Command::new(repo_root().join("testenv/katib/build.sh"))
            .stdout(Stdio::inherit())
            .status()
            .expect("run testenv/katib/build.sh");
        assert!(status.success(), "testenv/katib/build.sh failed");
        repo_root().join("target/katib/bin")
    })
}

/// Why pods cannot be run on this machine, if they cannot.
pub fn unavailable() -> Option<&'static str> {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    REASON
        .get_or_init(|| {
            let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
            let root = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1))
                == Some("0");
            if !root {
                return Some(
                    "not running as root: a pod's shared PID namespace and mounts need it".into(),
                );
            }
            let probe = Command::new("unshare")
                .args([
                    "--pid",
                    "--net",
                    "--mount",
                    "--fork",
                    "--mount-proc",
                    "true",
                ])
                .env_clear()
                .env("PATH", HOST_PATH)
                .output();
            match probe {
                Ok(out) if out.status.success() => {}
                Ok(out) => {
                    return Some(format!(
                        "unshare cannot make PID/network/mount namespaces here: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                Err(e) => return Some(format!("unshare (util-linux) is not available: {e}")),
            }
            ["nsenter", "mount", "ip", "curl", "env", "kill"]
                .iter()
                .find(|tool| which(tool, HOST_PATH).is_none())
                .map(|tool| format!("{tool} is not on {HOST_PATH}"))
        })
        .as_deref()
}

/// Where `name` is on `path`, as a shell would find it.
pub fn which(name: &str, path: &str) -> Option<PathBuf> {
    path.split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------------------------------------
// The kubelet's expansion of `$(VAR)` and `$$`.

/// Expands `$(NAME)` references as the kubelet does for `command`, `args` and env values: a
/// known name becomes its value, an unknown one stays as written, `$$` becomes `$`, any other
/// `$x` stays, an unterminated `$(` stays; nothing is expanded twice.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let Some(next) = after.chars().next() else {
            // A trailing `$` is kept.
            out.push('$');
            rest = after;
            break;
        };
        match next {
            '$' => {
                out.push('$');
                rest = &after[1..];
            }
            '(' => match after.find(')') {
                Some(close) => {
                    let name = &after[1..close];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[close + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = &after[1..];
                }
            },
            other => {
                out.push('$');
                out.push(other);
                rest = &after[other.len_utf8()..];
            }
        }
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------------------------
// Images.

/// What a container image contributes: its ENTRYPOINT, CMD, WORKDIR (a host directory standing
/// for it), ENV, and files that exist at fixed paths in the image (bind-mounted there).
#[derive(Clone, Debug, Default)]
pub struct Image {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub workdir: PathBuf,
    pub env: Vec<(String, String)>,
    pub files: Vec<(String, PathBuf)>,
}

/// Images by reference without tag (`docker.io/istio/proxyv2`).
#[derive(Default)]
pub struct Registry(HashMap<String, Image>);

impl Registry {
    pub fn with(mut self, reference: &str, image: Image) -> Self {
        self.0.insert(reference.into(), image);
        self
    }

    fn get(&self, reference: &str) -> &Image {
        let untagged = match reference.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => name,
            _ => reference,
        };
        self.0
            .get(untagged)
            .unwrap_or_else(|| panic!("no image {untagged} in the emulated registry"))
    }
}

/// A directory of symlinks to host programs, to be an image's PATH: only what that image has.
pub fn toolbox(dir: &Path, tools: &[(&str, &str)]) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    for (name, host) in tools {
        let target = if host.starts_with('/') {
            PathBuf::from(host)
        } else {
            which(host, HOST_PATH).unwrap_or_else(|| panic!("{host} is not on {HOST_PATH}"))
        };
        let link = dir.join(name);
        let _ = fs::remove_file(&link);
        symlink(&target, &link).unwrap();
    }
    dir.to_path_buf()
}

// ---------------------------------------------------------------------------------------------
// What the kubelet computes for a container.

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().expect("a string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The value of a downward-API field path, for the ones a trial pod uses.
fn field_value(pod: &Value, path: &str) -> Option<String> {
    let meta = &pod["metadata"];
    let text = |v: &Value| v.as_str().map(str::to_string);
    match path {
        "metadata.name" => text(&meta["name"]),
        "metadata.namespace" => text(&meta["namespace"]),
        _ => {
            let key = path.strip_prefix("metadata.labels['")?.strip_suffix("']")?;
            text(&meta["labels"][key])
        }
    }
}

/// The container's `env` as the kubelet computes it: declaration order, each value expanded
/// over the variables declared before it (the image's ENV is not visible to the kubelet).
pub fn kubelet_env(pod: &Value, container: &Value) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().expect("env name");
        let literal = var["value"].as_str().unwrap_or_default();
        let value = if !literal.is_empty() {
            expand(literal, |n| lookup(&env, n))
        } else if let Some(path) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            field_value(pod, path).unwrap_or_else(|| panic!("fieldRef {path} not emulated"))
        } else {
            String::new()
        };
        env.retain(|(n, _)| n != name);
        env.push((name.into(), value));
    }
    env
}

fn lookup(env: &[(String, String)], name: &str) -> Option<String> {
    env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
}

/// The process environment: the image's ENV, `HOSTNAME` (the runtime's), then the container's.
pub fn process_env(
    pod: &Value,
    image: &Image,
    declared: &[(String, String)],
) -> Vec<(String, String)> {
    let hostname = pod["metadata"]["name"].as_str().unwrap_or_default();
    let mut env: Vec<(String, String)> = Vec::new();
    for (name, value) in image
        .env
        .iter()
        .chain([&("HOSTNAME".to_string(), hostname.to_string())])
        .chain(declared)
    {
        env.retain(|(n, _)| n != name);
        env.push((name.clone(), value.clone()));
    }
    env
}

/// The argv the runtime executes: expanded `command` + `args`, with the image's ENTRYPOINT when
/// there is no command and its CMD when there are neither command nor args.
pub fn container_argv(
    container: &Value,
    image: &Image,
    declared: &[(String, String)],
) -> Vec<String> {
    let expanded = |field: &str| -> Vec<String> {
        strings(&container[field])
            .iter()
            .map(|w| expand(w, |n| lookup(declared, n)))
            .collect()
    };
    let (command, args) = (expanded("command"), expanded("args"));
    match (command.is_empty(), args.is_empty()) {
        (false, _) => [command, args].concat(),
        (true, false) => [image.entrypoint.clone(), args].concat(),
        (true, true) => [image.entrypoint.clone(), image.cmd.clone()].concat(),
    }
}

// ---------------------------------------------------------------------------------------------
// The mounts of one container, as steps for the setup script.

/// Builds the mount steps of a container in two passes: first every mount target is made to
/// exist (a path missing on the host gets an overlay on its nearest existing ancestor, private
/// to the container, so nothing is hidden and the host is not touched), then the binds, so no
/// overlay can hide a bind.
struct MountPlan<'e> {
    prepare: Vec<String>,
    binds: Vec<String>,
    /// Directories whose content is the container's own (its /tmp, overlays).
    private_roots: Vec<PathBuf>,
    /// Where the overlays keep their upper and work directories (a tmpfs).
    scratch: PathBuf,
    exists: &'e dyn Fn(&Path) -> bool,
}

impl<'e> MountPlan<'e> {
    fn new(scratch: &Path, exists: &'e dyn Fn(&Path) -> bool) -> Self {
        Self {
            prepare: Vec::new(),
            binds: Vec::new(),
            private_roots: Vec::new(),
            scratch: scratch.to_path_buf(),
            exists,
        }
    }

    fn words(list: &mut Vec<String>, words: &[&str]) {
        list.extend(words.iter().map(|w| w.to_string()));
    }

    fn steps(&self) -> impl Iterator<Item = &String> {
        self.prepare.iter().chain(&self.binds)
    }

    fn is_private(&self, path: &Path) -> bool {
        self.private_roots.iter().any(|root| path.starts_with(root))
    }

    /// Makes `target` (a directory, else a file) exist in the container.
    fn ensure(&mut self, target: &Path, dir: bool) {
        let private = self.is_private(target);
        if !private && (self.exists)(target) {
            return;
        }
        if !private {
            let ancestor = target
                .ancestors()
                .skip(1)
                .find(|a| (self.exists)(a))
                .expect("/ exists");
            assert!(
                ancestor != Path::new("/"),
                "cannot emulate {}: its top directory does not exist on this host",
                target.display()
            );
            if self
                .private_roots
                .iter()
                .all(|r| !r.starts_with(&self.scratch))
            {
                let scratch = self.scratch.display().to_string();
                Self::words(&mut self.prepare, &["tmpfs", &scratch]);
                self.private_roots.push(self.scratch.clone());
            }
            let layer = self.scratch.join(self.private_roots.len().to_string());
            let shown = ancestor.display().to_string();
            assert!(
                !shown.contains([',', ':']),
                "overlay option syntax: {shown}"
            );
            Self::words(
                &mut self.prepare,
                &[
                    "overlay",
                    &shown,
                    &layer.join("upper").display().to_string(),
                    &layer.join("work").display().to_string(),
                ],
            );
            self.private_roots.push(ancestor.to_path_buf());
        }
        let shown = target.display().to_string();
        if dir {
            Self::words(&mut self.prepare, &["mkdir", &shown]);
        } else {
            let parent = target.parent().unwrap().display().to_string();
            Self::words(&mut self.prepare, &["mkdir", &parent, "touch", &shown]);
        }
    }

    fn bind(&mut self, source: &Path, target: &Path, dir: bool) {
        self.ensure(target, dir);
        let (source, target) = (source.display().to_string(), target.display().to_string());
        Self::words(&mut self.binds, &["bind", &source, &target]);
    }

    /// The container's own /tmp, first: later steps may create paths inside it.
    fn private_tmp(&mut self, source: &Path) {
        Self::words(
            &mut self.prepare,
            &["bind", &source.display().to_string(), "/tmp"],
        );
        self.private_roots.push("/tmp".into());
    }
}

/// The container's private /dev (a host directory): device files bound from the host, the
/// termination log, the usual links.
fn prepare_dev(dev: &Path, termination_log: &str, plan: &mut MountPlan) -> PathBuf {
    fs::create_dir_all(dev.join("shm")).unwrap();
    for device in ["null", "zero", "full", "random", "urandom"] {
        fs::write(dev.join(device), b"").unwrap();
        plan.bind(
            Path::new(&format!("/dev/{device}")),
            &dev.join(device),
            false,
        );
    }
    MountPlan::words(
        &mut plan.binds,
        &["tmpfs", &dev.join("shm").display().to_string()],
    );
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(to, dev.join(link)).unwrap();
    }
    let relative = termination_log.strip_prefix("/dev/").unwrap_or_else(|| {
        panic!("terminationMessagePath {termination_log}: only /dev/… is emulated")
    });
    let log = dev.join(relative);
    fs::create_dir_all(log.parent().unwrap()).unwrap();
    fs::write(&log, b"").unwrap();
    MountPlan::words(
        &mut plan.binds,
        &["rbind", &dev.display().to_string(), "/dev"],
    );
    log
}

/// Runs the mount steps (arguments up to `--`), then `env -i` with the container's environment
/// and argv (after a second `--`). Constant text: every path and word arrives as an argument.
const SETUP: &str = r#"set -e
while [ "$1" != -- ]; do
  case "$1" in
    tmpfs) mkdir -p "$2"; mount -t tmpfs tmpfs "$2"; shift 2 ;;
    overlay) mkdir -p "$3" "$4"; mount -t overlay overlay -o "lowerdir=$2,upperdir=$3,workdir=$4" "$2"; shift 4 ;;
    mkdir) mkdir -p "$2"; shift 2 ;;
    touch) [ -e "$2" ] || : > "$2"; shift 2 ;;
    bind) mount --bind "$2" "$3"; shift 3 ;;
    rbind) mount --rbind "$2" "$3"; shift 3 ;;
    cd) cd "$2"; shift 2 ;;
    *) echo "kubelet emulation: unknown step $1" >&2; exit 126 ;;
  esac
done
shift
exec env -i "$@"
"#;

// ---------------------------------------------------------------------------------------------
// Running a pod.

/// One pod's directory: volumes, per-container dirs, logs, records of the stand-ins.
pub struct PodDir(pub PathBuf);

impl PodDir {
    /// A fresh directory under target/tmp (visible inside containers, unlike /tmp).
    pub fn new(name: &str) -> PodDir {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("trial-pods");
        static CLEANED: OnceLock<()> = OnceLock::new();
        CLEANED.get_or_init(|| remove_stale_runs(&base));
        let dir = base.join(format!("{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        PodDir(dir)
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.0.join(relative)
    }
}

/// Removes the directories of earlier runs whose test process is gone.
fn remove_stale_runs(base: &Path) {
    for entry in fs::read_dir(base).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.split('-').next().unwrap_or_default();
        if !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

pub struct RunOptions {
    /// The pod must be over by then (else everything is killed and `finished` is false).
    pub deadline: Duration,
    /// Run the DB manager stand-in at `katib-db-manager.kubeflow:6789`.
    pub db_manager: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(45),
            db_manager: true,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ContainerRun {
    pub name: String,
    pub init: bool,
    pub sidecar: bool,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    /// Exit code as the kubelet reports it (128 + signal when killed by one).
    pub exit_code: Option<i32>,
    pub termination_message: String,
    pub log: String,
}

#[derive(Debug)]
pub struct PodRun {
    pub dir: PathBuf,
    /// Every regular container exited before the deadline.
    pub finished: bool,
    pub containers: Vec<ContainerRun>,
    /// Processes left in the pod's PID namespace once every container was over (orphans).
    pub leftovers: Vec<String>,
    /// One JSON object per ReportObservationLog the DB manager received.
    pub db_reports: Vec<Value>,
    pub notes: Vec<String>,
}

impl PodRun {
    pub fn container(&self, name: &str) -> &ContainerRun {
        self.containers
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no container {name} ran\n{}", self.describe()))
    }

    /// `Succeeded` when finished with every regular container at exit code 0.
    pub fn phase(&self) -> &'static str {
        let regular = self.containers.iter().filter(|c| !c.init);
        match (
            self.finished,
            regular.clone().all(|c| c.exit_code == Some(0)),
        ) {
            (false, _) => "Running",
            (true, true) => "Succeeded",
            (true, false) => "Failed",
        }
    }

    /// Everything a failing assertion needs: statuses, argv, log tails.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "pod {} finished={} phase={} leftovers={:?} notes={:?}\n",
            self.dir.display(),
            self.finished,
            self.phase(),
            self.leftovers,
            self.notes
        );
        for c in &self.containers {
            let tail: Vec<&str> = c.log.lines().rev().take(15).collect();
            out.push_str(&format!(
                "--- {} exit={:?} termination={:?}\n    argv={:?}\n    log tail:\n      {}\n",
                c.name,
                c.exit_code,
                c.termination_message,
                c.argv,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n      ")
            ));
        }
        out
    }
}

fn host_command(program: &str) -> Command {
    let mut command = Command::new(program);
    command.env_clear().env("PATH", HOST_PATH);
    command
}

/// The pid of the first child of `pid`, if it has one yet.
fn first_child(pid: u32) -> Option<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn signal(pid: u32, signal: &str) {
    let _ = host_command("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// The pod's namespaces, held by `pause`; killing it ends every process inside.
struct Sandbox {
    unshare: Child,
    stdin: Option<ChildStdin>,
    pause: u32,
}

impl Sandbox {
    fn start(components: &Path) -> Sandbox {
        let mut unshare = host_command("unshare")
            .args([
                "--pid",
                "--net",
                "--ipc",
                "--uts",
                "--mount",
                "--fork",
                "--mount-proc",
                "--propagation",
                "private",
            ])
            .arg(components.join("pause"))
            .stdin(Stdio::piped())
            .spawn()
            .expect("start the pod sandbox");
        let stdin = unshare.stdin.take();
        let deadline = Instant::now() + Duration::from_secs(10);
        let pause = loop {
            match first_child(unshare.id()) {
                Some(pid) => break pid,
                None if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                None => panic!("no pause process in the pod sandbox"),
            }
        };
        let sandbox = Sandbox {
            unshare,
            stdin,
            pause,
        };
        let lo = sandbox
            .enter(&["--net"])
            .args(["ip", "link", "set", "lo", "up"])
            .status()
            .unwrap();
        assert!(lo.success(), "bring up the pod's loopback");
        sandbox
    }

    /// `nsenter` into the pod's namespaces named.
    fn enter(&self, namespaces: &[&str]) -> Command {
        let mut command = host_command("nsenter");
        command
            .arg("--target")
            .arg(self.pause.to_string())
            .args(namespaces)
            .arg("--");
        command
    }

    /// Command lines of the processes left in the pod (children of pause: orphans).
    fn orphans(&self) -> Vec<String> {
        let pid = self.pause;
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .map(|child| {
                fs::read(format!("/proc/{child}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                    .unwrap_or_default()
            })
            .collect()
    }

    /// An HTTP GET from inside the pod's network namespace succeeds.
    fn http_ok(&self, url: &str) -> bool {
        self.enter(&["--net"])
            .args(["curl", "-fs", "-o", "/dev/null", "--max-time", "1", url])
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stdin.take();
        signal(self.pause, "-KILL");
        let _ = self.unshare.wait();
    }
}

/// The DB manager stand-in in the pod's network namespace (not its PID namespace).
struct DbManager {
    child: Child,
    record: PathBuf,
}

impl DbManager {
    fn start(sandbox: &Sandbox, components: &Path, dir: &Path) -> DbManager {
        let record = dir.join("db-manager.jsonl");
        let mut child = sandbox
            .enter(&["--net"])
            .arg(components.join("katib-db-manager"))
            .args([
                "-listen",
                DB_MANAGER_LISTEN,
                "-exit-on-stdin-eof",
                "-record",
            ])
            .arg(&record)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start katib-db-manager");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("listening"), "katib-db-manager: {line:?}");
        DbManager { child, record }
    }

    fn reports(&self) -> Vec<Value> {
        read_json_lines(&self.record)
    }
}

impl Drop for DbManager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every JSON line of a file (none when it does not exist).
pub fn read_json_lines(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", path.display())))
        .collect()
}

struct Running {
    run: ContainerRun,
    nsenter: Child,
    pid: Option<u32>,
    log_path: PathBuf,
    termination_log: PathBuf,
}

impl Running {
    fn finish(&mut self, status: ExitStatus) {
        self.run.exit_code = Some(exit_code(status));
        self.run.finished_at = Some(SystemTime::now());
    }

    fn poll(&mut self) -> bool {
        if self.run.exit_code.is_some() {
            return true;
        }
        match self.nsenter.try_wait().unwrap() {
            Some(status) => {
                self.finish(status);
                true
            }
            None => false,
        }
    }

    fn collect(mut self) -> ContainerRun {
        self.run.log = fs::read_to_string(&self.log_path).unwrap_or_default();
        self.run.termination_message =
            fs::read_to_string(&self.termination_log).unwrap_or_default();
        self.run
    }
}

/// Runs `pod` (a Pod object) to its end or the deadline.
pub fn run(pod: &Value, registry: &Registry, dir: &PodDir, options: &RunOptions) -> PodRun {
    let components = components();
    let spec = &pod["spec"];
    assert_eq!(
        spec["shareProcessNamespace"],
        Value::Bool(true),
        "the emulation runs pods with one PID namespace, as Katib asks"
    );
    let deadline = Instant::now() + options.deadline;
    let dir = &dir.0;
    fs::write(
        dir.join("hosts"),
        format!("127.0.0.1\tlocalhost\n127.0.0.1\t{DB_MANAGER_HOSTS}\n"),
    )
    .unwrap();
    for volume in spec["volumes"].as_array().into_iter().flatten() {
        if volume.get("emptyDir").is_some() {
            let name = volume["name"].as_str().unwrap();
            fs::create_dir_all(dir.join("volumes").join(name)).unwrap();
        }
    }
    let sandbox = Sandbox::start(components);
    let db_manager = options
        .db_manager
        .then(|| DbManager::start(&sandbox, components, dir));
    let mut notes = Vec::new();
    let mut done: Vec<ContainerRun> = Vec::new();
    let mut sidecars: Vec<Running> = Vec::new();
    let mut started_ok = true;

    for init in spec["initContainers"].as_array().into_iter().flatten() {
        let sidecar = init["restartPolicy"] == "Always";
        let mut running = start(&sandbox, pod, init, registry, dir, true, sidecar, deadline);
        if sidecar {
            if let Some(url) = startup_probe_url(init) {
                while !sandbox.http_ok(&url) && Instant::now() < deadline && !running.poll() {
                    thread::sleep(Duration::from_millis(200));
                }
            }
            sidecars.push(running);
        } else {
            while !running.poll() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            let ok = running.run.exit_code == Some(0);
            done.push(running.collect());
            if !ok {
                notes.push("an init container failed: the pod stops there".into());
                started_ok = false;
                break;
            }
        }
    }

    let mut regular: Vec<Running> = Vec::new();
    if started_ok {
        for container in spec["containers"].as_array().into_iter().flatten() {
            regular.push(start(
                &sandbox, pod, container, registry, dir, false, false, deadline,
            ));
        }
    }
    while Instant::now() < deadline && !regular.iter_mut().all(Running::poll) {
        thread::sleep(Duration::from_millis(20));
    }
    let finished = started_ok && regular.iter_mut().all(Running::poll);
    if finished {
        // As the kubelet: sidecars get SIGTERM once the regular containers are over, last first.
        for sidecar in sidecars.iter_mut().rev() {
            if let Some(pid) = sidecar.pid {
                signal(pid, "-TERM");
            }
            let grace = Instant::now() + SIDECAR_GRACE;
            while !sidecar.poll() && Instant::now() < grace {
                thread::sleep(Duration::from_millis(20));
            }
            if !sidecar.poll() {
                notes.push(format!("{} ignored SIGTERM", sidecar.run.name));
            }
        }
    } else {
        notes.push(format!(
            "deadline of {:?} passed with containers running",
            options.deadline
        ));
    }
    let leftovers = if finished {
        // Give pause a moment to reap what just exited before looking for stragglers.
        thread::sleep(Duration::from_millis(100));
        sandbox.orphans()
    } else {
        Vec::new()
    };
    drop(sandbox); // kills whatever is left in the pod
    let mut containers = done;
    for mut running in sidecars.into_iter().chain(regular) {
        if !running.poll() {
            let status = running.nsenter.wait().unwrap();
            running.finish(status);
            running.run.exit_code = None; // killed by the end of the sandbox, not by itself
        }
        containers.push(running.collect());
    }
    PodRun {
        dir: dir.clone(),
        finished,
        containers,
        leftovers,
        db_reports: db_manager.map(|db| db.reports()).unwrap_or_default(),
        notes,
    }
}

fn startup_probe_url(container: &Value) -> Option<String> {
    let get = container.get("startupProbe")?.get("httpGet")?;
    let port = get["port"].as_u64().unwrap_or_else(|| {
        panic!(
            "startupProbe port {}: only numbers are emulated",
            get["port"]
        )
    });
    Some(format!(
        "http://127.0.0.1:{port}{}",
        get["path"].as_str().unwrap_or("/")
    ))
}

/// Starts one container and returns once its process runs its argv (or is already over).
#[allow(clippy::too_many_arguments)]
fn start(
    sandbox: &Sandbox,
    pod: &Value,
    container: &Value,
    registry: &Registry,
    dir: &Path,
    init: bool,
    sidecar: bool,
    deadline: Instant,
) -> Running {
    let name = container["name"]
        .as_str()
        .expect("container name")
        .to_string();
    let image = registry.get(container["image"].as_str().expect("container image"));
    let declared = kubelet_env(pod, container);
    let argv = container_argv(container, image, &declared);
    let env = process_env(pod, image, &declared);
    assert!(!argv.is_empty(), "{name}: nothing to run");
    assert!(
        !argv[0].contains('='),
        "{name}: `env` would read argv[0] {:?} as a variable",
        argv[0]
    );
    let own = dir.join("containers").join(&name);
    fs::create_dir_all(own.join("tmp")).unwrap();

    let exists = |p: &Path| p.exists();
    let mut plan = MountPlan::new(&own.join("overlays"), &exists);
    plan.private_tmp(&own.join("tmp"));
    if Path::new("/etc/hosts").exists() {
        plan.bind(&dir.join("hosts"), Path::new("/etc/hosts"), false);
    }
    let termination = container["terminationMessagePath"]
        .as_str()
        .unwrap_or("/dev/termination-log");
    let termination_log = prepare_dev(&own.join("dev"), termination, &mut plan);
    let volumes: HashMap<&str, &Value> = pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let volume = mount["name"].as_str().unwrap();
        if volumes
            .get(volume)
            .is_some_and(|v| v.get("emptyDir").is_some())
        {
            let target = mount["mountPath"].as_str().unwrap();
            plan.bind(&dir.join("volumes").join(volume), Path::new(target), true);
        }
    }
    for (target, source) in &image.files {
        plan.bind(source, Path::new(target), source.is_dir());
    }
    let workdir = container["workingDir"]
        .as_str()
        .map(PathBuf::from)
        .unwrap_or_else(|| image.workdir.clone());
    MountPlan::words(&mut plan.binds, &["cd", &workdir.display().to_string()]);

    let log_path = dir.join("logs").join(format!("{name}.log"));
    fs::create_dir_all(log_path.parent().unwrap()).unwrap();
    let log = fs::File::create(&log_path).unwrap();
    let mut command = sandbox.enter(&["--pid", "--mount", "--net", "--ipc", "--uts"]);
    command
        .args(["unshare", "--mount", "--propagation", "private", "--"])
        .args(["/bin/sh", "-c", SETUP, "sh"])
        .args(plan.steps())
        .arg("--")
        .args(env.iter().map(|(k, v)| format!("{k}={v}")))
        .args(&argv)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let nsenter = command.spawn().expect("start a container");
    let mut running = Running {
        run: ContainerRun {
            name: name.clone(),
            init,
            sidecar,
            argv: argv.clone(),
            env,
            started_at: Some(SystemTime::now()),
            finished_at: None,
            exit_code: None,
            termination_message: String::new(),
            log: String::new(),
        },
        nsenter,
        pid: None,
        log_path,
        termination_log,
    };
    // Started = the process runs the container's argv (the runtime has exec'd it).
    let expected: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    while Instant::now() < deadline && !running.poll() {
        if running.pid.is_none() {
            running.pid = first_child(running.nsenter.id());
        }
        if let Some(pid) = running.pid
            && fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == expected)
        {
            break;
        }
        thread::sleep(Duration::from_millis(2));
    }
    running
}

// ---------------------------------------------------------------------------------------------
// Tests of the emulation itself.

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        match name {
            "VAR_A" => Some("A".into()),
            "VAR_EMPTY" => Some(String::new()),
            "QUOTED" => Some("x'$(touch /tmp/p)'y".into()),
            _ => None,
        }
    }

    /// Cases from the kubelet's own expansion tests (expand_test.go), by behaviour.
    #[test]
    fn expansion_follows_the_kubelet() {
        for (input, expected) in [
            ("$(VAR_A)", "A"),
            ("___$(VAR_A)___", "___A___"),
            ("$(VAR_A)$(VAR_A)", "AA"),
            ("$(VAR_EMPTY)", ""),
            ("$(UNKNOWN)", "$(UNKNOWN)"),
            ("$$(VAR_A)", "$(VAR_A)"),
            ("$$$$$$(VAR_A)", "$$$(VAR_A)"),
            ("$$$$$$$(VAR_A)", "$$$A"),
            ("$$$$.pid", "$$.pid"),
            ("$(VAR_A", "$(VAR_A"),
            ("$(", "$("),
            ("$", "$"),
            ("a$", "a$"),
            ("$x$(VAR_A)", "$xA"),
            ("$é", "$é"),
            ("$()", "$()"),
            ("$(QUOTED)", "x'$(touch /tmp/p)'y"),
        ] {
            assert_eq!(expand(input, vars), expected, "{input}");
        }
    }

    #[test]
    fn env_values_expand_over_earlier_declarations_only() {
        let pod = serde_json::json!({"metadata": {"name": "p", "namespace": "ns",
            "labels": {"katib.kubeflow.org/trial": "t1"}}});
        let container = serde_json::json!({"env": [
            {"name": "LATER_REF", "value": "$(B)"},
            {"name": "B", "value": "b$$"},
            {"name": "C", "value": "$(B)-$(HOSTNAME)-$(PATH)"},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "TRIAL", "valueFrom": {"fieldRef":
                {"fieldPath": "metadata.labels['katib.kubeflow.org/trial']"}}},
        ]});
        let image = Image {
            env: vec![("PATH".into(), "/bin".into()), ("B".into(), "image".into())],
            ..Default::default()
        };
        let declared = kubelet_env(&pod, &container);
        let env = process_env(&pod, &image, &declared);
        let get = |n: &str| lookup(&env, n);
        assert_eq!(get("LATER_REF").as_deref(), Some("$(B)"));
        assert_eq!(get("B").as_deref(), Some("b$"));
        // The image's ENV and HOSTNAME come from the runtime: the kubelet cannot expand them.
        assert_eq!(get("C").as_deref(), Some("b$-$(HOSTNAME)-$(PATH)"));
        assert_eq!(get("NS").as_deref(), Some("ns"));
        assert_eq!(get("TRIAL").as_deref(), Some("t1"));
        assert_eq!(get("PATH").as_deref(), Some("/bin"));
        assert_eq!(get("HOSTNAME").as_deref(), Some("p"));
    }

    #[test]
    fn argv_follows_docker_rules_for_entrypoint_and_cmd() {
        let image = Image {
            entrypoint: vec!["./file-metricscollector".into()],
            cmd: vec!["--default".into()],
            ..Default::default()
        };
        let env = vec![("V".to_string(), "v".to_string())];
        let argv = |c: Value| container_argv(&c, &image, &env);
        assert_eq!(
            argv(serde_json::json!({"args": ["-t", "$(V)"]})),
            ["./file-metricscollector", "-t", "v"]
        );
        assert_eq!(
            argv(serde_json::json!({})),
            ["./file-metricscollector", "--default"]
        );
        assert_eq!(
            argv(serde_json::json!({"command": ["sh", "-c"], "args": ["echo $$$$"]})),
            ["sh", "-c", "echo $$"]
        );
        assert_eq!(argv(serde_json::json!({"command": ["run"]})), ["run"]);
    }

    #[test]
    fn missing_mount_targets_get_a_private_overlay_on_their_existing_parent() {
        let exists = |p: &Path| {
            ["/", "/etc", "/etc/hosts", "/var", "/var/log", "/tmp"].contains(&p.to_str().unwrap())
        };
        let mut plan = MountPlan::new(Path::new("/c/overlays"), &exists);
        plan.private_tmp(Path::new("/c/tmp"));
        plan.bind(Path::new("/pod/hosts"), Path::new("/etc/hosts"), false);
        plan.bind(
            Path::new("/pod/volumes/m"),
            Path::new("/var/log/katib"),
            true,
        );
        plan.bind(
            Path::new("/pod/volumes/e"),
            Path::new("/etc/istio/proxy"),
            true,
        );
        plan.bind(
            Path::new("/pod/volumes/o"),
            Path::new("/var/log/other/deep"),
            true,
        );
        plan.bind(Path::new("/pod/sock"), Path::new("/tmp/run/sock"), false);
        let steps: Vec<&str> = plan.steps().map(String::as_str).collect();
        assert_eq!(
            steps.join(" "),
            "bind /c/tmp /tmp \
             tmpfs /c/overlays overlay /var/log /c/overlays/2/upper /c/overlays/2/work \
             mkdir /var/log/katib \
             overlay /etc /c/overlays/3/upper /c/overlays/3/work mkdir /etc/istio/proxy \
             mkdir /var/log/other/deep \
             mkdir /tmp/run touch /tmp/run/sock \
             bind /pod/hosts /etc/hosts bind /pod/volumes/m /var/log/katib \
             bind /pod/volumes/e /etc/istio/proxy bind /pod/volumes/o /var/log/other/deep \
             bind /pod/sock /tmp/run/sock"
        );
    }
}
