//! Pure planning for one profile: from the profile, its namespace, the configuration and what the
//! watch caches hold, decide which objects to create, update and delete, and what to report. No
//! I/O; the reconciler executes the plan.
//!
//! The rules, top to bottom:
//! - Nothing is kept for a profile named after the Kubeflow namespace or an excluded namespace,
//!   nor for one whose namespace is not controlled by it (the Kubeflow profile-controller makes
//!   the Profile the namespace's controller owner; a Profile cannot claim a namespace it did not
//!   get that way). Header mode keeps nothing naming an owner [`istio::owner_problem`] refuses.
//!   Each refusal is reported.
//! - The kinds the mode wants are desired only if their API is served, and only while the
//!   namespace they live in is active (the profile's namespace for the EnvoyFilter/PodDefault, the
//!   Kubeflow namespace for the grant; the grant also needs the profile's namespace, since it
//!   names that namespace's service account).
//! - An object is OURS only if it is at our place (namespace and name) with our marks: the
//!   managed-by label, the profile label, and an owner reference to the Profile (`kubeflow.org/v1`
//!   `Profile` of that name; its uid may be stale, after the Profile was recreated). Anything else
//!   at our place is foreign: never written, never deleted, reported — except a PodDefault that
//!   gives the same token, which satisfies token mode.
//! - A desired object not stored is created (POST: an object that appears meanwhile is not
//!   overwritten); one of ours that lacks something we set is updated (server-side apply carrying
//!   the stored resourceVersion: a change meanwhile is not overwritten); one up to date is left.
//! - Objects of ours that are not desired (other mode, other grant kind, namespace gone or
//!   refused, profile deleted) are deleted.
//! - Objects already being deleted are neither written nor deleted again: their deletion event
//!   triggers the next reconcile.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt, api::DynamicObject};
use serde_json::Value;

use crate::{
    config::Config,
    istio::{self, Home, ManagedKind, OwnerProblem},
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

impl NamespaceState {
    pub fn of(namespace: Option<&ObjectMeta>) -> NamespaceState {
        match namespace {
            None => NamespaceState::Missing,
            Some(ns) if ns.deletion_timestamp.is_some() => NamespaceState::Terminating,
            Some(_) => NamespaceState::Active,
        }
    }
}

/// Why we keep nothing (or nothing naming the owner) for a profile. Reported on the Profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The profile is named after the Kubeflow namespace or an excluded namespace.
    ReservedNamespace,
    /// The profile's namespace exists but this Profile is not its controller owner.
    NamespaceNotOwned,
    /// Header mode: the owner's name cannot be asserted.
    Owner(OwnerProblem),
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
    Refused(Refusal),
}

/// The objects to keep for a profile, each with its kind.
#[derive(Debug, Default)]
pub struct Desired {
    pub objects: Vec<(ManagedKind, DynamicObject)>,
    pub held_back: Vec<(ManagedKind, HeldBack)>,
}

impl Desired {
    /// The refusals that held back at least one kind, each once.
    pub fn refusals(&self) -> Vec<Refusal> {
        let mut out = Vec::new();
        for (_, held) in &self.held_back {
            if let HeldBack::Refused(r) = held
                && !out.contains(r)
            {
                out.push(*r);
            }
        }
        out
    }
}

/// Is `namespace` controlled by `profile`: a controller owner reference to this very Profile
/// (`kubeflow.org/v1` `Profile`, same name and uid), as the Kubeflow profile-controller sets it
/// (`controllerutil.SetControllerReference` when it creates the namespace)?
pub fn namespace_controlled_by(namespace: &ObjectMeta, profile: &Profile) -> bool {
    let Some(uid) = profile.uid() else {
        return false;
    };
    namespace.owner_references.iter().flatten().any(|o| {
        o.controller == Some(true)
            && o.api_version == Profile::api_version(&())
            && o.kind == Profile::kind(&())
            && o.name == profile.name_any()
            && o.uid == uid
    })
}

/// May anything be kept for `profile`'s namespace at all? Refused: the Kubeflow namespace and the
/// excluded namespaces (whatever their owner references say), and a namespace this Profile does
/// not control. A missing namespace is no refusal (it is held back until it appears).
fn namespace_refusal(
    profile: &Profile,
    config: &Config,
    namespace: Option<&ObjectMeta>,
) -> Option<Refusal> {
    let name = profile.name_any();
    if name == config.settings.kubeflow_namespace || config.namespace_excluded(&name) {
        return Some(Refusal::ReservedNamespace);
    }
    match namespace {
        Some(ns) if !namespace_controlled_by(ns, profile) => Some(Refusal::NamespaceNotOwned),
        _ => None,
    }
}

