//! One reconcile of one Profile: read the watch caches, [`plan`], execute the plan's writes,
//! report what the Profile's users should know as Events.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::FutureExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{
        DeleteParams, DynamicObject, PartialObjectMeta, Patch, PatchParams, PostParams,
        Preconditions,
    },
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder},
        reflector::{ObjectRef, Store},
    },
};
use tracing::{debug, info, warn};

use super::{
    Error, Result,
    plan::{self, Desired, Foreign, NamespaceState, Report},
    stats::Stats,
};
use crate::{
    config::Config,
    istio::{self, ManagedKind},
    model::Profile,
};

/// Finalizer that earlier versions put on every Profile. This version adds none (the garbage
/// collector removes what we made, through its owner reference to the Profile) and removes it
/// from every Profile it reconciles.
pub const FINALIZER: &str = "tenancy-fixer.kubeflow.org/cleanup";
/// Field manager of our writes.
pub const FIELD_MANAGER: &str = "tenancy-fixer";
/// Periodic resync of every profile (drift the watches missed; 0 writes when nothing changed).
pub const RESYNC: Duration = Duration::from_secs(600);
/// Retry while the watch caches are still filling after start, or are behind the API server.
const CACHE_WAIT: Duration = Duration::from_secs(1);
/// Backoff after a failed reconcile: doubles from the first to the last.
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(300);
/// Bound and poll interval of the wait for the watch cache to show our own writes.
const SETTLE_MAX: Duration = Duration::from_secs(2);
const SETTLE_POLL: Duration = Duration::from_millis(10);

/// The watch cache of one managed kind (objects labelled managed-by us, all namespaces).
pub(super) struct ManagedStore {
    pub kind: ManagedKind,
    pub store: Store<DynamicObject>,
}

/// What every reconcile shares.
pub(super) struct Context {
    pub client: Client,
    pub config: Arc<Config>,
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// One cache per watched kind: the served ones (wanted by the mode or not, for cleanup).
    pub managed: Vec<ManagedStore>,
    pub stats: Arc<Stats>,
    /// Consecutive failures per profile, for the error backoff.
    pub failures: Mutex<HashMap<String, u32>>,
    /// Publishes the reports as Events on the Profile.
    pub recorder: Recorder,
    /// What the last reconcile of each profile reported: a report is published when it is new,
    /// not on every resync.
    pub reported: Mutex<HashMap<String, Vec<Report>>>,
}

/// How a create ended, when the API server took it or said why not.
enum Created {
    Done,
    /// Something else is stored under that name.
    Foreign(Foreign),
    /// The cache was behind (ours is there, or the other object is gone again): plan again.
    Replan,
}

impl Context {
    fn watched_kinds(&self) -> Vec<ManagedKind> {
        self.managed.iter().map(|m| m.kind).collect()
    }

    /// Have all caches (besides the Profile cache, which the controller waits for) been filled
    /// by their first list? Before that, "not in the cache" would wrongly mean "absent".
    fn caches_ready(&self) -> bool {
        is_ready(&self.namespaces) && self.managed.iter().all(|m| is_ready(&m.store))
    }

    fn namespace(&self, name: &str) -> Option<Arc<PartialObjectMeta<Namespace>>> {
        self.namespaces.get(&ObjectRef::new(name))
    }

    /// Every cached object labelled for `profile`, of every watched kind.
    fn stored_for(&self, profile: &str) -> Vec<(ManagedKind, Arc<DynamicObject>)> {
        self.managed
            .iter()
            .flat_map(|m| {
                let objects = m.store.state_filter(|o| plan::labelled_for(o, profile));
                objects.into_iter().map(move |o| (m.kind, o))
            })
            .collect()
    }

    fn api(
        &self,
        kind: ManagedKind,
        object: &DynamicObject,
    ) -> (Api<DynamicObject>, String, String) {
        let (namespace, name) = (object.namespace().unwrap_or_default(), object.name_any());
        let api = Api::namespaced_with(self.client.clone(), &namespace, &kind.api_resource());
        (api, namespace, name)
    }

