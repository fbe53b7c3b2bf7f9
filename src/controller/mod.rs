//! Behaviour 1: keeps the per-profile objects of [`crate::istio`] in the cluster.
//!
//! A `kube::runtime::Controller<Profile>` reconciles a profile when the Profile changes, when
//! its namespace (same name) appears, changes or goes, when any object we manage for it changes
//! or is deleted, and every [`RESYNC`] (which also covers start: every profile is reconciled
//! once the caches are filled, so what changed while we were down is repaired).
//!
//! Reads come from watch caches (reflector stores), never from the API:
//! - Profiles (full objects; managedFields dropped),
//! - Namespaces (metadata only: existence and deletionTimestamp is all we need),
//! - one cache per managed kind the cluster serves (wanted by the mode or not, so objects of a
//!   previous mode are cleaned), label-selected on `app.kubernetes.io/managed-by=tenancy-fixer`.
//!
//! Writes never touch an object we did not make (see [`plan`] for what is ours): a missing object
//! is created with POST, one of ours is updated by a forced server-side apply (field manager
//! `tenancy-fixer`) carrying the resourceVersion we planned from, and deleted with a uid
//! precondition; a resync where nothing changed writes nothing. There is no finalizer: what we
//! make is owned by the Profile, so the garbage collector removes it with the Profile, also while
//! we are down; an earlier version's finalizer is removed from every Profile we reconcile.
//! Refusals (a foreign object in the way, a namespace the Profile does not control, an owner name
//! unusable in a header) and removals by a mode switch are reported as Events on the Profile.
//! Several replicas may run at once: writes converge and deletes of gone objects are no-ops.
//! The decisions are the pure functions of [`plan`].

mod plan;
mod reconcile;
mod stats;

use std::{collections::BTreeSet, future::Future, sync::Arc, time::Duration};