/// What the cluster should hold for `profile`: the mode's kinds that are served, restricted to
/// active namespaces the profile may use. `profile_namespace` is the cached namespace of the
/// profile's name (`None`: missing). A profile being deleted desires nothing (use
/// [`Desired::default`]).
pub fn desired(
    profile: &Profile,
    config: &Config,
    served: &[ManagedKind],
    profile_namespace: Option<&ObjectMeta>,
    kubeflow_namespace: NamespaceState,
) -> Desired {
    let namespace_refused = namespace_refusal(profile, config, profile_namespace);
    let owner_refused = istio::owner_problem(istio::owner_of(profile)).map(Refusal::Owner);
    let namespace_state = NamespaceState::of(profile_namespace);
    let mut out = Desired::default();
    for kind in ManagedKind::wanted(config) {
        let held_back = if !served.contains(&kind) {
            Some(HeldBack::NotServed)
        } else if let Some(refusal) = namespace_refused {
            Some(HeldBack::Refused(refusal))
        } else if let Some(refusal) = owner_refused.filter(|_| kind.names_the_owner()) {
            Some(HeldBack::Refused(refusal))
        } else if namespace_state != NamespaceState::Active {
            Some(HeldBack::Namespace {
                namespace_is_kubeflow: false,
                state: namespace_state,
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

/// An object at one of our places that we did not make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Foreign {
    pub kind: ManagedKind,
    pub namespace: String,
    pub name: String,
    /// It does what ours would (a PodDefault giving the same token): nothing is missing.
    pub satisfies: bool,
}

impl Foreign {
    /// Judges `stored`, found where `desired` belongs.
    pub fn judge(kind: ManagedKind, stored: &DynamicObject, desired: &DynamicObject) -> Foreign {
        Foreign {
            kind,
            namespace: stored.namespace().unwrap_or_default(),
            name: stored.name_any(),
            satisfies: kind == ManagedKind::PodDefault
                && pod_default_equivalent(&stored.data["spec"], &desired.data["spec"]),
        }
    }
}

/// Does the PodDefault spec `theirs` give the pods ours selects the same KFP token: the same
/// selector, our env var with our token file, and a mount at our mount path of a volume holding
/// a projected ServiceAccount token for our audience at that file? (The form the KFP docs give
/// users; its expiry and volume name may differ.)
fn pod_default_equivalent(theirs: &Value, ours: &Value) -> bool {
    let our_env = &ours["env"][0];
    let our_mount_path = &ours["volumeMounts"][0]["mountPath"];
    let our_audience =
        &ours["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"];
    let list = |v: &Value, key: &str| v[key].as_array().cloned().unwrap_or_default();
    let env_kept = list(theirs, "env")
        .iter()
        .any(|e| e["name"] == our_env["name"] && e["value"] == our_env["value"]);
    let token_mounted = list(theirs, "volumeMounts")
        .iter()
        .filter(|m| m["mountPath"] == *our_mount_path)
        .any(|mount| {
            list(theirs, "volumes")
                .iter()
                .filter(|v| v["name"] == mount["name"])
                .flat_map(|v| list(&v["projected"], "sources"))
                .any(|source| {
                    let token = &source["serviceAccountToken"];
                    let file = format!(
                        "{}/{}",
                        our_mount_path.as_str().unwrap_or_default(),
                        token["path"].as_str().unwrap_or_default()
                    );
                    token["audience"] == *our_audience && our_env["value"] == file.as_str()
                })
        });
    theirs["selector"] == ours["selector"] && env_kept && token_mounted
}

/// Is `object` (of `kind`) ours for `profile`: at our place for it, with our labels and an owner
/// reference to a Profile of that name? The owner's uid is not compared: after the Profile was
/// deleted and recreated under the same name the object is still ours, and gets the new uid.
pub fn is_ours(kind: ManagedKind, object: &DynamicObject, profile: &str, config: &Config) -> bool {
    let labels = object.labels();
    let marked = labels.get(istio::MANAGED_BY_LABEL).map(String::as_str) == Some(istio::MANAGED_BY)
        && labelled_for(object, profile);
    let placed = object.namespace().as_deref() == Some(&kind.namespace_for(profile, config))
        && object.name_any() == kind.object_name(profile, config);
    let owned = object.owner_references().iter().any(|o| {
        o.api_version == Profile::api_version(&())
            && o.kind == Profile::kind(&())
            && o.name == profile
    });
    marked && placed && owned
}

/// The writes one reconcile makes.
#[derive(Debug, Default)]
pub struct Plan {
    /// Desired objects not stored: created (POST).
    pub create: Vec<(ManagedKind, DynamicObject)>,
    /// Desired objects whose stored copy (ours) lacks something we set: server-side applied with
    /// the stored copy's resourceVersion.
    pub update: Vec<(ManagedKind, DynamicObject)>,
    /// Stored objects of ours that are not desired.
    pub delete: Vec<(ManagedKind, Arc<DynamicObject>)>,
    /// Foreign objects where a desired one belongs: left alone.
    pub foreign: Vec<Foreign>,
    /// Desired objects already up to date.
    pub unchanged: usize,
    /// Objects of ours already being deleted (desired or not): wait for their deletion event.
    pub terminating: usize,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
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

/// Compares `desired` with `stored` (every cached object labelled for `profile`, of every
/// watched kind). Sizes are a handful per profile, so pairing is by linear search.
pub fn plan(
    profile: &str,
    config: &Config,
    desired: Vec<(ManagedKind, DynamicObject)>,
    stored: &[(ManagedKind, Arc<DynamicObject>)],
) -> Plan {
    let mut plan = Plan::default();
    for (kind, current) in stored {
        if !is_ours(*kind, current, profile, config)
            || desired
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
    for (kind, mut object) in desired {
        match stored
            .iter()
            .find(|(k, s)| same_object(*k, s, kind, &object))
        {
            None => plan.create.push((kind, object)),
            Some((_, current)) if !is_ours(kind, current, profile, config) => {
                plan.foreign.push(Foreign::judge(kind, current, &object))
            }
            Some((_, current)) if is_terminating(current) => plan.terminating += 1,
            Some((_, current)) if istio::is_up_to_date(current, &object) => plan.unchanged += 1,
            Some((_, current)) => {
                object.metadata.resource_version = current.resource_version();
                plan.update.push((kind, object));
            }
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

/// Something a user of the Profile should know, published as an Event on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Warning (something is not done) or Normal.
    pub warning: bool,
    /// PascalCase, as Events want it.
    pub reason: &'static str,
    pub note: String,
}

/// At most this many characters of an owner name go into a report (Event notes are bounded).
const OWNER_SHOWN: usize = 64;

impl Report {
    pub fn refusal(refusal: Refusal, profile: &Profile) -> Report {
        let namespace = profile.name_any();
        match refusal {
            Refusal::ReservedNamespace => Report {
                warning: true,
                reason: "NamespaceReserved",
                note: format!(
                    "namespace {namespace} is the Kubeflow namespace or excluded: tenancy-fixer \
                     keeps nothing for this profile"
                ),
            },
            Refusal::NamespaceNotOwned => Report {
                warning: true,
                reason: "NamespaceNotOwned",
                note: format!(
                    "namespace {namespace} is not controlled by this Profile (no controller owner \
                     reference with its uid): tenancy-fixer keeps nothing for it"
                ),
            },
            Refusal::Owner(problem) => {
                let owner: String = istio::owner_of(profile).chars().take(OWNER_SHOWN).collect();
                Report {
                    warning: true,
                    reason: "OwnerNotUsable",
                    note: format!(
                        "{problem} ({owner:?}): tenancy-fixer keeps no user id header or grant \
                         for this profile"
                    ),
                }
            }
        }
    }

    pub fn foreign(foreign: &Foreign) -> Report {
        let Foreign {
            kind,
            namespace,
            name,
            satisfies,
        } = foreign;
        if *satisfies {
            Report {
                warning: false,
                reason: "ExistingObjectUsed",
                note: format!(
                    "{kind:?} {namespace}/{name} was not made by tenancy-fixer and gives the same \
                     token: left as it is, and used"
                ),
            }
        } else {
            Report {
                warning: true,
                reason: "ForeignObjectInTheWay",
                note: format!(
                    "{kind:?} {namespace}/{name} was not made by tenancy-fixer: left as it is, so \
                     tenancy-fixer's {kind:?} is missing for this profile"
                ),
            }
        }
    }

    /// `object`, ours, was deleted because the configured mode no longer keeps its kind.
    pub fn mode_switch(kind: ManagedKind, object: &DynamicObject) -> Report {
        Report {
            warning: false,
            reason: "ObjectRemoved",
            note: format!(
                "{kind:?} {}/{} removed: the configured mode no longer keeps it",
                object.namespace().unwrap_or_default(),
                object.name_any()
            ),
        }
    }
}

/// What a reconcile that computed `desired` and `plan` reports (before its writes; a create that
/// meets a foreign object adds [`Report::foreign`]).
pub fn reports(profile: &Profile, config: &Config, desired: &Desired, plan: &Plan) -> Vec<Report> {
    let wanted = ManagedKind::wanted(config);
    let refusals = desired
        .refusals()
        .into_iter()
        .map(|r| Report::refusal(r, profile));
    let foreign = plan.foreign.iter().map(Report::foreign);
    let switched = plan
        .delete
        .iter()
        .filter(|(kind, _)| !wanted.contains(kind))
        .map(|(kind, object)| Report::mode_switch(*kind, object));
    refusals.chain(foreign).chain(switched).collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
    use serde_json::json;

    use super::*;
    use crate::{
        istio::PROFILE_LABEL,
        testing::{config, profile},
    };

    const ALL: &[ManagedKind] = &ManagedKind::ALL;
    use NamespaceState::{Active, Missing};

    /// The namespace as the Kubeflow profile-controller makes it: `p` its controller owner.
    fn owned_namespace(p: &Profile) -> ObjectMeta {
        ObjectMeta {
            name: Some(p.name_any()),
            annotations: Some([("owner".to_string(), istio::owner_of(p).to_string())].into()),
            owner_references: Some(vec![controller_reference(p)]),
            ..ObjectMeta::default()
        }
    }

    fn controller_reference(p: &Profile) -> OwnerReference {
        OwnerReference {
            api_version: "kubeflow.org/v1".into(),
            kind: "Profile".into(),
            name: p.name_any(),
            uid: p.uid().unwrap(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    /// `desired` with every kind served and both namespaces active, `p` owning its namespace.
    fn desired_all(p: &Profile, c: &Config) -> Desired {
        desired(p, c, ALL, Some(&owned_namespace(p)), Active)
    }

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

    fn edited(
        (kind, object): &(ManagedKind, Arc<DynamicObject>),
        edit: impl FnOnce(&mut DynamicObject),
    ) -> (ManagedKind, Arc<DynamicObject>) {
        let mut o = (**object).clone();
        edit(&mut o);
        (*kind, Arc::new(o))
    }

    fn kinds<T>(objects: &[(ManagedKind, T)]) -> Vec<ManagedKind> {
        objects.iter().map(|(k, _)| *k).collect()
    }

    fn plan_for(p: &Profile, c: &Config, stored: &[(ManagedKind, Arc<DynamicObject>)]) -> Plan {
        plan(&p.name_any(), c, desired_all(p, c).objects, stored)
    }

    const HEADER: [ManagedKind; 2] = [ManagedKind::AuthorizationPolicy, ManagedKind::EnvoyFilter];

    #[test]
    fn nothing_stored_creates_everything() {
        let (p, c) = (profile("alice", "a@x"), config("kfpAccess: header"));
        let d = desired_all(&p, &c);
        assert!(d.held_back.is_empty());
        let plan = plan("alice", &c, d.objects, &[]);
        assert_eq!(kinds(&plan.create), HEADER);
        assert!(plan.update.is_empty() && plan.delete.is_empty() && plan.foreign.is_empty());
        assert!(
            plan.create
                .iter()
                .all(|(_, o)| o.resource_version().is_none())
        );
    }

    #[test]
    fn resync_with_nothing_changed_writes_nothing() {
        for mode in [
            "kfpAccess: header",
            "kfpAccess: header\nistioRbac: service-role-binding",
            "kfpAccess: token",
        ] {
            let (p, c) = (profile("alice", "a@x"), config(mode));
            let stored = stored_all(&desired_all(&p, &c));
            let again = plan_for(&p, &c, &stored);
            assert!(again.is_empty(), "{mode}: {again:?}");
            assert_eq!(again.unchanged, stored.len());
            assert!(reports(&p, &c, &desired_all(&p, &c), &again).is_empty());
        }
    }

    #[test]
    fn owner_change_updates_the_header_objects_from_the_stored_version() {
        let c = config("kfpAccess: header");
        let stored = stored_all(&desired_all(&profile("alice", "a@x"), &c));
        let p = plan_for(&profile("alice", "b@x"), &c, &stored);
        assert_eq!(kinds(&p.update), HEADER);
        let ef = &p.update[1].1;
        let header =
            &ef.data["spec"]["configPatches"][0]["patch"]["value"]["request_headers_to_add"][0];
        assert_eq!(header["header"]["value"], "b@x");
        assert_eq!(
            p.update[0].1.data["spec"]["rules"][0]["when"][0]["values"],
            json!(["b@x"])
        );
        // The apply carries the resourceVersion planned from: a change meanwhile is a conflict.
        assert!(
            p.update
                .iter()
                .all(|(_, o)| o.resource_version().as_deref() == Some("7"))
        );
        assert!(p.create.is_empty() && p.delete.is_empty());
    }

    #[test]
    fn edited_or_deleted_objects_of_ours_are_restored() {
        let (pr, c) = (profile("alice", "a@x"), config("kfpAccess: header"));
        let mut stored = stored_all(&desired_all(&pr, &c));
        // Someone edits the grant's spec and deletes the EnvoyFilter.
        stored[0] = edited(&stored[0], |o| o.data["spec"]["action"] = json!("DENY"));
        stored.remove(1);
        let p = plan_for(&pr, &c, &stored);
        assert_eq!(kinds(&p.update), [ManagedKind::AuthorizationPolicy]);
        assert_eq!(kinds(&p.create), [ManagedKind::EnvoyFilter]);
        assert!(p.delete.is_empty());
    }

    #[test]
    fn stale_owner_uid_is_still_ours_and_gets_the_new_uid() {
        let (pr, c) = (profile("carol", "c@x"), config("kfpAccess: token"));
        let stored = stored_all(&desired_all(&pr, &c));
        // The Profile was deleted and recreated under the same name: a new uid.
        let mut recreated = pr.clone();
        recreated.metadata.uid = Some("uid-carol-2".into());
        assert!(is_ours(ManagedKind::PodDefault, &stored[0].1, "carol", &c));
        let p = plan_for(&recreated, &c, &stored);
        assert_eq!(kinds(&p.update), [ManagedKind::PodDefault]);
        assert_eq!(p.update[0].1.owner_references()[0].uid, "uid-carol-2");
        assert!(p.foreign.is_empty());
    }

    #[test]
    fn half_matching_owner_references_are_foreign() {
        let (pr, c) = (profile("alice", "a@x"), config("kfpAccess: header"));
        let ours = stored_all(&desired_all(&pr, &c));
        type Edit = fn(&mut OwnerReference);
        let edits: [(&str, Edit); 5] = [
            ("other version", |o| {
                o.api_version = "kubeflow.org/v1beta1".into()
            }),
            ("other group", |o| o.api_version = "example.com/v1".into()),
            ("other kind", |o| o.kind = "Notebook".into()),
            ("other name", |o| o.name = "bob".into()),
            ("none", |_| {}),
        ];
        for (what, edit) in edits {
            let stored: Vec<_> = ours
                .iter()
                .map(|s| {
                    edited(s, |o| {
                        if what == "none" {
                            o.metadata.owner_references = None;
                        } else {
                            edit(&mut o.metadata.owner_references.as_mut().unwrap()[0]);
                        }
                    })
                })
                .collect();
            for (kind, object) in &stored {
                assert!(!is_ours(*kind, object, "alice", &c), "{what}");
            }
            // In the way: neither written nor deleted, reported.
            let p = plan_for(&pr, &c, &stored);
            assert!(p.is_empty(), "{what}: {p:?}");
            assert_eq!(p.foreign.len(), 2, "{what}");
            assert!(p.foreign.iter().all(|f| !f.satisfies));
            let r = reports(&pr, &c, &desired_all(&pr, &c), &p);
            assert_eq!(r.len(), 2);
            assert!(
                r.iter()
                    .all(|r| r.warning && r.reason == "ForeignObjectInTheWay")
            );
            // Not desired (token mode now, or the profile is deleted): still not deleted.
            let token = config("kfpAccess: token");
            assert!(plan("alice", &token, vec![], &stored).delete.is_empty());
            assert!(plan("alice", &c, vec![], &stored).delete.is_empty());
        }
    }

    #[test]
    fn our_marks_at_another_place_are_not_ours() {
        let (pr, c) = (profile("alice", "a@x"), config("kfpAccess: token"));
        let ours = &stored_all(&desired_all(&pr, &c))[0];
        let elsewhere = edited(ours, |o| o.metadata.namespace = Some("bob".into()));
        let renamed = edited(ours, |o| o.metadata.name = Some("my-pod-default".into()));
        let unlabelled = edited(ours, |o| {
            o.metadata
                .labels
                .as_mut()
                .unwrap()
                .remove(istio::MANAGED_BY_LABEL);
        });
        for decoy in [elsewhere, renamed, unlabelled] {
            assert!(!is_ours(decoy.0, &decoy.1, "alice", &c));
            assert!(plan("alice", &c, vec![], &[decoy]).delete.is_empty());
        }
    }

    /// A user's own `access-ml-pipeline`, as the Kubeflow Pipelines docs tell users to write it.
    fn users_pod_default(namespace: &str) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "kubeflow.org/v1alpha1",
            "kind": "PodDefault",
            "metadata": {"name": "access-ml-pipeline", "namespace": namespace, "uid": "theirs",
                         "resourceVersion": "3"},
            "spec": {
                "desc": "Allow access to Kubeflow Pipelines",
                "selector": {"matchLabels": {"access-ml-pipeline": "true"}},
                "volumes": [{"name": "volume-kf-pipeline-token", "projected": {"sources": [
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 7200,
                                             "audience": "pipelines.kubeflow.org"}}]}}],
                "volumeMounts": [{"mountPath": "/var/run/secrets/kubeflow/pipelines",
                                  "name": "volume-kf-pipeline-token", "readOnly": true}],
                "env": [{"name": "KF_PIPELINES_SA_TOKEN_PATH",
                         "value": "/var/run/secrets/kubeflow/pipelines/token"}],
            },
        }))
        .unwrap()
    }

    #[test]
    fn a_users_equivalent_pod_default_satisfies_token_mode() {
        let (pr, c) = (profile("carol", "c@x"), config("kfpAccess: token"));
        let ours = &desired_all(&pr, &c).objects[0].1;
        let mut theirs = users_pod_default("carol");
        // Another expiry and volume name do not matter.
        theirs.data["spec"]["volumes"][0]["name"] = json!("kfp-token");
        theirs.data["spec"]["volumeMounts"][0]["name"] = json!("kfp-token");
        theirs.data["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"] =
            json!(3600);
        let foreign = Foreign::judge(ManagedKind::PodDefault, &theirs, ours);
        assert_eq!(
            foreign,
            Foreign {
                kind: ManagedKind::PodDefault,
                namespace: "carol".into(),
                name: "access-ml-pipeline".into(),
                satisfies: true
            }
        );
        let report = Report::foreign(&foreign);
        assert!(!report.warning);
        assert_eq!(report.reason, "ExistingObjectUsed");
    }

    #[test]
    fn a_users_different_pod_default_is_reported() {
        let c = config("kfpAccess: token");
        let ours = &desired_all(&profile("carol", "c@x"), &c).objects[0].1;
        type Edit = fn(&mut Value);
        let edits: [(&str, Edit); 5] = [
            ("audience", |s| {
                s["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"] =
                    json!("other")
            }),
            ("mount path", |s| {
                s["volumeMounts"][0]["mountPath"] = json!("/tmp")
            }),
            ("selector", |s| {
                s["selector"] = json!({"matchLabels": {"x": "true"}})
            }),
            ("env", |s| s["env"] = json!([])),
            ("token file", |s| {
                s["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["path"] =
                    json!("jwt")
            }),
        ];
        for (what, edit) in edits {
            let mut theirs = users_pod_default("carol");
            edit(&mut theirs.data["spec"]);
            let foreign = Foreign::judge(ManagedKind::PodDefault, &theirs, ours);
            assert!(!foreign.satisfies, "{what}");
            assert!(Report::foreign(&foreign).warning);
        }
    }

    #[test]
    fn mode_change_deletes_the_other_mode_objects_and_reports_it() {
        let pr = profile("alice", "a@x");
        let header = stored_all(&desired_all(&pr, &config("kfpAccess: header")));
        let token = config("kfpAccess: token");
        let p = plan_for(&pr, &token, &header);
        assert_eq!(kinds(&p.create), [ManagedKind::PodDefault]);
        assert_eq!(kinds(&p.delete), HEADER);
        let r = reports(&pr, &token, &desired_all(&pr, &token), &p);
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(|r| !r.warning && r.reason == "ObjectRemoved"));
        assert!(
            r[1].note
                .contains("EnvoyFilter alice/tenancy-fixer-kubeflow-userid")
        );
    }

    #[test]
    fn grant_kind_change_replaces_the_grant_of_the_same_name() {
        let pr = profile("alice", "a@x");
        let ap = stored_all(&desired_all(&pr, &config("kfpAccess: header")));
        let srb_config = config("kfpAccess: header\nistioRbac: service-role-binding");
        let p = plan_for(&pr, &srb_config, &ap);
        assert_eq!(kinds(&p.create), [ManagedKind::ServiceRoleBinding]);
        assert_eq!(kinds(&p.delete), [ManagedKind::AuthorizationPolicy]);
        assert_eq!(p.delete[0].1.name_any(), "bind-ml-pipeline-alice");
        assert_eq!(p.unchanged, 1);
    }

    #[test]
    fn missing_or_terminating_namespace_removes_everything() {
        let (pr, c) = (profile("alice", "a@x"), config("kfpAccess: header"));
        let stored = stored_all(&desired_all(&pr, &c));
        let mut terminating = owned_namespace(&pr);
        terminating.deletion_timestamp = Some(Time(Default::default()));
        for namespace in [None, Some(&terminating)] {
            let state = NamespaceState::of(namespace);
            let d = desired(&pr, &c, ALL, namespace, Active);
            assert!(d.objects.is_empty());
            assert_eq!(
                d.held_back,
                HEADER.map(|k| (
                    k,
                    HeldBack::Namespace {
                        namespace_is_kubeflow: false,
                        state
                    }
                ))
            );
            assert!(d.refusals().is_empty());
            let p = plan("alice", &c, d.objects, &stored);
            assert!(p.create.is_empty());
            assert_eq!(kinds(&p.delete), HEADER);
            assert_eq!(p.delete[0].1.namespace().as_deref(), Some("kubeflow"));
        }
    }

    #[test]
    fn missing_namespace_with_nothing_stored_writes_nothing() {
        let (pr, c) = (profile("alice", "a@x"), config("kfpAccess: header"));
        let d = desired(&pr, &c, ALL, None, Missing);
        assert!(plan("alice", &c, d.objects, &[]).is_empty());
    }

    #[test]
    fn missing_kubeflow_namespace_holds_back_only_the_grant() {
        let pr = profile("alice", "a@x");
        let d = desired(
            &pr,
            &config("kfpAccess: header"),
            ALL,
            Some(&owned_namespace(&pr)),
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
    fn a_namespace_the_profile_does_not_control_is_refused() {
        let (pr, c) = (profile("alice", "a@x"), config("kfpAccess: header"));
        let stored = stored_all(&desired_all(&pr, &c));
        type Edit = fn(&mut ObjectMeta);
        let edits: [(&str, Edit); 6] = [
            ("no owner", |n| n.owner_references = None),
            ("not controller", |n| {
                n.owner_references.as_mut().unwrap()[0].controller = None
            }),
            ("controller: false", |n| {
                n.owner_references.as_mut().unwrap()[0].controller = Some(false)
            }),
            ("other uid (an earlier Profile of that name)", |n| {
                n.owner_references.as_mut().unwrap()[0].uid = "uid-old".into()
            }),
            ("other kind", |n| {
                n.owner_references.as_mut().unwrap()[0].kind = "Notebook".into()
            }),
            ("other group", |n| {
                n.owner_references.as_mut().unwrap()[0].api_version = "example.com/v1".into()
            }),
        ];
        for (what, edit) in edits {
            let mut namespace = owned_namespace(&pr);
            edit(&mut namespace);
            assert!(!namespace_controlled_by(&namespace, &pr), "{what}");
            let d = desired(&pr, &c, ALL, Some(&namespace), Active);
            assert!(d.objects.is_empty(), "{what}");
            assert_eq!(d.refusals(), [Refusal::NamespaceNotOwned], "{what}");
            // Whatever we made before for it goes.
            let p = plan("alice", &c, d.objects, &stored);
            assert_eq!(kinds(&p.delete), HEADER, "{what}");
            let r = reports(
                &pr,
                &c,
                &desired(&pr, &c, ALL, Some(&namespace), Active),
                &p,
            );
            assert_eq!(r[0].reason, "NamespaceNotOwned");
            assert!(r[0].warning);
        }
    }

    #[test]
    fn kubeflow_and_excluded_namespaces_are_refused_whatever_their_owner() {
        let c = config("kfpAccess: header");
        for name in ["kubeflow", "kube-system", "tenancy-fixer"] {
            let pr = profile(name, "mallory@x");
            // Even a namespace claiming to be controlled by the Profile.
            for namespace in [None, Some(owned_namespace(&pr))] {
                let d = desired(&pr, &c, ALL, namespace.as_ref(), Active);
                assert!(d.objects.is_empty(), "{name}");
                assert_eq!(d.refusals(), [Refusal::ReservedNamespace], "{name}");
            }
        }
        // `default` is not the Profile's: the profile-controller did not make it.
        let pr = profile("default", "mallory@x");
        let default = ObjectMeta {
            name: Some("default".into()),
            ..ObjectMeta::default()
        };
        let d = desired(&pr, &c, ALL, Some(&default), Active);
        assert!(d.objects.is_empty());
        assert_eq!(d.refusals(), [Refusal::NamespaceNotOwned]);
        let token = desired(
            &pr,
            &config("kfpAccess: token"),
            ALL,
            Some(&default),
            Active,
        );
        assert!(token.objects.is_empty());
    }

    #[test]
    fn header_mode_refuses_owners_it_cannot_assert() {
        let c = config("kfpAccess: header");
        for (owner, problem) in [
            ("", OwnerProblem::Empty),
            ("a\r\nx-evil: 1", OwnerProblem::ControlCharacter),
            ("a\0b", OwnerProblem::ControlCharacter),
            ("*", OwnerProblem::Wildcard),
            ("alice*", OwnerProblem::Wildcard),
        ] {
            let pr = profile("alice", owner);
            let stored = stored_all(&desired_all(&profile("alice", "a@x"), &c));
            let d = desired_all(&pr, &c);
            assert!(d.objects.is_empty(), "{owner:?}");
            assert_eq!(d.refusals(), [Refusal::Owner(problem)]);
            let p = plan("alice", &c, d.objects, &stored);
            assert_eq!(kinds(&p.delete), HEADER, "the old owner's objects go");
            let r = reports(&pr, &c, &desired_all(&pr, &c), &p);
            assert_eq!(r[0].reason, "OwnerNotUsable");
            assert!(!r[0].note.contains('\r') && !r[0].note.contains('\0'));
            // The note says what is wrong with the name.
            let why = problem.to_string();
            assert!(
                why.contains("owner") && r[0].note.starts_with(&why),
                "{}",
                r[0].note
            );
            // Token mode does not use the owner.
            let token = config("kfpAccess: token");
            assert_eq!(desired_all(&pr, &token).objects.len(), 1);
        }
    }

    #[test]
    fn unserved_kinds_are_held_back_not_applied() {
        let pr = profile("carol", "c@x");
        let d = desired(
            &pr,
            &config("kfpAccess: token"),
            &[ManagedKind::EnvoyFilter],
            Some(&owned_namespace(&pr)),
            Active,
        );
        assert!(d.objects.is_empty());
        assert_eq!(
            d.held_back,
            [(ManagedKind::PodDefault, HeldBack::NotServed)]
        );
    }

    #[test]
    fn profile_deletion_deletes_everything_of_ours() {
        let (pr, c) = (profile("alice", "a@x"), config("kfpAccess: header"));
        let stored = stored_all(&desired_all(&pr, &c));
        let p = plan("alice", &c, Desired::default().objects, &stored);
        assert_eq!(p.delete.len(), 2);
        assert!(p.create.is_empty() && p.update.is_empty());
    }

    #[test]
    fn objects_being_deleted_are_left_to_finish() {
        let (pr, c) = (profile("alice", "a@x"), config("kfpAccess: header"));
        let stored: Vec<_> = stored_all(&desired_all(&pr, &c))
            .iter()
            .map(|s| {
                edited(s, |o| {
                    o.metadata.deletion_timestamp = Some(Time(Default::default()))
                })
            })
            .collect();
        // Desired: neither re-applied now (the deletion event brings the next reconcile)...
        let p = plan_for(&pr, &c, &stored);
        assert!(p.is_empty());
        assert_eq!(p.terminating, 2);
        // ...nor deleted a second time when unwanted.
        let p = plan("alice", &c, vec![], &stored);
        assert!(p.is_empty());
        assert_eq!(p.terminating, 2);
    }

    #[test]
    fn labelled_for_reads_the_profile_label() {
        let (pr, c) = (profile("alice", "a@x"), config("kfpAccess: token"));
        let mut object = desired_all(&pr, &c).objects[0].1.clone();
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
