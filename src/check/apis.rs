//! Which APIs tenancy-fixer uses are served, and what each `auto` setting resolves to.

use serde::Serialize;

use super::{Finding, Severity};
use crate::{
    config::{Capabilities, Choice, Config, LEGACY_ISTIO_RBAC, Modes, Settings},
    istio::ManagedKind,
    model::WorkloadKind,
    policy::{TRIAL_GROUP, TRIAL_VERSIONS},
    runtime::word,
};

/// An API tenancy-fixer reads, writes or admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// kubeflow.org/v1 Profile: what the controller reconciles.
    Profile,
    /// A kind the controller keeps per profile.
    Managed(ManagedKind),
    /// Katib's Trial of this version (the Trial webhook labels them).
    Trial(&'static str),
    /// Katib's Experiment (read by nobody here; says whether Katib is installed).
    Experiment,
    /// KFP's ScheduledWorkflow (says whether Kubeflow Pipelines is installed).
    ScheduledWorkflow,
    /// A kind Katib runs trials as (the workloads webhook's rules follow the served ones).
    Workload(WorkloadKind),
}

impl Api {
    /// Every API `check` reports, in the order of its table.
    pub fn all() -> Vec<Api> {
        let mut all = vec![Api::Profile, Api::Managed(ManagedKind::PodDefault)];
        all.extend(TRIAL_VERSIONS.map(Api::Trial));
        all.push(Api::Experiment);
        all.extend(
            [
                ManagedKind::AuthorizationPolicy,
                ManagedKind::EnvoyFilter,
                ManagedKind::ServiceRoleBinding,
            ]
            .map(Api::Managed),
        );
        all.push(Api::ScheduledWorkflow);
        all.extend(WorkloadKind::ALL.map(Api::Workload));
        all
    }

    /// `group/version` (`v1` for the core group).
    pub fn api_version(self) -> String {
        match self {
            Api::Profile => "kubeflow.org/v1".into(),
            Api::Managed(kind) => kind.api_resource().api_version,
            Api::Trial(version) => format!("{TRIAL_GROUP}/{version}"),
            Api::Experiment | Api::ScheduledWorkflow => "kubeflow.org/v1beta1".into(),
            Api::Workload(kind) => {
                let (group, version, _, _) = kind.gvkr();
                format!("{group}/{version}")
            }
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Api::Profile => "Profile",
            Api::Managed(kind) => match kind {
                ManagedKind::EnvoyFilter => "EnvoyFilter",
                ManagedKind::AuthorizationPolicy => "AuthorizationPolicy",
                ManagedKind::ServiceRoleBinding => "ServiceRoleBinding",
                ManagedKind::PodDefault => "PodDefault",
            },
            Api::Trial(_) => "Trial",
            Api::Experiment => "Experiment",
            Api::ScheduledWorkflow => "ScheduledWorkflow",
            Api::Workload(kind) => kind.name(),
        }
    }

    /// The project that publishes it.
    pub fn project(self) -> &'static str {
        match self {
            Api::Profile | Api::Managed(ManagedKind::PodDefault) => "Kubeflow",
            Api::Managed(_) => "Istio",
            Api::Trial(_) | Api::Experiment => "Katib",
            Api::ScheduledWorkflow => "KFP",
            Api::Workload(WorkloadKind::Job) => "Kubernetes",
            Api::Workload(WorkloadKind::JobSet) => "JobSet",
            Api::Workload(WorkloadKind::TrainJob) => "Trainer",
            Api::Workload(_) => "Training Operator",
        }
    }

    /// What tenancy-fixer does with it.
    pub fn used_for(self) -> &'static str {
        match self {
            Api::Profile => "reconciled by the controller",
            Api::Managed(ManagedKind::PodDefault) => "kept per profile (token mode)",
            Api::Managed(ManagedKind::EnvoyFilter) => "kept per profile (header mode)",
            Api::Managed(ManagedKind::AuthorizationPolicy) => "the grant (header mode)",
            Api::Managed(ManagedKind::ServiceRoleBinding) => {
                "the legacy grant (header mode, Istio < 1.6)"
            }
            Api::Trial(_) => "labelled by the trials webhook",
            Api::Experiment => "(Katib installed)",
            Api::ScheduledWorkflow => "(Kubeflow Pipelines installed)",
            Api::Workload(_) => "trial workloads: pod templates labelled",
        }
    }
}

/// The managed kinds among the served APIs.
pub fn managed_kinds(served: &[Api]) -> Vec<ManagedKind> {
    served
        .iter()
        .filter_map(|api| match api {
            Api::Managed(kind) => Some(*kind),
            _ => None,
        })
        .collect()
}