use futures::{Stream, StreamExt, future};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, PartialObjectMeta},
    runtime::{
        Controller, WatchStreamExt,
        controller::{self, Action},
        events::{Recorder, Reporter},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tracing::{debug, error, info, warn};

use self::reconcile::{Context, ManagedStore};
pub use self::{
    plan::{
        Desired, Foreign, HeldBack, NamespaceState, Plan, Refusal, Report, desired, is_ours,
        labelled_for, namespace_controlled_by, plan,
    },
    reconcile::{FIELD_MANAGER, FINALIZER, RESYNC},
    stats::{Stats, StatsSnapshot, stats},
};
use crate::{
    config::{Capabilities, Config},
    istio::{MANAGED_BY, MANAGED_BY_LABEL, ManagedKind, PROFILE_LABEL},
    model::Profile,
};

/// Profiles reconciled at once.
pub const CONCURRENCY: u16 = 16;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("API discovery failed: {0}")]
    Discovery(#[source] kube::Error),
    #[error("cannot apply {kind:?} {namespace}/{name}: {source}")]
    Apply {
        kind: ManagedKind,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot delete {kind:?} {namespace}/{name}: {source}")]
    Delete {
        kind: ManagedKind,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("leader election failed: {0}")]
    LeaderElection(#[source] kube_lease_manager::LeaseManagerError),
    #[error("the lease manager stopped")]
    LeaseManagerStopped,
    #[error("cannot list profiles: {0}")]
    ReleaseFinalizers(#[source] kube::Error),
    #[error("cannot remove the finalizer of profile {name}: {source}")]
    ReleaseFinalizer {
        name: String,
        #[source]
        source: kube::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The group/versions the API server serves (core `v1` included), for resolving `auto`.
pub async fn discover(client: &Client) -> Result<Capabilities> {
    let core = client
        .list_core_api_versions()
        .await
        .map_err(Error::Discovery)?;
    let groups = client.list_api_groups().await.map_err(Error::Discovery)?;
    let group_versions = groups
        .groups
        .into_iter()
        .flat_map(|g| g.versions.into_iter().map(|v| v.group_version));
    Ok(Capabilities::from_group_versions(
        core.versions.into_iter().chain(group_versions),
    ))
}

/// The managed kinds the cluster serves.
async fn served_kinds(client: &Client) -> Result<Vec<ManagedKind>> {
    served(client, ManagedKind::ALL.into_iter(), |kind| {
        let ar = kind.api_resource();
        (ar.api_version, ar.kind)
    })
    .await
}

/// The trial workload kinds the cluster serves (the webhook's rules follow them).
pub async fn served_workload_kinds(client: &Client) -> Result<Vec<crate::model::WorkloadKind>> {
    served(
        client,
        crate::model::WorkloadKind::ALL.into_iter(),
        |kind| {
            let (group, version, kind, _) = kind.gvkr();
            (format!("{group}/{version}"), kind.to_string())
        },
    )
    .await
}

/// The candidates the cluster serves: group/version served and the kind listed in it (a
/// group/version can be served by other CRDs without ours: kubeflow.org/v1 by the Profile alone).
pub async fn served<T: Copy>(
    client: &Client,
    candidates: impl Iterator<Item = T>,
    type_of: impl Fn(T) -> (String, String),
) -> Result<Vec<T>> {
    let caps = discover(client).await?;
    let mut kinds_by_gv: Vec<(String, BTreeSet<String>)> = Vec::new();
    let mut served = Vec::new();
    for candidate in candidates {
        let (api_version, kind) = type_of(candidate);
        if !caps.serves(&api_version) {
            continue;
        }
        if !kinds_by_gv.iter().any(|(gv, _)| *gv == api_version) {
            let kinds = match client.list_api_group_resources(&api_version).await {
                Ok(list) => list
                    .resources
                    .into_iter()
                    .filter(|r| !r.name.contains('/'))
                    .map(|r| r.kind)
                    .collect(),
                Err(kube::Error::Api(status)) if status.is_not_found() => BTreeSet::new(),
                Err(e) => return Err(Error::Discovery(e)),
            };
            kinds_by_gv.push((api_version.clone(), kinds));
        }
        if kinds_by_gv
            .iter()
            .any(|(gv, kinds)| *gv == api_version && kinds.contains(&kind))
        {
            served.push(candidate);
        }
    }
    Ok(served)
}

/// Runs the controller with the process-wide [`stats()`] until its stream ends. Cancel-safe:
/// dropping the future stops the watches and aborts reconciles in flight (each write is an
/// idempotent request; whatever was left undone is redone by the next start's reconcile).
pub async fn run(client: Client, config: Arc<Config>) -> Result<()> {
    run_with_stats(client, config, stats()).await
}

/// [`run`] counting into `stats` (tests and benchmarks running several controllers).
pub async fn run_with_stats(client: Client, config: Arc<Config>, stats: Arc<Stats>) -> Result<()> {
    let _leading = stats.lead();
    let served = served_kinds(&client).await?;
    for kind in ManagedKind::wanted(&config) {
        if !served.contains(&kind) {
            warn!(
                ?kind,
                api_version = %kind.api_resource().api_version,
                "the configured mode keeps this kind but the cluster does not serve it: not kept \
                 (install its CRD and restart)"
            );
        }
    }
    info!(watched = ?served, wanted = ?ManagedKind::wanted(&config), modes = ?config.modes, "starting profile controller");

    // Profiles: the controller's own cache and trigger.
    let (profiles, profile_writer) = reflector::store::<Profile>();
    let profile_events = watcher(
        Api::<Profile>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|p| p.managed_fields_mut().clear())
    .reflect(profile_writer)
    .applied_objects();
    let mut controller = Controller::for_stream(errors_kept_back(profile_events), profiles.clone())
        .with_config(controller::Config::default().concurrency(CONCURRENCY));

    // Namespaces, metadata only. Touched (not only applied) so deletions trigger cleanup.
    let (namespaces, namespace_writer) = reflector::store::<PartialObjectMeta<Namespace>>();
    let namespace_events = watcher(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|n| n.managed_fields_mut().clear())
    .reflect(namespace_writer)
    .touched_objects();
    let (known, kubeflow) = (profiles.clone(), config.settings.kubeflow_namespace.clone());
    controller = controller.watches_stream(
        errors_kept_back(namespace_events),
        move |ns: PartialObjectMeta<Namespace>| {
            profiles_for_namespace(&ns.name_any(), &kubeflow, &known)
        },
    );

    // Managed objects of every served kind, so that objects of another mode are cleaned too.
    let selector = format!("{MANAGED_BY_LABEL}={MANAGED_BY}");
    let mut managed = Vec::new();
    for kind in served {
        let ar = kind.api_resource();
        let writer = reflector::store::Writer::<DynamicObject>::new(ar.clone());
        let store = writer.as_reader();
        let events = watcher(
            Api::<DynamicObject>::all_with(client.clone(), &ar),
            watcher::Config::default().labels(&selector),
        )
        .default_backoff()
        .modify(|o| o.managed_fields_mut().clear())
        .reflect(writer)
        .touched_objects();
        let known = profiles.clone();
        controller = controller.watches_stream_with(
            errors_kept_back(events),
            move |o: DynamicObject| profile_of_managed(&o, &known),
            ar,
        );
        managed.push(ManagedStore { kind, store });
    }

    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        config,
        namespaces,
        managed,
        stats: Arc::clone(&stats),
        failures: Default::default(),
        reported: Default::default(),
    });
    controller
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move { log_outcome(result) })
        .await;
    info!(stats = ?stats.snapshot(), "profile controller stopped");
    Ok(())
}

/// Where the replicas of a leader-elected controller compete for the lock.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    /// Namespace of the Lease (usually our own).
    pub namespace: String,
    /// Name of the Lease (`coordination.k8s.io/v1`; created when absent).
    pub lease_name: String,
    /// This replica's identity, unique among replicas (the pod name).
    pub identity: String,
}

/// [`run`] gated by a Lease: only the holder runs the controller, the others wait; a holder
/// that loses the lease stops its controller (its reconciles in flight are aborted) and waits to
/// win it again. Returns when the controller's stream ends, or with an error when the lease
/// manager fails. Dropping the future releases the lease (from the manager's own task);
/// [`run_leader_elected_until`] releases it before returning.
///
/// Needs RBAC on `leases` in `election.namespace`: get, create, patch.
pub async fn run_leader_elected(
    client: Client,
    config: Arc<Config>,
    stats: Arc<Stats>,
    election: LeaderElection,
) -> Result<()> {
    run_leader_elected_until(client, config, stats, election, std::future::pending()).await
}

/// Bound of the wait for the lease's release at shutdown.
pub const LEASE_RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// [`run_leader_elected`] until `shutdown` completes: then the controller stops, the lease is
/// released (waited for at most [`LEASE_RELEASE_TIMEOUT`]) and this returns `Ok`, so another
/// replica takes over at once instead of after the lease expires (a rolling update).
pub async fn run_leader_elected_until(
    client: Client,
    config: Arc<Config>,
    stats: Arc<Stats>,
    election: LeaderElection,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let LeaderElection {
        namespace,
        lease_name,
        identity,
    } = election;
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &lease_name)
        .with_namespace(&namespace)
        .with_identity(&identity)
        .build()
        .await
        .map_err(Error::LeaderElection)?;
    let (mut leading, mut lease_task) = manager.watch().await;
    tokio::pin!(shutdown);
    loop {
        // Wait to hold the lease; a closed channel means the manager's task ended.
        while !*leading.borrow_and_update() {
            tokio::select! {
                changed = leading.changed() => {
                    if changed.is_err() {
                        return Err(lease_task_failure(&mut lease_task).await);
                    }
                }
                () = &mut shutdown => {
                    drop(leading);
                    return release_lease(lease_task, &namespace, &lease_name, &identity).await;
                }
            }
        }
        info!(
            namespace,
            lease_name, identity, "lease acquired: running the profile controller"
        );
        // Resolves with false when the lease is lost, true when the manager's task ended.
        let lost = async {
            loop {
                if leading.changed().await.is_err() {
                    return true;
                }
                if !*leading.borrow_and_update() {
                    return false;
                }
            }
        };
        tokio::select! {
            result = run_with_stats(client.clone(), Arc::clone(&config), Arc::clone(&stats)) => return result,
            manager_ended = lost => {
                warn!(namespace, lease_name, identity, "lease lost: profile controller stopped");
                if manager_ended {
                    return Err(lease_task_failure(&mut lease_task).await);
                }
            }
            () = &mut shutdown => {
                info!(namespace, lease_name, identity, "shutting down: profile controller stopped");
                drop(leading);
                return release_lease(lease_task, &namespace, &lease_name, &identity).await;
            }
        }
    }
}