    /// Makes the cluster hold `desired` for `profile`, and nothing else of ours for it.
    async fn converge(
        &self,
        profile: &Profile,
        mut desired: Desired,
        cause: &'static str,
    ) -> Result<Action> {
        let name = profile.name_any();
        let stored = self.stored_for(&name);
        let plan = plan::plan(
            &name,
            &self.config,
            std::mem::take(&mut desired.objects),
            &stored,
        );
        let mut reports = plan::reports(profile, &self.config, &desired, &plan);
        let (created, updated, deleted, unchanged, terminating) = (
            plan.create.len(),
            plan.update.len(),
            plan.delete.len(),
            plan.unchanged,
            plan.terminating,
        );

        let mut first_error = None;
        let mut replan = false;
        for (kind, object) in &plan.create {
            match self.create(*kind, object, &name).await {
                Ok(Created::Done) => {}
                Ok(Created::Foreign(foreign)) => reports.push(Report::foreign(&foreign)),
                Ok(Created::Replan) => replan = true,
                Err(error) => {
                    warn!(profile = name, %error, "create failed");
                    first_error.get_or_insert(error);
                }
            }
        }
        for (kind, object) in &plan.update {
            match self.update(*kind, object).await {
                Ok(applied) => replan |= !applied,
                Err(error) => {
                    warn!(profile = name, %error, "apply failed");
                    first_error.get_or_insert(error);
                }
            }
        }
        for (kind, object) in &plan.delete {
            if let Err(error) = self.delete(*kind, object).await {
                warn!(profile = name, %error, "delete failed");
                first_error.get_or_insert(error);
            }
        }
        self.report(profile, reports).await;
        let held_back: Vec<String> = desired
            .held_back
            .iter()
            .map(|(kind, why)| format!("{kind:?}: {why:?}"))
            .collect();
        info!(
            profile = name,
            cause,
            created,
            updated,
            deleted,
            unchanged,
            terminating,
            foreign = plan.foreign.len(),
            held_back = ?held_back,
            replan,
            failed = first_error.is_some(),
            "reconciled"
        );
        match first_error {
            Some(error) => Err(error),
            None if replan => Ok(Action::requeue(CACHE_WAIT)),
            None => Ok(Action::requeue(RESYNC)),
        }
    }

    /// Creates `object` (POST): an object stored under its name meanwhile is never overwritten,
    /// but judged (one GET, only on that path).
    async fn create(
        &self,
        kind: ManagedKind,
        object: &DynamicObject,
        profile: &str,
    ) -> Result<Created> {
        let (api, namespace, name) = self.api(kind, object);
        self.stats.apply();
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        let error = match api.create(&params, object).await {
            Ok(_) => {
                self.settle(kind, object, |cached| {
                    cached.is_some_and(|c| istio::is_up_to_date(c, object))
                })
                .await;
                return Ok(Created::Done);
            }
            Err(kube::Error::Api(status)) if status.is_already_exists() => status,
            Err(source) => {
                return Err(Error::Apply {
                    kind,
                    namespace,
                    name,
                    source,
                });
            }
        };
        debug!(?kind, namespace, name, reason = %error.message, "already exists");
        match api.get_opt(&name).await {
            Ok(Some(existing)) if !plan::is_ours(kind, &existing, profile, &self.config) => {
                Ok(Created::Foreign(Foreign::judge(kind, &existing, object)))
            }
            Ok(_) => Ok(Created::Replan),
            Err(source) => Err(Error::Apply {
                kind,
                namespace,
                name,
                source,
            }),
        }
    }