/// A line of the APIs table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiRow {
    pub project: &'static str,
    pub api_version: String,
    pub kind: &'static str,
    pub served: bool,
    pub used_for: &'static str,
}

pub fn rows(served: &[Api]) -> Vec<ApiRow> {
    Api::all()
        .into_iter()
        .map(|api| ApiRow {
            project: api.project(),
            api_version: api.api_version(),
            kind: api.kind(),
            served: served.contains(&api),
            used_for: api.used_for(),
        })
        .collect()
}

/// A line of the settings table: a setting that may say `auto`, and what it resolved to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModeRow {
    /// The key in the settings file.
    pub setting: &'static str,
    /// `auto`, or the value written.
    pub configured: String,
    pub resolved: String,
    pub why: String,
}

pub fn modes(settings: &Settings, capabilities: &Capabilities, modes: &Modes) -> Vec<ModeRow> {
    let why = |auto: bool| {
        if !auto {
            "set in the configuration".to_string()
        } else if capabilities.serves(LEGACY_ISTIO_RBAC) {
            format!("auto: {LEGACY_ISTIO_RBAC} is served (Istio < 1.6): the prototype's recipe")
        } else {
            format!("auto: {LEGACY_ISTIO_RBAC} is not served: the modern recipe")
        }
    };
    fn row<T: Serialize, R: Serialize>(
        setting: &'static str,
        choice: &Choice<T>,
        resolved: &R,
        why: impl Fn(bool) -> String,
    ) -> ModeRow {
        ModeRow {
            setting,
            configured: word(choice),
            resolved: word(resolved),
            why: why(matches!(choice, Choice::Auto)),
        }
    }
    vec![
        row("kfpAccess", &settings.kfp_access, &modes.kfp_access, why),
        row("istioRbac", &settings.istio_rbac, &modes.istio_rbac, why),
        row(
            "katib.proxyStartup",
            &settings.katib.proxy_startup,
            &modes.proxy_startup,
            why,
        ),
        row(
            "katib.proxyShutdown",
            &settings.katib.proxy_shutdown,
            &modes.proxy_shutdown,
            why,
        ),
    ]
}

