//! `check`: what is wrong in a cluster, judged from what was read from it. Facts in, a
//! [`Report`] out, no I/O (the reading and the rendering are `cli/check.rs`). One file per area:
//! - [`apis`]: which Kubeflow, Katib, Istio and KFP APIs are served, what `auto` resolves to;
//! - [`webhook`]: our MutatingWebhookConfiguration, its caBundle against the certificate its
//!   endpoint presents, the endpoint's answer to a review;
//! - [`profiles`]: the controller's own plan ([`crate::controller::plan`]) for every Profile,
//!   against what is stored: objects missing, foreign objects in the way;
//! - [`traps`]: Katib's collector waiting for all processes, webhook order, native sidecars.
//!
//! Every finding has a severity; `warning` and `error` are problems and make `check` exit 1.

pub mod apis;
pub mod profiles;
pub mod traps;
pub mod webhook;

use serde::Serialize;

use crate::config::{Capabilities, Settings};

/// How bad a finding is. Ordered: a larger one is worse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Checked and fine.
    Ok,
    /// Worth knowing; nothing to fix.
    Info,
    /// Works now, breaks some workloads or later: a problem.
    Warning,
    /// Broken: a problem.
    Error,
}

impl Severity {
    pub fn is_problem(self) -> bool {
        self >= Severity::Warning
    }
}

/// One judgement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// Which judgement (stable, kebab-case), e.g. `webhook-ca-bundle`.
    pub check: &'static str,
    /// What it is about: an object, a setting, a webhook.
    pub subject: String,
    pub what: String,
    /// One line saying how to fix it (problems only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    fn new(
        severity: Severity,
        check: &'static str,
        subject: impl Into<String>,
        what: impl Into<String>,
    ) -> Finding {
        Finding {
            severity,
            check,
            subject: subject.into(),
            what: what.into(),
            fix: None,
        }
    }

    fn ok(check: &'static str, subject: impl Into<String>, what: impl Into<String>) -> Finding {
        Finding::new(Severity::Ok, check, subject, what)
    }

    fn info(check: &'static str, subject: impl Into<String>, what: impl Into<String>) -> Finding {
        Finding::new(Severity::Info, check, subject, what)
    }

    fn problem(
        severity: Severity,
        check: &'static str,
        subject: impl Into<String>,
        what: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding::new(severity, check, subject, what).with_fix(fix)
    }

    fn with_fix(mut self, fix: impl Into<String>) -> Finding {
        self.fix = Some(fix.into());
        self
    }
}

/// Findings that say the same of several subjects become one, naming them all (in order).
fn merge_subjects(findings: Vec<Finding>) -> Vec<Finding> {
    let mut merged: Vec<Finding> = Vec::new();
    for finding in findings {
        let same = merged.iter_mut().find(|m| {
            (m.severity, m.check, &m.what, &m.fix)
                == (finding.severity, finding.check, &finding.what, &finding.fix)
        });
        match same {
            Some(m) if m.subject.split(", ").any(|s| s == finding.subject) => {}
            Some(m) => {
                m.subject.push_str(", ");
                m.subject.push_str(&finding.subject);
            }
            None => merged.push(finding),
        }
    }
    merged
}

/// The settings `check` judges by, and where they came from.
#[derive(Clone, Debug)]
pub struct SettingsFacts {
    /// E.g. `file config.yaml`, `ConfigMap tenancy-fixer/tenancy-fixer`.
    pub source: String,
    pub settings: Settings,
    /// Why the install's settings could not be used (the defaults were used instead).
    pub problem: Option<String>,
}

/// Everything read from the cluster.
#[derive(Clone, Debug)]
pub struct Facts {
    pub settings: SettingsFacts,
    /// The group/versions served (API discovery), which `auto` is resolved from.
    pub capabilities: Capabilities,
    /// Which of [`apis::Api::all`] are served.
    pub served: Vec<apis::Api>,
    pub webhook: webhook::WebhookFacts,
    pub profiles: profiles::ProfilesFacts,
    pub traps: traps::TrapFacts,
}

/// What `check` prints (`-o json` is this, serialized).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Where the settings came from.
    pub settings: String,
    pub apis: Vec<apis::ApiRow>,
    pub modes: Vec<apis::ModeRow>,
    /// Ordered by area: settings, APIs, webhook, profiles, traps.
    pub findings: Vec<Finding>,
    pub summary: Summary,
}

/// How many findings of each severity, and the exit code they make.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub ok: usize,
    pub info: usize,
    pub warnings: usize,
    pub errors: usize,
    /// 0 when nothing is a problem, 1 otherwise.
    pub exit_code: u8,
}

impl Summary {
    fn of(findings: &[Finding]) -> Summary {
        let count = |severity| findings.iter().filter(|f| f.severity == severity).count();
        let (warnings, errors) = (count(Severity::Warning), count(Severity::Error));
        Summary {
            ok: count(Severity::Ok),
            info: count(Severity::Info),
            warnings,
            errors,
            exit_code: u8::from(warnings + errors > 0),
        }
    }

    pub fn problems(&self) -> usize {
        self.warnings + self.errors
    }
}