/// Waits (bounded) for the lease manager, whose channel was closed, to release the lease.
/// A failed or late release is logged only: the lease then expires on its own.
async fn release_lease(
    task: tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
    namespace: &str,
    lease_name: &str,
    identity: &str,
) -> Result<()> {
    match tokio::time::timeout(LEASE_RELEASE_TIMEOUT, task).await {
        Ok(Ok(Ok(_))) => info!(namespace, lease_name, identity, "lease released"),
        Ok(Ok(Err(error))) => {
            warn!(namespace, lease_name, identity, %error, "cannot release the lease; it expires on its own")
        }
        Ok(Err(error)) => {
            warn!(namespace, lease_name, identity, %error, "lease manager task failed; the lease expires on its own")
        }
        Err(_) => warn!(
            namespace,
            lease_name, identity, "lease not released in time; it expires on its own"
        ),
    }
    Ok(())
}

async fn lease_task_failure(
    task: &mut tokio::task::JoinHandle<
        kube_lease_manager::Result<kube_lease_manager::LeaseManager>,
    >,
) -> Error {
    match task.await {
        Ok(Err(error)) => Error::LeaderElection(error),
        Ok(Ok(_)) | Err(_) => Error::LeaseManagerStopped,
    }
}

/// Removes [`FINALIZER`], which earlier versions put on every Profile, from every Profile that
/// carries it: uninstalling such a version without upgrading first (stop it first, or it adds the
/// finalizer again). This version removes it by itself. Returns the released profiles' names.
///
/// Needs RBAC on `profiles`: list, patch.
pub async fn release_finalizers(client: &Client) -> Result<Vec<String>> {
    let profiles: Api<Profile> = Api::all(client.clone());
    let list = profiles
        .list(&Default::default())
        .await
        .map_err(Error::ReleaseFinalizers)?;
    let mut released = Vec::new();
    for profile in list {
        let name = profile.name_any();
        match reconcile::remove_finalizer(&profiles, &profile).await {
            Ok(false) => {}
            Ok(true) => {
                info!(profile = %name, "finalizer released");
                released.push(name);
            }
            Err(kube::Error::Api(status)) if status.is_not_found() => {
                debug!(profile = %name, "profile gone")
            }
            Err(source) => return Err(Error::ReleaseFinalizer { name, source }),
        }
    }
    Ok(released)
}

