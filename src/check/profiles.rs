//! Which Profiles lack their objects, or have foreign ones in the way: the controller's own
//! decisions ([`controller::desired`] and [`controller::plan`]) over what is stored, reported
//! instead of executed.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{ResourceExt, api::DynamicObject};

use super::{Finding, Severity};
use crate::{
    config::Config,
    controller::{self, HeldBack, NamespaceState, Refusal, Report},
    istio::{ManagedKind, OwnerProblem},
    model::Profile,
};

/// What was read about Profiles and what is kept for them.
#[derive(Clone, Debug, Default)]
pub struct ProfilesFacts {
    pub profiles: Vec<ProfileFacts>,
    /// The Kubeflow namespace (the grants live there), if it exists.
    pub kubeflow_namespace: Option<ObjectMeta>,
    /// Every object of the served managed kinds, in all namespaces.
    pub objects: Vec<(ManagedKind, Arc<DynamicObject>)>,
}

#[derive(Clone, Debug)]
pub struct ProfileFacts {
    pub profile: Profile,
    /// The namespace of the profile's name, if it exists.
    pub namespace: Option<ObjectMeta>,
}

const OBJECTS: &str = "profile-objects";
const FOREIGN: &str = "profile-foreign-object";
const REFUSED: &str = "profile-refused";
const LOGS: &str =
    "is serve running and leading? kubectl -n tenancy-fixer logs deploy/tenancy-fixer";

/// The objects stored for `profile` as the controller's caches would give them, plus anything
/// at the places of its objects (the controller meets those when it creates: foreign ones).
pub fn stored_for(
    profile: &str,
    config: &Config,
    objects: &[(ManagedKind, Arc<DynamicObject>)],
) -> Vec<(ManagedKind, Arc<DynamicObject>)> {
    objects
        .iter()
        .filter(|(kind, object)| {
            controller::labelled_for(object, profile)
                || (object.namespace().as_deref() == Some(&kind.namespace_for(profile, config))
                    && object.name_any() == kind.object_name(profile, config))
        })
        .map(|(kind, object)| (*kind, Arc::clone(object)))
        .collect()
}

/// Every profile's findings.
pub fn findings(facts: &ProfilesFacts, config: &Config, served: &[ManagedKind]) -> Vec<Finding> {
    let kubeflow = NamespaceState::of(facts.kubeflow_namespace.as_ref());
    let findings: Vec<Finding> = facts
        .profiles
        .iter()
        .flat_map(|p| judge_profile(p, config, served, kubeflow, &facts.objects))
        .collect();
    if facts.profiles.is_empty() {
        return vec![Finding::info(OBJECTS, "Profiles", "none: nothing to keep")];
    }
    super::merge_subjects(findings)
}