/// Judges everything read.
pub fn judge(facts: &Facts) -> Report {
    let Facts {
        settings,
        capabilities,
        served,
        webhook,
        profiles,
        traps,
    } = facts;
    let config = settings.settings.clone().resolve(capabilities);
    let mut findings = Vec::new();
    if let Some(problem) = &settings.problem {
        findings.push(Finding::problem(
            Severity::Error,
            "settings",
            &settings.source,
            format!("{problem}: serve cannot start with them; judged with the defaults"),
            "fix the key named (README \"Configuration\") and restart serve",
        ));
    }
    findings.extend(apis::findings(served, &config));
    findings.extend(webhook::findings(webhook, &config));
    findings.extend(profiles::findings(
        profiles,
        &config,
        &apis::managed_kinds(served),
    ));
    findings.extend(traps::findings(traps, &config));
    Report {
        settings: settings.source.clone(),
        apis: apis::rows(served),
        modes: apis::modes(&settings.settings, capabilities, &config.modes),
        summary: Summary::of(&findings),
        findings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(severity: Severity, subject: &str, what: &str) -> Finding {
        Finding::new(severity, "test", subject, what)
    }

    #[test]
    fn problems_are_warnings_and_errors_and_make_exit_code_one() {
        assert!(!Severity::Ok.is_problem() && !Severity::Info.is_problem());
        assert!(Severity::Warning.is_problem() && Severity::Error.is_problem());
        let fine = [
            finding(Severity::Ok, "a", "x"),
            finding(Severity::Info, "b", "y"),
        ];
        assert_eq!(
            Summary::of(&fine),
            Summary {
                ok: 1,
                info: 1,
                warnings: 0,
                errors: 0,
                exit_code: 0
            }
        );
        for bad in [Severity::Warning, Severity::Error] {
            let summary = Summary::of(&[finding(Severity::Ok, "a", "x"), finding(bad, "c", "z")]);
            assert_eq!((summary.exit_code, summary.problems()), (1, 1), "{bad:?}");
        }
    }

    #[test]
    fn the_same_judgement_of_several_subjects_is_one_finding() {
        let merged = merge_subjects(vec![
            finding(Severity::Error, "pods", "refused"),
            finding(Severity::Error, "jobs", "refused"),
            finding(Severity::Error, "pods", "refused"),
            finding(Severity::Warning, "trials", "refused"),
            finding(Severity::Error, "trials", "other"),
        ]);
        let shown: Vec<(&str, &str)> = merged
            .iter()
            .map(|f| (f.subject.as_str(), f.what.as_str()))
            .collect();
        assert_eq!(
            shown,
            [
                ("pods, jobs", "refused"),
                ("trials", "refused"),
                ("trials", "other")
            ]
        );
    }

    #[test]
    fn unusable_install_settings_are_an_error_and_the_defaults_are_judged() {
        let facts = Facts {
            settings: SettingsFacts {
                source: "ConfigMap tenancy-fixer/tenancy-fixer".into(),
                settings: Settings::default(),
                problem: Some("kfpAccess: unsupported value cookies".into()),
            },
            capabilities: Capabilities::modern(),
            served: apis::Api::all(),
            webhook: webhook::WebhookFacts::default(),
            profiles: profiles::ProfilesFacts::default(),
            traps: traps::TrapFacts::default(),
        };
        let report = judge(&facts);
        let first = &report.findings[0];
        assert_eq!((first.severity, first.check), (Severity::Error, "settings"));
        assert!(first.what.contains("cookies"), "{}", first.what);
        assert_eq!(report.summary.exit_code, 1);
        let kfp = report
            .modes
            .iter()
            .find(|m| m.setting == "kfpAccess")
            .unwrap();
        assert_eq!(
            (kfp.configured.as_str(), kfp.resolved.as_str()),
            ("auto", "token")
        );
    }

    #[test]
    fn the_json_shape_is_stable() {
        let facts = Facts {
            settings: SettingsFacts {
                source: "defaults".into(),
                settings: Settings::default(),
                problem: None,
            },
            capabilities: Capabilities::modern(),
            served: vec![apis::Api::Profile],
            webhook: webhook::WebhookFacts::default(),
            profiles: profiles::ProfilesFacts::default(),
            traps: traps::TrapFacts::default(),
        };
        let json = serde_json::to_value(judge(&facts)).unwrap();
        let keys = |v: &serde_json::Value| -> Vec<String> {
            let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            keys.sort();
            keys
        };
        assert_eq!(
            keys(&json),
            ["apis", "findings", "modes", "settings", "summary"]
        );
        assert_eq!(
            keys(&json["apis"][0]),
            ["apiVersion", "kind", "project", "served", "usedFor"]
        );
        assert_eq!(
            keys(&json["modes"][0]),
            ["configured", "resolved", "setting", "why"]
        );
        assert_eq!(
            keys(&json["summary"]),
            ["errors", "exitCode", "info", "ok", "warnings"]
        );
        let findings = json["findings"].as_array().unwrap();
        let unregistered = findings
            .iter()
            .find(|f| f["check"] == "webhook-registered")
            .unwrap();
        assert_eq!(
            keys(unregistered),
            ["check", "fix", "severity", "subject", "what"]
        );
        assert_eq!(unregistered["severity"], "error");
        let none = findings.iter().find(|f| f["severity"] == "info").unwrap();
        assert_eq!(
            keys(none),
            ["check", "severity", "subject", "what"],
            "no fix: no key"
        );
        assert_eq!(json["summary"]["exitCode"], 1);
    }
}
