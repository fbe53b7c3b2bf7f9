//! Pure planning for one profile: from the profile, the configuration and what the watch caches
//! hold, decide which objects to apply and which to delete. No I/O; the reconciler executes the
//! plan.
//!
//! The rules, top to bottom:
//! - The kinds the mode wants are desired only if their API is served, and only while the
//!   namespace they live in is active (the profile's namespace for the EnvoyFilter/PodDefault, the
//!   Kubeflow namespace for the grant; the grant also needs the profile's namespace, since it
//!   names that namespace's service account).
//! - A desired object whose stored copy already carries everything we set is left alone (no
//!   write); otherwise it is applied.
//! - A stored object labelled for the profile that is not desired (other mode, other grant kind,
//!   namespace gone, profile deleted) is deleted.
//! - Objects already being deleted are neither applied nor deleted again: their deletion event
//!   triggers the next reconcile.

use std::sync::Arc;

use kube::{ResourceExt, api::DynamicObject};

use crate::{
    config::Config,
    istio::{self, Home, ManagedKind},
    model::Profile,
};

/// What the watch cache says about a namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamespaceState {
    Active,
    /// Has a deletionTimestamp: nothing new may be created in it.
    Terminating,
    Missing,
}

/// Why a kind the mode wants is not kept right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeldBack {
    /// The cluster does not serve the kind's API (its CRD is not installed).
    NotServed,
    /// The namespace the object would live in (or the profile's namespace it refers to) is not
    /// active.
    Namespace {
        namespace_is_kubeflow: bool,
        state: NamespaceState,
    },
    /// The Profile names no owner, whose identity the object would assert.
    NoOwner,
}

/// The objects to keep for a profile, each with its kind.
#[derive(Debug, Default)]
pub struct Desired {
    pub objects: Vec<(ManagedKind, DynamicObject)>,
    pub held_back: Vec<(ManagedKind, HeldBack)>,
}

/// What the cluster should hold for `profile`: the mode's kinds that are served, restricted to
/// active namespaces. A profile being deleted desires nothing (use [`Desired::default`]).
pub fn desired(
    profile: &Profile,
    config: &Config,
    served: &[ManagedKind],
    profile_namespace: NamespaceState,
    kubeflow_namespace: NamespaceState,
) -> Desired {
    let mut out = Desired::default();
    for kind in ManagedKind::wanted(config) {
        let held_back = if !served.contains(&kind) {
            Some(HeldBack::NotServed)
        } else if !kind.buildable_for(profile) {
            Some(HeldBack::NoOwner)
        } else if profile_namespace != NamespaceState::Active {
            Some(HeldBack::Namespace {
                namespace_is_kubeflow: false,
                state: profile_namespace,
            })
        } else if kind.home() == Home::Kubeflow && kubeflow_namespace != NamespaceState::Active {
            Some(HeldBack::Namespace {
                namespace_is_kubeflow: true,
                state: kubeflow_namespace,
            })
        } else {
            None
        };
        match held_back {
            Some(reason) => out.held_back.push((kind, reason)),
            None => out
                .objects
                .push((kind, istio::build(kind, profile, config))),
        }
    }
    out
}

/// The writes one reconcile makes.
#[derive(Debug, Default)]
pub struct Plan {
    /// Desired objects that are missing or differ from the stored copy (server-side apply).
    pub apply: Vec<(ManagedKind, DynamicObject)>,
    /// Stored objects labelled for the profile that are not desired.
    pub delete: Vec<(ManagedKind, Arc<DynamicObject>)>,
    /// Desired objects already up to date.
    pub unchanged: usize,
    /// Objects already being deleted (desired or not): wait for their deletion event.
    pub terminating: usize,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.apply.is_empty() && self.delete.is_empty()
    }
}

fn same_object(
    kind: ManagedKind,
    object: &DynamicObject,
    other_kind: ManagedKind,
    other: &DynamicObject,
) -> bool {
    kind == other_kind
        && object.metadata.namespace == other.metadata.namespace
        && object.metadata.name == other.metadata.name
}