fn judge_profile(
    facts: &ProfileFacts,
    config: &Config,
    served: &[ManagedKind],
    kubeflow: NamespaceState,
    objects: &[(ManagedKind, Arc<DynamicObject>)],
) -> Vec<Finding> {
    let profile = &facts.profile;
    let name = profile.name_any();
    let subject = format!("Profile {name}");
    if profile.metadata.deletion_timestamp.is_some() {
        return vec![Finding::info(OBJECTS, subject, "being deleted")];
    }
    let mut desired =
        controller::desired(profile, config, served, facts.namespace.as_ref(), kubeflow);
    let stored = stored_for(&name, config, objects);
    let plan = controller::plan(&name, config, std::mem::take(&mut desired.objects), &stored);

    let mut findings: Vec<Finding> = desired
        .refusals()
        .into_iter()
        .map(|refusal| judge_refusal(refusal, profile))
        .collect();
    for (kind, held) in &desired.held_back {
        if let HeldBack::Namespace {
            namespace_is_kubeflow,
            state,
        } = held
        {
            let namespace = if *namespace_is_kubeflow {
                config.settings.kubeflow_namespace.clone()
            } else {
                name.clone()
            };
            let state = match state {
                NamespaceState::Missing => "does not exist",
                _ => "is being deleted",
            };
            findings.push(if *namespace_is_kubeflow {
                Finding::problem(
                    Severity::Warning,
                    OBJECTS,
                    &subject,
                    format!("the Kubeflow namespace {namespace} {state}: no {kind:?} is kept"),
                    "install Kubeflow, or set kubeflowNamespace",
                )
            } else {
                Finding::info(
                    OBJECTS,
                    &subject,
                    format!("namespace {namespace} {state}: nothing is kept until it exists"),
                )
            });
        }
    }
    for (kind, object) in &plan.create {
        findings.push(Finding::problem(
            Severity::Error,
            OBJECTS,
            &subject,
            format!("{kind:?} {} is missing", place(object)),
            LOGS,
        ));
    }
    for (kind, object) in &plan.update {
        findings.push(Finding::problem(
            Severity::Warning,
            OBJECTS,
            &subject,
            format!(
                "{kind:?} {} differs from what the mode keeps: the controller updates it at its \
                 next reconcile",
                place(object)
            ),
            format!("if it stays so, {LOGS}"),
        ));
    }
    for (kind, object) in &plan.delete {
        findings.push(Finding::problem(
            Severity::Warning,
            OBJECTS,
            &subject,
            format!(
                "{kind:?} {} is ours but no longer kept (another mode, namespace refused): the \
                 controller deletes it at its next reconcile",
                place(object)
            ),
            format!("if it stays so, {LOGS}"),
        ));
    }
    for foreign in &plan.foreign {
        let report = Report::foreign(foreign);
        findings.push(if foreign.satisfies {
            Finding::info(FOREIGN, &subject, report.note)
        } else {
            let resource = foreign.kind.api_resource();
            Finding::problem(
                Severity::Error,
                FOREIGN,
                &subject,
                report.note,
                format!(
                    "if nobody needs it: kubectl -n {} delete {}.{} {} (tenancy-fixer creates its \
                     own at the profile's next reconcile, within {} minutes)",
                    foreign.namespace,
                    resource.plural,
                    resource.group,
                    foreign.name,
                    controller::RESYNC.as_secs() / 60
                ),
            )
        });
    }
    if findings.is_empty() {
        findings.push(Finding::ok(
            OBJECTS,
            subject,
            format!(
                "{} object(s) in place ({})",
                plan.unchanged,
                ManagedKind::wanted(config)
                    .iter()
                    .map(|k| format!("{k:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    findings
}

fn place(object: &DynamicObject) -> String {
    format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

/// A refusal, with the note the controller publishes as an Event.
fn judge_refusal(refusal: Refusal, profile: &Profile) -> Finding {
    let note = Report::refusal(refusal, profile).note;
    let subject = format!("Profile {}", profile.name_any());
    match refusal {
        Refusal::ReservedNamespace => Finding::info(REFUSED, subject, note),
        Refusal::NamespaceNotOwned => Finding::problem(
            Severity::Warning,
            REFUSED,
            subject,
            note,
            "let Kubeflow's profile-controller create the namespace (it sets the Profile as its \
             controller owner)",
        ),
        Refusal::Owner(problem) => Finding::problem(
            Severity::Warning,
            REFUSED,
            subject,
            note,
            match problem {
                OwnerProblem::Empty => "set spec.owner.name of the Profile",
                _ => {
                    "spec.owner.name must be a plain user id (no control characters, no leading or trailing * or space)"
                }
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
    use serde_json::json;

    use super::*;
    use crate::{
        istio,
        testing::{config, profile},
    };

    const ALL: &[ManagedKind] = &ManagedKind::ALL;

    fn owned_namespace(p: &Profile) -> ObjectMeta {
        ObjectMeta {
            name: Some(p.name_any()),
            owner_references: Some(vec![OwnerReference {
                api_version: "kubeflow.org/v1".into(),
                kind: "Profile".into(),
                name: p.name_any(),
                uid: p.uid().unwrap(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        }
    }

    fn kubeflow() -> Option<ObjectMeta> {
        Some(ObjectMeta {
            name: Some("kubeflow".into()),
            ..ObjectMeta::default()
        })
    }

    /// Every object the mode keeps for `p`, as stored.
    fn kept(p: &Profile, c: &Config) -> Vec<(ManagedKind, Arc<DynamicObject>)> {
        ManagedKind::wanted(c)
            .into_iter()
            .map(|kind| {
                let mut object = istio::build(kind, p, c);
                object.metadata.uid = Some(format!("uid-{kind:?}"));
                object.metadata.resource_version = Some("1".into());
                (kind, Arc::new(object))
            })
            .collect()
    }

    fn facts(
        p: &Profile,
        namespace: Option<ObjectMeta>,
        objects: Vec<(ManagedKind, Arc<DynamicObject>)>,
    ) -> ProfilesFacts {
        ProfilesFacts {
            profiles: vec![ProfileFacts {
                profile: p.clone(),
                namespace,
            }],
            kubeflow_namespace: kubeflow(),
            objects,
        }
    }

    fn judged(facts: &ProfilesFacts, c: &Config) -> Vec<(Severity, &'static str, String)> {
        findings(facts, c, ALL)
            .into_iter()
            .map(|f| (f.severity, f.check, f.what))
            .collect()
    }

    #[test]
    fn a_profile_with_its_objects_is_ok_in_every_mode() {
        for mode in [
            "kfpAccess: token",
            "kfpAccess: header",
            "kfpAccess: header\nistioRbac: service-role-binding",
        ] {
            let (p, c) = (profile("alice", "a@x"), config(mode));
            let ns = Some(owned_namespace(&p));
            let found = judged(&facts(&p, ns, kept(&p, &c)), &c);
            assert_eq!(found.len(), 1, "{mode}: {found:?}");
            assert_eq!((found[0].0, found[0].1), (Severity::Ok, OBJECTS), "{mode}");
        }
    }

    #[test]
    fn missing_objects_are_errors_naming_each() {
        let (p, c) = (profile("alice", "a@x"), config("kfpAccess: header"));
        let found = judged(&facts(&p, Some(owned_namespace(&p)), vec![]), &c);
        assert_eq!(
            found,
            [
                (
                    Severity::Error,
                    OBJECTS,
                    "AuthorizationPolicy kubeflow/bind-ml-pipeline-alice is missing".into()
                ),
                (
                    Severity::Error,
                    OBJECTS,
                    "EnvoyFilter alice/tenancy-fixer-kubeflow-userid is missing".into()
                ),
            ]
        );
    }

    #[test]
    fn a_foreign_object_in_the_way_is_an_error_unless_it_gives_the_same_token() {
        let (p, c) = (profile("alice", "a@x"), config("kfpAccess: token"));
        let mut theirs = (*kept(&p, &c)[0].1).clone();
        theirs.metadata.labels = None;
        theirs.metadata.owner_references = None;
        let same_token = vec![(ManagedKind::PodDefault, Arc::new(theirs.clone()))];
        let found = findings(&facts(&p, Some(owned_namespace(&p)), same_token), &c, ALL);
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].severity, found[0].check),
            (Severity::Info, FOREIGN)
        );
        assert!(
            found[0].what.contains("gives the same"),
            "{}",
            found[0].what
        );

        theirs.data["spec"]["env"] = json!([{"name": "OTHER", "value": "x"}]);
        let other = vec![(ManagedKind::PodDefault, Arc::new(theirs))];
        let found = findings(&facts(&p, Some(owned_namespace(&p)), other), &c, ALL);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            (found[0].severity, found[0].check),
            (Severity::Error, FOREIGN)
        );
        assert!(
            found[0].what.contains("not made by tenancy-fixer"),
            "{}",
            found[0].what
        );
        assert_eq!(
            found[0].fix.as_deref(),
            Some(
                "if nobody needs it: kubectl -n alice delete poddefaults.kubeflow.org \
                 access-ml-pipeline (tenancy-fixer creates its own at the profile's next \
                 reconcile, within 10 minutes)"
            )
        );
    }

    #[test]
    fn drifted_and_leftover_objects_are_warnings() {
        let (p, c) = (profile("alice", "a@x"), config("kfpAccess: token"));
        let mut objects = kept(&p, &c);
        let mut drifted = (*objects[0].1).clone();
        drifted.data["spec"]["env"] = json!([]);
        objects[0].1 = Arc::new(drifted);
        // Ours from header mode: no longer kept.
        let header = config("kfpAccess: header");
        objects.push(kept(&p, &header).remove(1));
        let found = judged(&facts(&p, Some(owned_namespace(&p)), objects), &c);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.iter().all(|f| f.0 == Severity::Warning));
        assert!(
            found[0]
                .2
                .starts_with("PodDefault alice/access-ml-pipeline differs"),
            "{}",
            found[0].2
        );
        assert!(
            found[1].2.starts_with(
                "EnvoyFilter alice/tenancy-fixer-kubeflow-userid is ours but no longer kept"
            ),
            "{}",
            found[1].2
        );
    }

    #[test]
    fn refusals_are_reported_with_the_controllers_note() {
        let c = config("kfpAccess: header");
        // Namespace not controlled by the Profile: a warning, nothing kept.
        let p = profile("alice", "a@x");
        let plain = ObjectMeta {
            name: Some("alice".into()),
            ..ObjectMeta::default()
        };
        let found = findings(&facts(&p, Some(plain), vec![]), &c, ALL);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            (found[0].severity, found[0].check),
            (Severity::Warning, REFUSED)
        );
        assert!(found[0].what.contains("not controlled by this Profile"));
        // An owner that cannot be asserted.
        let p = profile("bob", "*");
        let found = findings(&facts(&p, Some(owned_namespace(&p)), vec![]), &c, ALL);
        assert_eq!(
            (found[0].severity, found[0].check),
            (Severity::Warning, REFUSED),
            "{found:?}"
        );
        assert_eq!(
            found.len(),
            1,
            "the owner-less kinds are header mode's only: {found:?}"
        );
        let p = profile("carol", "");
        let found = findings(&facts(&p, Some(owned_namespace(&p)), vec![]), &c, ALL);
        assert_eq!(
            found[0].fix.as_deref(),
            Some("set spec.owner.name of the Profile")
        );
        // The Kubeflow namespace's Profile: worth knowing.
        let p = profile("kubeflow", "a@x");
        let found = findings(&facts(&p, kubeflow(), vec![]), &c, ALL);
        assert_eq!(
            (found[0].severity, found[0].check),
            (Severity::Info, REFUSED)
        );
    }

    #[test]
    fn missing_namespaces_hold_back_and_say_so() {
        let c = config("kfpAccess: header");
        let p = profile("alice", "a@x");
        let found = judged(&facts(&p, None, vec![]), &c);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, Severity::Info);
        assert!(
            found[0].2.contains("namespace alice does not exist"),
            "{}",
            found[0].2
        );

        let mut no_kubeflow = facts(&p, Some(owned_namespace(&p)), kept(&p, &c)[1..].to_vec());
        no_kubeflow.kubeflow_namespace = None;
        let found = judged(&no_kubeflow, &c);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, Severity::Warning);
        assert!(
            found[0]
                .2
                .contains("the Kubeflow namespace kubeflow does not exist")
        );
    }

    #[test]
    fn profiles_being_deleted_or_none_at_all() {
        let c = config("");
        let mut p = profile("alice", "a@x");
        p.metadata.deletion_timestamp = Some(Time(Default::default()));
        let found = judged(&facts(&p, None, vec![]), &c);
        assert_eq!(found, [(Severity::Info, OBJECTS, "being deleted".into())]);
        let none = judged(&ProfilesFacts::default(), &c);
        assert_eq!(
            none,
            [(Severity::Info, OBJECTS, "none: nothing to keep".into())]
        );
    }

    #[test]
    fn unserved_kinds_are_the_apis_finding_not_each_profiles() {
        let (p, c) = (profile("alice", "a@x"), config("kfpAccess: token"));
        let found = findings(&facts(&p, Some(owned_namespace(&p)), vec![]), &c, &[]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].severity, Severity::Ok);
    }

    #[test]
    fn stored_for_a_profile_is_what_is_labelled_for_it_or_in_its_places() {
        let c = config("kfpAccess: header");
        let (alice, bob) = (profile("alice", "a@x"), profile("bob", "b@x"));
        let mut objects = kept(&alice, &c);
        objects.extend(kept(&bob, &c));
        let mut stranger = (*kept(&bob, &c)[1].1).clone();
        stranger.metadata.namespace = Some("alice".into());
        stranger.metadata.labels = None;
        objects.push((ManagedKind::EnvoyFilter, Arc::new(stranger)));
        let mut elsewhere = (*kept(&bob, &c)[1].1).clone();
        elsewhere.metadata.namespace = Some("carol".into());
        objects.push((ManagedKind::EnvoyFilter, Arc::new(elsewhere)));
        let places: Vec<String> = stored_for("alice", &c, &objects)
            .iter()
            .map(|(k, o)| format!("{k:?} {}", place(o)))
            .collect();
        assert_eq!(
            places,
            [
                "AuthorizationPolicy kubeflow/bind-ml-pipeline-alice",
                "EnvoyFilter alice/tenancy-fixer-kubeflow-userid",
                "EnvoyFilter alice/tenancy-fixer-kubeflow-userid",
            ]
        );
    }
}