/// A namespace event concerns the profile of the same name; the Kubeflow namespace concerns
/// every profile (its grant waits for it). Names without a Profile are dropped here.
fn profiles_for_namespace(
    namespace: &str,
    kubeflow: &str,
    profiles: &Store<Profile>,
) -> Vec<ObjectRef<Profile>> {
    if namespace == kubeflow {
        return profiles
            .state()
            .iter()
            .map(|p| ObjectRef::from_obj(&**p))
            .collect();
    }
    let profile = ObjectRef::new(namespace);
    if profiles.get(&profile).is_some() {
        vec![profile]
    } else {
        vec![]
    }
}

/// A managed object's event concerns the profile its label names.
fn profile_of_managed(
    object: &DynamicObject,
    profiles: &Store<Profile>,
) -> Option<ObjectRef<Profile>> {
    let profile = ObjectRef::new(object.labels().get(PROFILE_LABEL)?);
    profiles.get(&profile).map(|_| profile)
}

/// A trigger stream whose errors are logged here and not passed on to the controller.
///
/// Each watch already retries on its own (`default_backoff`). The controller would also back off
/// on an error, but it does so for the merged stream of *all* its watches: one failing watch
/// (after an API server restart every watch fails for a while, then gets `410 Gone`) paused
/// every other one, for up to half a minute per error, and Profiles made meanwhile went
/// unreconciled for minutes.
fn errors_kept_back<K: Send + 'static>(
    events: impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static {
    events.filter_map(|event| {
        future::ready(match event {
            Ok(object) => Some(Ok(object)),
            Err(error) => {
                warn!(%error, "watch failed; retrying with backoff");
                None
            }
        })
    })
}