    /// Server-side applies `object`, which carries the resourceVersion of the stored copy we
    /// planned from: false when the object changed meanwhile (nothing written; plan again).
    /// Forced: fields of ours someone else edited are taken back.
    async fn update(&self, kind: ManagedKind, object: &DynamicObject) -> Result<bool> {
        let (api, namespace, name) = self.api(kind, object);
        self.stats.apply();
        match api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(object),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_conflict() || status.is_not_found() => {
                debug!(?kind, namespace, name, reason = %status.message, "changed since planned");
                return Ok(false);
            }
            Err(source) => {
                return Err(Error::Apply {
                    kind,
                    namespace,
                    name,
                    source,
                });
            }
        }
        self.settle(kind, object, |cached| {
            cached.is_some_and(|c| istio::is_up_to_date(c, object))
        })
        .await;
        Ok(true)
    }

    /// Deletes the object we saw (uid precondition): a namesake created since is left alone, and
    /// its watch event brings the next reconcile. Already gone counts as done.
    async fn delete(&self, kind: ManagedKind, object: &DynamicObject) -> Result<()> {
        let (api, namespace, name) = self.api(kind, object);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: object.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        self.stats.delete();
        match api.delete(&name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() || status.is_conflict() => {
                debug!(?kind, namespace, name, reason = %status.message, "already gone or replaced");
            }
            Err(source) => {
                return Err(Error::Delete {
                    kind,
                    namespace,
                    name,
                    source,
                });
            }
        }
        self.settle(kind, object, |cached| {
            cached.is_none_or(|c| c.uid() != object.uid())
        })
        .await;
        Ok(())
    }

    /// Waits (at most [`SETTLE_MAX`]) until the cache of `kind` shows the effect of our write on
    /// `object`'s key, as told by `done`. The write's own watch event usually triggers the next
    /// reconcile of this profile, which runs as soon as this one returns: without the wait it
    /// could plan from a cache that has not seen this reconcile's other writes yet, and repeat
    /// them (no-op writes, but writes). This is the "expectations" of client-go's controllers.
    /// On timeout (watch lagging or broken) nothing is lost: the next reconcile decides again.
    async fn settle(
        &self,
        kind: ManagedKind,
        object: &DynamicObject,
        done: impl Fn(Option<&DynamicObject>) -> bool,
    ) {
        let Some(cache) = self.managed.iter().find(|m| m.kind == kind) else {
            return;
        };
        let key = ObjectRef::new_with(&object.name_any(), kind.api_resource())
            .within(&object.namespace().unwrap_or_default());
        let deadline = tokio::time::Instant::now() + SETTLE_MAX;
        while !done(cache.store.get(&key).as_deref()) {
            if tokio::time::Instant::now() >= deadline {
                debug!(?kind, object = %key, "watch cache did not show our write in time");
                return;
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }

    /// Logs and publishes (as Events on the Profile) the reports the previous reconcile of this
    /// profile did not make; repeats are only logged at debug level.
    async fn report(&self, profile: &Profile, reports: Vec<Report>) {
        let name = profile.name_any();
        let fresh: Vec<Report> = {
            let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
            let previous = reported
                .insert(name.clone(), reports.clone())
                .unwrap_or_default();
            reports
                .into_iter()
                .filter(|r| !previous.contains(r))
                .collect()
        };
        let reference = profile.object_ref(&());
        for report in fresh {
            let Report {
                warning,
                reason,
                note,
            } = &report;
            if *warning {
                warn!(profile = name, reason, note, "refused");
            } else {
                info!(profile = name, reason, note, "reported");
            }
            let event = Event {
                type_: if *warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: reason.to_string(),
                note: Some(note.clone()),
                action: "Reconcile".into(),
                secondary: None,
            };
            if let Err(error) = self.recorder.publish(&event, &reference).await {
                warn!(profile = name, reason, %error, "cannot publish the event");
            }
        }
    }

    /// The profile exists: keep its objects (or remove them while it may keep none).
    async fn keep(&self, profile: &Profile) -> Result<Action> {
        let name = profile.name_any();
        let namespace = self.namespace(&name);
        let desired = plan::desired(
            profile,
            &self.config,
            &self.watched_kinds(),
            namespace.as_ref().map(|n| &n.metadata),
            NamespaceState::of(
                self.namespace(&self.config.settings.kubeflow_namespace)
                    .as_ref()
                    .map(|n| &n.metadata),
            ),
        );
        self.converge(profile, desired, "keep").await
    }
}

fn is_ready<K: kube::runtime::reflector::Lookup + Clone>(store: &Store<K>) -> bool
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
}

