//! Prometheus metrics, served as text on their own port (`serve --metrics-listen`, plain HTTP
//! `GET /metrics`): admission requests by webhook, kind and outcome, the rules that changed
//! objects, review latency, requests refused before a review (by HTTP status: 413 is an
//! oversized body); the controller's reconciles, failures and writes and whether this replica
//! leads; the serving certificate's expiry. One process-wide registry, written to by atomic
//! counters only: no request waits for another.

use std::sync::LazyLock;

use prometheus_client::{
    encoding::{EncodeLabelSet, text},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::controller::Stats;

/// The metric name prefix.
const PREFIX: &str = "tenancy_fixer";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    webhook: &'static str,
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    webhook: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    webhook: &'static str,
    status: u16,
}

/// Review latency buckets: 10 µs to ~0.33 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-5, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    rules: Family<RuleLabels, Counter>,
    latency: Family<WebhookLabels, Histogram, fn() -> Histogram>,
    refused: Family<RefusedLabels, Counter>,
    certificate_expiry: Gauge,
}

impl Metrics {
    /// The metrics of this process, with the controller's `stats` among them.
    fn new(stats: &Stats) -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "admission_requests",
            "Admission reviews answered, by webhook path, kind of object and outcome (patched or unchanged)",
            requests.clone(),
        );
        let rules = Family::<RuleLabels, Counter>::default();
        registry.register(
            "admission_rule_applications",
            "Objects changed by each admission rule",
            rules.clone(),
        );
        let latency = Family::<WebhookLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "admission_review_seconds",
            "Time from the whole body read to the answer, by webhook path",
            latency.clone(),
        );
        let refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "admission_refused_requests",
            "Requests answered without a review (not an AdmissionReview, oversized, too slow), by HTTP status",
            refused.clone(),
        );
        let certificate_expiry = Gauge::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When the serving certificate loaded last expires (Unix time; 0 before one is loaded)",
            certificate_expiry.clone(),
        );
        stats.register(registry.sub_registry_with_prefix("controller"));
        Metrics {
            registry,
            requests,
            rules,
            latency,
            refused,
            certificate_expiry,
        }
    }

    /// One answered review on `webhook` (one of [`crate::webhook::MUTATE_PATHS`]).
    pub fn reviewed(
        &self,
        webhook: &'static str,
        outcome: &crate::admission::Outcome,
        seconds: f64,
    ) {
        let labels = RequestLabels {
            webhook,
            kind: outcome.kind,
            outcome: if outcome.patched {
                "patched"
            } else {
                "unchanged"
            },
        };
        self.requests.get_or_create(&labels).inc();
        for &rule in &outcome.rules {
            self.rules.get_or_create(&RuleLabels { rule }).inc();
        }
        self.latency
            .get_or_create(&WebhookLabels { webhook })
            .observe(seconds);
    }

    /// A request on `webhook` answered with `status` instead of a review.
    pub fn refused(&self, webhook: &'static str, status: u16) {
        self.refused
            .get_or_create(&RefusedLabels { webhook, status })
            .inc();
    }

    /// The serving certificate now in use expires at `unix_seconds`.
    pub fn certificate_expires(&self, unix_seconds: i64) {
        self.certificate_expiry.set(unix_seconds);
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = text::encode(&mut out, &self.registry);
        out
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics::new(&crate::controller::stats()));

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::Outcome;

    #[test]
    fn reviews_refusals_rules_and_certificate_are_counted() {
        let stats = std::sync::Arc::new(Stats::default());
        let m = Metrics::new(&stats);
        let patched = Outcome {
            kind: "Pod",
            patched: true,
            rules: vec!["notebook-label", "kfp-token"],
        };
        m.reviewed("/mutate/pods", &patched, 0.000_02);
        m.reviewed("/mutate/pods", &patched, 0.000_02);
        let unchanged = Outcome {
            kind: "Job",
            patched: false,
            rules: vec![],
        };
        m.reviewed("/mutate/jobs", &unchanged, 0.5);
        m.refused("/mutate", 413);
        m.certificate_expires(1_900_000_000);
        let leading = stats.lead();
        let text = m.encode();
        drop(leading);
        assert!(
            m.encode()
                .lines()
                .any(|l| l == "tenancy_fixer_controller_leader 0"),
            "the gauge falls when the controller stops"
        );
        for expected in [
            r#"tenancy_fixer_admission_requests_total{webhook="/mutate/pods",kind="Pod",outcome="patched"} 2"#,
            r#"tenancy_fixer_admission_requests_total{webhook="/mutate/jobs",kind="Job",outcome="unchanged"} 1"#,
            r#"tenancy_fixer_admission_rule_applications_total{rule="kfp-token"} 2"#,
            r#"tenancy_fixer_admission_review_seconds_count{webhook="/mutate/jobs"} 1"#,
            r#"tenancy_fixer_admission_refused_requests_total{webhook="/mutate",status="413"} 1"#,
            "tenancy_fixer_certificate_expiry_timestamp_seconds 1900000000",
            "tenancy_fixer_controller_applies_total 0",
            "tenancy_fixer_controller_deletes_total 0",
            "tenancy_fixer_controller_leader 1",
        ] {
            assert!(text.lines().any(|l| l == expected), "{expected}\n{text}");
        }
        assert_eq!(
            text.matches("tenancy_fixer_admission_requests_total{")
                .count(),
            2,
            "{text}"
        );
    }
}