type RunResult =
    std::result::Result<(ObjectRef<Profile>, Action), controller::Error<Error, watcher::Error>>;

fn log_outcome(result: RunResult) {
    match result {
        Ok((profile, action)) => debug!(%profile, ?action, "reconcile done"),
        // Already logged by the error policy.
        Err(controller::Error::ReconcilerFailed(error, profile)) => {
            debug!(%profile, %error, "reconcile failed")
        }
        // A trigger raced with the profile's deletion.
        Err(controller::Error::ObjectNotFound(profile)) => debug!(%profile, "profile gone"),
        Err(error) => error!(%error, "controller failure"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ProfileSpec;

    fn store_of(names: &[&str]) -> Store<Profile> {
        let mut writer = reflector::store::Writer::<Profile>::default();
        writer.apply_watcher_event(&watcher::Event::Init);
        for name in names {
            writer.apply_watcher_event(&watcher::Event::InitApply(Profile::new(
                name,
                ProfileSpec::default(),
            )));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        writer.as_reader()
    }

    /// Kube's controller backs off all its triggers together when one yields an error: a failing
    /// watch must not hold back the events of the others.
    #[tokio::test(start_paused = true)]
    async fn a_failing_watch_does_not_hold_back_the_others() {
        use futures::stream;
        use tokio::time::{Instant, sleep};

        let failing = stream::once(future::ready(Err::<Profile, _>(
            watcher::Error::NoResourceVersion,
        )))
        .chain(stream::pending());
        let profile_event = stream::once(async {
            sleep(Duration::from_millis(10)).await;
            Ok(Profile::new("alice", ProfileSpec::default()))
        })
        .chain(stream::pending());
        let (reconciled, mut reconciles) = tokio::sync::mpsc::unbounded_channel();
        let start = Instant::now();
        let controller =
            Controller::for_stream(errors_kept_back(profile_event), store_of(&["alice"]))
                .watches_stream(errors_kept_back(failing), |_: Profile| None)
                .run(
                    |_, reconciled: Arc<tokio::sync::mpsc::UnboundedSender<Instant>>| async move {
                        reconciled.send(Instant::now()).unwrap();
                        Ok::<_, std::convert::Infallible>(Action::await_change())
                    },
                    |_, _, _| Action::await_change(),
                    Arc::new(reconciled),
                );
        tokio::spawn(controller.for_each(|_| future::ready(())));
        let after = reconciles.recv().await.unwrap() - start;
        assert!(
            after < Duration::from_millis(100),
            "reconciled after {after:?}"
        );
    }

    #[test]
    fn namespace_events_map_to_the_profile_of_the_same_name() {
        let profiles = store_of(&["alice", "bob"]);
        assert_eq!(
            profiles_for_namespace("alice", "kubeflow", &profiles),
            [ObjectRef::new("alice")]
        );
        assert!(profiles_for_namespace("kube-system", "kubeflow", &profiles).is_empty());
        let mut all = profiles_for_namespace("kubeflow", "kubeflow", &profiles);
        all.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(all, [ObjectRef::new("alice"), ObjectRef::new("bob")]);
    }

    #[test]
    fn managed_object_events_map_to_the_labelled_profile() {
        let profiles = store_of(&["alice"]);
        let config = Config::default();
        let mut object = crate::istio::build(
            ManagedKind::PodDefault,
            &Profile::new("alice", ProfileSpec::default()),
            &config,
        );
        assert_eq!(
            profile_of_managed(&object, &profiles),
            Some(ObjectRef::new("alice"))
        );
        object
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(PROFILE_LABEL.into(), "gone".into());
        assert_eq!(profile_of_managed(&object, &profiles), None);
        object
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .remove(PROFILE_LABEL);
        assert_eq!(profile_of_managed(&object, &profiles), None);
    }

    #[test]
    fn managed_kinds_resolve_to_the_plurals_the_crds_serve() {
        let plurals = ManagedKind::ALL.map(|k| k.api_resource().plural);
        assert_eq!(
            plurals,
            [
                "envoyfilters",
                "authorizationpolicies",
                "servicerolebindings",
                "poddefaults"
            ]
        );
    }
}