/// Removes [`FINALIZER`] from `profile` if it carries it: a JSON patch that first tests the
/// entry, so a concurrent change to the finalizer list fails instead of removing someone
/// else's entry. True when a patch was sent and accepted.
pub(super) async fn remove_finalizer(
    profiles: &Api<Profile>,
    profile: &Profile,
) -> std::result::Result<bool, kube::Error> {
    let Some(index) = profile.finalizers().iter().position(|f| f == FINALIZER) else {
        return Ok(false);
    };
    let path = json_patch::jsonptr::PointerBuf::from_tokens([
        "metadata",
        "finalizers",
        &index.to_string(),
    ]);
    let patch = json_patch::Patch(vec![
        json_patch::PatchOperation::Test(json_patch::TestOperation {
            path: path.clone(),
            value: FINALIZER.into(),
        }),
        json_patch::PatchOperation::Remove(json_patch::RemoveOperation { path }),
    ]);
    profiles
        .patch(
            &profile.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await?;
    Ok(true)
}

pub(super) async fn reconcile(profile: Arc<Profile>, ctx: Arc<Context>) -> Result<Action> {
    ctx.stats.reconcile();
    let name = profile.name_any();
    if !ctx.caches_ready() {
        debug!(profile = name, "watch caches not filled yet");
        return Ok(Action::requeue(CACHE_WAIT));
    }
    if profile.finalizers().iter().any(|f| f == FINALIZER) {
        ctx.stats.finalizer_patch();
        let removed = remove_finalizer(&Api::all(ctx.client.clone()), &profile).await;
        if let Some(action) = settle_finalizer_removal(removed, &name)? {
            return Ok(action);
        }
    }
    let result = if profile.metadata.deletion_timestamp.is_some() {
        // Held by someone else's finalizer: what we made goes now (the garbage collector would
        // only take it once the Profile is gone).
        ctx.converge(&profile, Desired::default(), "profile deleting")
            .await
    } else {
        ctx.keep(&profile).await
    };
    if result.is_ok() {
        ctx.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&name);
    }
    result
}

/// The outcome of removing an earlier version's finalizer: carry on (`None`), stop with an action
/// (the request was refused for a reason that is no failure of ours), or fail.
fn settle_finalizer_removal(
    removed: std::result::Result<bool, kube::Error>,
    name: &str,
) -> Result<Option<Action>> {
    match removed {
        Ok(_) => {
            info!(profile = %name, finalizer = FINALIZER, "removed an earlier version's finalizer");
            Ok(None)
        }
        // The profile went meanwhile: nothing left to do.
        Err(kube::Error::Api(s)) if s.is_not_found() => {
            debug!(profile = %name, "profile already gone");
            Ok(Some(Action::await_change()))
        }
        // The patch's `test` of the finalizer list failed: the cached Profile is older than the
        // server's. Not a failure: look again once the cache has caught up.
        Err(kube::Error::Api(s)) if s.is_invalid() => {
            debug!(profile = %name, "cached profile is stale");
            Ok(Some(Action::requeue(CACHE_WAIT)))
        }
        Err(source) => Err(Error::ReleaseFinalizer {
            name: name.to_string(),
            source,
        }),
    }
}

pub(super) fn error_policy(profile: Arc<Profile>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.stats.failed_reconcile();
    let name = profile.name_any();
    let failures = {
        let mut map = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(name.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = retry_delay(failures);
    warn!(profile = %name, %error, failures, retry_in_s = delay.as_secs(), "reconcile failed");
    Action::requeue(delay)
}

/// 5 s, 10 s, 20 s, ... up to 5 minutes.
fn retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    RETRY_FIRST.saturating_mul(1 << doublings).min(RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_up_to_five_minutes() {
        let secs: Vec<u64> = [1, 2, 3, 4, 6, 7, 100, u32::MAX]
            .map(|n| retry_delay(n).as_secs())
            .to_vec();
        assert_eq!(secs, [5, 10, 20, 40, 160, 300, 300, 300]);
        assert_eq!(retry_delay(0).as_secs(), 5);
    }

    #[test]
    fn refused_finalizer_removals_that_are_no_failure() {
        let status = |code: u16, reason: &str| {
            Err(kube::Error::Api(
                kube::core::Status::failure("refused", reason)
                    .with_code(code)
                    .boxed(),
            ))
        };
        assert_eq!(settle_finalizer_removal(Ok(true), "alice").unwrap(), None);
        assert_eq!(settle_finalizer_removal(Ok(false), "alice").unwrap(), None);
        let gone = settle_finalizer_removal(status(404, "NotFound"), "alice").unwrap();
        assert_eq!(gone, Some(Action::await_change()));
        let stale = settle_finalizer_removal(status(422, "Invalid"), "alice").unwrap();
        assert_eq!(stale, Some(Action::requeue(CACHE_WAIT)));
        assert!(settle_finalizer_removal(status(500, "InternalError"), "alice").is_err());
        assert!(settle_finalizer_removal(status(403, "Forbidden"), "alice").is_err());
    }
}