/// The APIs' problems: the controller needs Profiles and the kinds its mode keeps.
pub fn findings(served: &[Api], config: &Config) -> Vec<Finding> {
    let mut findings = Vec::new();
    let missing = |api: Api, what: &str, fix: String| {
        Finding::problem(
            Severity::Error,
            "api-served",
            format!("{} {}", api.api_version(), api.kind()),
            format!("not served: {what}"),
            fix,
        )
    };
    if !served.contains(&Api::Profile) {
        findings.push(missing(
            Api::Profile,
            "the controller has no Profile to keep objects for",
            "install Kubeflow's Profile CRD (profiles.kubeflow.org)".into(),
        ));
    }
    for kind in ManagedKind::wanted(config) {
        let api = Api::Managed(kind);
        if !served.contains(&api) {
            findings.push(missing(
                api,
                "the configured mode keeps it for every profile, and cannot",
                format!(
                    "install its CRD ({}.{}) and restart serve, or choose another kfpAccess/istioRbac",
                    kind.api_resource().plural,
                    kind.gvk().group
                ),
            ));
        }
    }
    if findings.is_empty() {
        findings.push(Finding::ok(
            "api-served",
            "kubeflow.org/v1 Profile",
            format!(
                "served, and so is every kind the mode keeps ({})",
                ManagedKind::wanted(config)
                    .iter()
                    .map(|k| Api::Managed(*k).kind())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    if !TRIAL_VERSIONS
        .iter()
        .any(|v| served.contains(&Api::Trial(v)))
    {
        findings.push(Finding::info(
            "api-served",
            format!("{TRIAL_GROUP} Trial"),
            "not served (Katib is not installed): the Trial and trial-workload rules have nothing to do",
        ));
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::config;

    fn without(apis: &[Api]) -> Vec<Api> {
        Api::all()
            .into_iter()
            .filter(|a| !apis.contains(a))
            .collect()
    }

    fn checks(findings: &[Finding]) -> Vec<(Severity, &str)> {
        findings
            .iter()
            .map(|f| (f.severity, f.subject.as_str()))
            .collect()
    }

    #[test]
    fn every_api_has_its_group_version_and_kind() {
        let rows = rows(&[Api::Profile]);
        let shown: Vec<String> = rows
            .iter()
            .map(|r| format!("{} {}", r.api_version, r.kind))
            .collect();
        for expected in [
            "kubeflow.org/v1 Profile",
            "kubeflow.org/v1alpha1 PodDefault",
            "kubeflow.org/v1beta1 Trial",
            "kubeflow.org/v1alpha3 Trial",
            "kubeflow.org/v1beta1 Experiment",
            "security.istio.io/v1 AuthorizationPolicy",
            "networking.istio.io/v1alpha3 EnvoyFilter",
            "rbac.istio.io/v1alpha1 ServiceRoleBinding",
            "kubeflow.org/v1beta1 ScheduledWorkflow",
            "batch/v1 Job",
            "kubeflow.org/v1 PyTorchJob",
            "jobset.x-k8s.io/v1alpha2 JobSet",
            "trainer.kubeflow.org/v1alpha1 TrainJob",
        ] {
            assert!(
                shown.contains(&expected.to_string()),
                "{expected}: {shown:?}"
            );
        }
        assert_eq!(rows.len(), Api::all().len());
        assert_eq!(rows.iter().filter(|r| r.served).count(), 1);
        assert_eq!(rows[0].project, "Kubeflow");
        // The kinds agree with the builders'.
        for kind in ManagedKind::ALL {
            assert_eq!(Api::Managed(kind).kind(), kind.gvk().kind);
        }
    }

    #[test]
    fn everything_served_is_one_ok() {
        let findings = findings(&Api::all(), &config(""));
        assert_eq!(
            checks(&findings),
            [(Severity::Ok, "kubeflow.org/v1 Profile")]
        );
        assert!(
            findings[0].what.contains("PodDefault"),
            "{}",
            findings[0].what
        );
    }

    #[test]
    fn missing_profiles_or_kinds_of_the_mode_are_errors() {
        let served = without(&[Api::Profile, Api::Managed(ManagedKind::PodDefault)]);
        let token = findings(&served, &config("kfpAccess: token"));
        assert_eq!(
            checks(&token),
            [
                (Severity::Error, "kubeflow.org/v1 Profile"),
                (Severity::Error, "kubeflow.org/v1alpha1 PodDefault")
            ]
        );
        assert!(
            token[1]
                .fix
                .as_deref()
                .unwrap()
                .contains("poddefaults.kubeflow.org")
        );
        // Header mode does not keep PodDefaults, but the legacy grant when so configured.
        let served = without(&[Api::Managed(ManagedKind::ServiceRoleBinding)]);
        let header = findings(
            &served,
            &config("kfpAccess: header\nistioRbac: service-role-binding"),
        );
        assert_eq!(
            checks(&header),
            [(Severity::Error, "rbac.istio.io/v1alpha1 ServiceRoleBinding")]
        );
        assert_eq!(
            checks(&findings(&served, &config("kfpAccess: header"))),
            [(Severity::Ok, "kubeflow.org/v1 Profile")]
        );
    }

    #[test]
    fn katib_absent_is_worth_knowing_and_one_trial_version_is_enough() {
        let no_katib = without(&TRIAL_VERSIONS.map(Api::Trial));
        let found = findings(&no_katib, &config(""));
        assert_eq!(
            checks(&found),
            [
                (Severity::Ok, "kubeflow.org/v1 Profile"),
                (Severity::Info, "kubeflow.org Trial")
            ]
        );
        let v1beta1_only = without(&[Api::Trial("v1alpha3")]);
        assert_eq!(findings(&v1beta1_only, &config("")).len(), 1);
    }

    #[test]
    fn modes_say_what_auto_resolved_to_and_why() {
        let settings = Settings::from_yaml("katib:\n  proxyShutdown: pkill\n", "t").unwrap();
        let legacy = Capabilities::from_group_versions([LEGACY_ISTIO_RBAC]);
        let modes_of = |caps: &Capabilities| {
            let resolved = settings.clone().resolve(caps).modes;
            modes(&settings, caps, &resolved)
        };
        let shown = |rows: Vec<ModeRow>| -> Vec<(String, String, bool)> {
            rows.into_iter()
                .map(|r| {
                    (
                        format!("{}={}", r.setting, r.configured),
                        r.resolved,
                        r.why.contains("is served"),
                    )
                })
                .collect()
        };
        assert_eq!(
            shown(modes_of(&legacy)),
            [
                ("kfpAccess=auto".into(), "header".into(), true),
                ("istioRbac=auto".into(), "service-role-binding".into(), true),
                ("katib.proxyStartup=auto".into(), "sleep".into(), true),
                ("katib.proxyShutdown=pkill".into(), "pkill".into(), false),
            ]
        );
        let modern = modes_of(&Capabilities::modern());
        assert_eq!(modern[0].resolved, "token");
        assert!(modern[0].why.contains("is not served"), "{}", modern[0].why);
        assert_eq!(modern[3].why, "set in the configuration");
    }
}