fn is_terminating(object: &DynamicObject) -> bool {
    object.metadata.deletion_timestamp.is_some()
}

/// Compares `desired` with `stored` (every cached object labelled for the profile, of every
/// watched kind). Sizes are a handful per profile, so pairing is by linear search.
pub fn plan(
    desired: Vec<(ManagedKind, DynamicObject)>,
    stored: &[(ManagedKind, Arc<DynamicObject>)],
) -> Plan {
    let mut plan = Plan::default();
    for (kind, current) in stored {
        if desired
            .iter()
            .any(|(k, d)| same_object(*k, d, *kind, current))
        {
            continue;
        }
        if is_terminating(current) {
            plan.terminating += 1;
        } else {
            plan.delete.push((*kind, Arc::clone(current)));
        }
    }
    for (kind, object) in desired {
        match stored
            .iter()
            .find(|(k, s)| same_object(*k, s, kind, &object))
        {
            Some((_, current)) if is_terminating(current) => plan.terminating += 1,
            Some((_, current)) if istio::is_up_to_date(current, &object) => plan.unchanged += 1,
            _ => plan.apply.push((kind, object)),
        }
    }
    plan
}

/// Is `object` labelled as made for `profile`?
pub fn labelled_for(object: &DynamicObject, profile: &str) -> bool {
    object
        .labels()
        .get(istio::PROFILE_LABEL)
        .map(String::as_str)
        == Some(profile)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    use super::*;
    use crate::{
        istio::PROFILE_LABEL,
        testing::{config, profile},
    };

    const ALL: &[ManagedKind] = &ManagedKind::ALL;
    use NamespaceState::{Active, Missing, Terminating};

    /// What the API server would hold after applying `object`: same content plus server fields.
    fn stored(kind: ManagedKind, object: &DynamicObject) -> (ManagedKind, Arc<DynamicObject>) {
        let mut s = object.clone();
        s.metadata.uid = Some(format!("uid-{}", object.name_any()));
        s.metadata.resource_version = Some("7".into());
        s.metadata.generation = Some(1);
        (kind, Arc::new(s))
    }

    fn stored_all(desired: &Desired) -> Vec<(ManagedKind, Arc<DynamicObject>)> {
        desired.objects.iter().map(|(k, o)| stored(*k, o)).collect()
    }

    fn kinds<T>(objects: &[(ManagedKind, T)]) -> Vec<ManagedKind> {
        objects.iter().map(|(k, _)| *k).collect()
    }

    #[test]
    fn nothing_stored_applies_everything() {
        let d = desired(
            &profile("alice", "a@x"),
            &config("kfpAccess: header"),
            ALL,
            Active,
            Active,
        );
        assert!(d.held_back.is_empty());
        let p = plan(d.objects, &[]);
        assert_eq!(
            kinds(&p.apply),
            [ManagedKind::AuthorizationPolicy, ManagedKind::EnvoyFilter]
        );
        assert!(p.delete.is_empty());
        assert_eq!(p.unchanged, 0);
    }

    #[test]
    fn resync_with_nothing_changed_writes_nothing() {
        for mode in [
            "kfpAccess: header",
            "kfpAccess: header\nistioRbac: service-role-binding",
            "kfpAccess: token",
        ] {
            let (p, c) = (profile("alice", "a@x"), config(mode));
            let stored = stored_all(&desired(&p, &c, ALL, Active, Active));
            let again = plan(desired(&p, &c, ALL, Active, Active).objects, &stored);
            assert!(again.is_empty(), "{mode}: {again:?}");
            assert_eq!(again.unchanged, stored.len());
        }
    }

    #[test]
    fn owner_change_applies_only_the_envoy_filter() {
        let c = config("kfpAccess: header");
        let stored = stored_all(&desired(&profile("alice", "a@x"), &c, ALL, Active, Active));
        let p = plan(
            desired(&profile("alice", "b@x"), &c, ALL, Active, Active).objects,
            &stored,
        );
        assert_eq!(kinds(&p.apply), [ManagedKind::EnvoyFilter]);
        let header = &p.apply[0].1.data["spec"]["configPatches"][0]["patch"]["value"]["request_headers_to_add"]
            [0];
        assert_eq!(header["header"]["value"], "b@x");
        assert!(p.delete.is_empty());
        assert_eq!(p.unchanged, 1);
    }

    #[test]
    fn edited_or_deleted_objects_are_restored() {
        let (pr, c) = (profile("alice", "a@x"), config("kfpAccess: header"));
        let mut stored = stored_all(&desired(&pr, &c, ALL, Active, Active));
        // Someone edits the grant's spec and deletes the EnvoyFilter.
        let mut edited = (*stored[0].1).clone();
        edited.data["spec"]["action"] = json!("DENY");
        stored[0].1 = Arc::new(edited);
        stored.remove(1);
        let p = plan(desired(&pr, &c, ALL, Active, Active).objects, &stored);
        assert_eq!(
            kinds(&p.apply),
            [ManagedKind::AuthorizationPolicy, ManagedKind::EnvoyFilter]
        );
        assert!(p.delete.is_empty());
    }

    #[test]
    fn lost_label_or_owner_is_reapplied() {
        let (pr, c) = (profile("carol", "c@x"), config("kfpAccess: token"));
        let d = desired(&pr, &c, ALL, Active, Active);
        let mut s = (*stored(d.objects[0].0, &d.objects[0].1).1).clone();
        s.metadata.owner_references = None;
        let p = plan(d.objects, &[(ManagedKind::PodDefault, Arc::new(s))]);
        assert_eq!(kinds(&p.apply), [ManagedKind::PodDefault]);
    }

    #[test]
    fn mode_change_deletes_the_other_mode_objects() {
        let pr = profile("alice", "a@x");
        let header = stored_all(&desired(
            &pr,
            &config("kfpAccess: header"),
            ALL,
            Active,
            Active,
        ));
        let p = plan(
            desired(&pr, &config("kfpAccess: token"), ALL, Active, Active).objects,
            &header,
        );
        assert_eq!(kinds(&p.apply), [ManagedKind::PodDefault]);
        assert_eq!(
            kinds(&p.delete),
            [ManagedKind::AuthorizationPolicy, ManagedKind::EnvoyFilter]
        );
    }

    #[test]
    fn grant_kind_change_replaces_the_grant_of_the_same_name() {
        let pr = profile("alice", "a@x");
        let ap = stored_all(&desired(
            &pr,
            &config("kfpAccess: header"),
            ALL,
            Active,
            Active,
        ));
        let srb_config = config("kfpAccess: header\nistioRbac: service-role-binding");
        let p = plan(desired(&pr, &srb_config, ALL, Active, Active).objects, &ap);
        assert_eq!(kinds(&p.apply), [ManagedKind::ServiceRoleBinding]);
        assert_eq!(kinds(&p.delete), [ManagedKind::AuthorizationPolicy]);
        assert_eq!(p.delete[0].1.name_any(), "bind-ml-pipeline-alice");
        assert_eq!(p.unchanged, 1);
    }

    #[test]
    fn missing_or_terminating_namespace_removes_everything() {
        let (pr, c) = (profile("alice", "a@x"), config("kfpAccess: header"));
        let stored = stored_all(&desired(&pr, &c, ALL, Active, Active));
        for state in [Missing, Terminating] {
            let d = desired(&pr, &c, ALL, state, Active);
            assert!(d.objects.is_empty());
            assert_eq!(
                d.held_back,
                [ManagedKind::AuthorizationPolicy, ManagedKind::EnvoyFilter].map(|k| (
                    k,
                    HeldBack::Namespace {
                        namespace_is_kubeflow: false,
                        state
                    }
                ))
            );
            let p = plan(d.objects, &stored);
            assert!(p.apply.is_empty());
            assert_eq!(
                kinds(&p.delete),
                [ManagedKind::AuthorizationPolicy, ManagedKind::EnvoyFilter]
            );
            assert_eq!(p.delete[0].1.namespace().as_deref(), Some("kubeflow"));
        }
    }

    #[test]
    fn missing_namespace_with_nothing_stored_writes_nothing() {
        let d = desired(
            &profile("alice", "a@x"),
            &config("kfpAccess: header"),
            ALL,
            Missing,
            Missing,
        );
        assert!(plan(d.objects, &[]).is_empty());
    }

    #[test]
    fn missing_kubeflow_namespace_holds_back_only_the_grant() {
        let d = desired(
            &profile("alice", "a@x"),
            &config("kfpAccess: header"),
            ALL,
            Active,
            Missing,
        );
        assert_eq!(kinds(&d.objects), [ManagedKind::EnvoyFilter]);
        assert_eq!(
            d.held_back,
            [(
                ManagedKind::AuthorizationPolicy,
                HeldBack::Namespace {
                    namespace_is_kubeflow: true,
                    state: Missing
                }
            )]
        );
    }

    #[test]
    fn ownerless_profile_keeps_no_envoy_filter() {
        let (owned, c) = (profile("alice", "a@x"), config("kfpAccess: header"));
        let stored = stored_all(&desired(&owned, &c, ALL, Active, Active));
        let d = desired(&profile("alice", ""), &c, ALL, Active, Active);
        assert_eq!(d.held_back, [(ManagedKind::EnvoyFilter, HeldBack::NoOwner)]);
        let p = plan(d.objects, &stored);
        assert_eq!(kinds(&p.delete), [ManagedKind::EnvoyFilter]);
    }

    #[test]
    fn unserved_kinds_are_held_back_not_applied() {
        let d = desired(
            &profile("carol", "c@x"),
            &config("kfpAccess: token"),
            &[ManagedKind::EnvoyFilter],
            Active,
            Active,
        );
        assert!(d.objects.is_empty());
        assert_eq!(
            d.held_back,
            [(ManagedKind::PodDefault, HeldBack::NotServed)]
        );
    }

    #[test]
    fn profile_deletion_deletes_everything_labelled() {
        let (pr, c) = (profile("alice", "a@x"), config("kfpAccess: header"));
        let stored = stored_all(&desired(&pr, &c, ALL, Active, Active));
        let p = plan(Desired::default().objects, &stored);
        assert_eq!(p.delete.len(), 2);
        assert!(p.apply.is_empty());
    }

    #[test]
    fn objects_being_deleted_are_left_to_finish() {
        let (pr, c) = (profile("alice", "a@x"), config("kfpAccess: header"));
        let stored: Vec<_> = stored_all(&desired(&pr, &c, ALL, Active, Active))
            .into_iter()
            .map(|(k, o)| {
                let mut o = (*o).clone();
                o.metadata.deletion_timestamp = Some(Time(Default::default()));
                (k, Arc::new(o))
            })
            .collect();
        // Desired: neither re-applied now (the deletion event brings the next reconcile)...
        let p = plan(desired(&pr, &c, ALL, Active, Active).objects, &stored);
        assert!(p.is_empty());
        assert_eq!(p.terminating, 2);
        // ...nor deleted a second time when unwanted.
        let p = plan(vec![], &stored);
        assert!(p.is_empty());
        assert_eq!(p.terminating, 2);
    }

    #[test]
    fn labelled_for_reads_the_profile_label() {
        let c = config("kfpAccess: token");
        let d = desired(&profile("alice", "a@x"), &c, ALL, Active, Active);
        let mut object = d.objects[0].1.clone();
        assert!(labelled_for(&object, "alice"));
        assert!(!labelled_for(&object, "bob"));
        object
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .remove(PROFILE_LABEL);
        assert!(!labelled_for(&object, "alice"));
    }
}
