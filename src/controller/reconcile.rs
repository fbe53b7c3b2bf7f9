//! One reconcile of one Profile: read the watch caches, [`plan`], execute the plan's writes.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::FutureExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, DynamicObject, PartialObjectMeta, Patch, PatchParams, Preconditions},
    runtime::{
        controller::Action,
        finalizer::{self, finalizer},
        reflector::{ObjectRef, Store},
    },
};
use tracing::{debug, info, warn};

use super::{
    Error, Result,
    plan::{self, Desired, NamespaceState},
    stats::Stats,
};
use crate::{
    config::Config,
    istio::{self, ManagedKind},
    model::Profile,
};

/// Finalizer that holds a Profile until what we made for it is gone.
pub const FINALIZER: &str = "tenancy-fixer.kubeflow.org/cleanup";
/// Field manager of our server-side applies.
pub const FIELD_MANAGER: &str = "tenancy-fixer";
/// Periodic resync of every profile (drift the watches missed; 0 writes when nothing changed).
pub const RESYNC: Duration = Duration::from_secs(600);
/// Retry while the watch caches are still filling after start, or are behind our own writes.
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

    fn namespace_state(&self, name: &str) -> NamespaceState {
        match self.namespaces.get(&ObjectRef::new(name)) {
            None => NamespaceState::Missing,
            Some(ns) if ns.metadata.deletion_timestamp.is_some() => NamespaceState::Terminating,
            Some(_) => NamespaceState::Active,
        }
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

    /// Makes the cluster hold `desired` for `profile`, and nothing else labelled for it.
    async fn converge(
        &self,
        profile: &str,
        desired: Desired,
        cause: &'static str,
    ) -> Result<Action> {
        let stored = self.stored_for(profile);
        let plan = plan::plan(desired.objects, &stored);
        let (applied, deleted, unchanged, terminating) = (
            plan.apply.len(),
            plan.delete.len(),
            plan.unchanged,
            plan.terminating,
        );

        let mut first_error = None;
        for (kind, object) in &plan.apply {
            if let Err(error) = self.apply(*kind, object).await {
                warn!(profile, %error, "apply failed");
                first_error.get_or_insert(error);
            }
        }
        for (kind, object) in &plan.delete {
            if let Err(error) = self.delete(*kind, object).await {
                warn!(profile, %error, "delete failed");
                first_error.get_or_insert(error);
            }
        }
        let held_back: Vec<String> = desired
            .held_back
            .iter()
            .map(|(kind, why)| format!("{kind:?}: {why:?}"))
            .collect();
        info!(
            profile,
            cause,
            applied,
            deleted,
            unchanged,
            terminating,
            held_back = ?held_back,
            failed = first_error.is_some(),
            "reconciled"
        );
        match first_error {
            Some(error) => Err(error),
            None => Ok(Action::requeue(RESYNC)),
        }
    }

    async fn apply(&self, kind: ManagedKind, object: &DynamicObject) -> Result<()> {
        let (namespace, name) = (object.namespace().unwrap_or_default(), object.name_any());
        let api = Api::<DynamicObject>::namespaced_with(
            self.client.clone(),
            &namespace,
            &kind.api_resource(),
        );
        self.stats.apply();
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(object),
        )
        .await
        .map_err(|source| Error::Apply {
            kind,
            namespace,
            name,
            source,
        })?;
        self.settle(kind, object, |cached| {
            cached.is_some_and(|c| istio::is_up_to_date(c, object))
        })
        .await;
        Ok(())
    }

    /// Deletes the object we saw (uid precondition): a namesake created since is left alone, and
    /// its watch event brings the next reconcile. Already gone counts as done.
    async fn delete(&self, kind: ManagedKind, object: &DynamicObject) -> Result<()> {
        let (namespace, name) = (object.namespace().unwrap_or_default(), object.name_any());
        let api = Api::<DynamicObject>::namespaced_with(
            self.client.clone(),
            &namespace,
            &kind.api_resource(),
        );
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

    /// The profile exists: keep its objects (or remove them while its namespace is not active).
    async fn keep(&self, profile: &Profile) -> Result<Action> {
        let name = profile.name_any();
        let desired = plan::desired(
            profile,
            &self.config,
            &self.watched_kinds(),
            self.namespace_state(&name),
            self.namespace_state(&self.config.settings.kubeflow_namespace),
        );
        self.converge(&name, desired, "keep").await
    }

    /// The profile is being deleted: remove everything labelled for it.
    async fn cleanup(&self, profile: &Profile) -> Result<Action> {
        self.converge(&profile.name_any(), Desired::default(), "cleanup")
            .await?;
        Ok(Action::await_change())
    }
}

fn is_ready<K: kube::runtime::reflector::Lookup + Clone>(store: &Store<K>) -> bool
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
}

/// Which finalizer patch `finalizer()` is about to send for `profile`, if any.
fn finalizer_patch_due(profile: &Profile) -> bool {
    let ours = profile.finalizers().iter().any(|f| f == FINALIZER);
    let deleting = profile.metadata.deletion_timestamp.is_some();
    // Not deleting and no finalizer yet: it adds one. Deleting with ours: it removes it after cleanup.
    ours == deleting
}

pub(super) async fn reconcile(profile: Arc<Profile>, ctx: Arc<Context>) -> Result<Action> {
    ctx.stats.reconcile();
    if !ctx.caches_ready() {
        debug!(profile = %profile.name_any(), "watch caches not filled yet");
        return Ok(Action::requeue(CACHE_WAIT));
    }
    let name = profile.name_any();
    let patch_due = finalizer_patch_due(&profile);
    let profiles: Api<Profile> = Api::all(ctx.client.clone());
    let result = finalizer(&profiles, FINALIZER, profile, |event| async {
        match event {
            finalizer::Event::Apply(p) => ctx.keep(&p).await,
            finalizer::Event::Cleanup(p) => ctx.cleanup(&p).await,
        }
    })
    .await;
    let patch_sent = match &result {
        Ok(_) => patch_due,
        Err(finalizer::Error::AddFinalizer(_) | finalizer::Error::RemoveFinalizer(_)) => true,
        Err(_) => false,
    };
    if patch_sent {
        ctx.stats.finalizer_patch();
    }
    let result = settle_refused_patch(result, &name);
    if result.is_ok() {
        ctx.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&name);
    }
    result
}

/// The reconcile's outcome. A finalizer patch the API server refused for a reason that is no
/// failure of ours becomes the action to take instead.
fn settle_refused_patch(
    result: std::result::Result<Action, finalizer::Error<Error>>,
    name: &str,
) -> Result<Action> {
    let result = match result {
        // A reconcile queued by cleanup's own deletes can run on the cached Profile after the
        // first one released the finalizer and the Profile vanished: nothing left to do.
        Err(
            finalizer::Error::AddFinalizer(kube::Error::Api(s))
            | finalizer::Error::RemoveFinalizer(kube::Error::Api(s)),
        ) if s.is_not_found() => {
            debug!(profile = %name, "profile already gone");
            Ok(Action::await_change())
        }
        // The patch's `test` of the finalizer list failed: the cached Profile is older than the
        // server's (a reconcile ran before the watch brought our own finalizer patch). Not a
        // failure: look again once the cache has caught up.
        Err(
            finalizer::Error::AddFinalizer(kube::Error::Api(s))
            | finalizer::Error::RemoveFinalizer(kube::Error::Api(s)),
        ) if s.is_invalid() => {
            debug!(profile = %name, "cached profile is stale");
            Ok(Action::requeue(CACHE_WAIT))
        }
        other => other,
    };
    result.map_err(|e| Error::Finalizer(Box::new(e)))
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
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::model::ProfileSpec;

    #[test]
    fn retry_delay_doubles_up_to_five_minutes() {
        let secs: Vec<u64> = [1, 2, 3, 4, 6, 7, 100, u32::MAX]
            .map(|n| retry_delay(n).as_secs())
            .to_vec();
        assert_eq!(secs, [5, 10, 20, 40, 160, 300, 300, 300]);
        assert_eq!(retry_delay(0).as_secs(), 5);
    }

    #[test]
    fn refused_finalizer_patches_that_are_no_failure() {
        let status = |code: u16, reason: &str| {
            kube::Error::Api(
                kube::core::Status::failure("refused", reason)
                    .with_code(code)
                    .boxed(),
            )
        };
        let adding = |code, reason| finalizer::Error::AddFinalizer(status(code, reason));
        let gone = settle_refused_patch(Err(adding(404, "NotFound")), "alice").unwrap();
        assert_eq!(gone, Action::await_change());
        let stale = settle_refused_patch(Err(adding(422, "Invalid")), "alice").unwrap();
        assert_eq!(stale, Action::requeue(CACHE_WAIT));
        let releasing = Err(finalizer::Error::RemoveFinalizer(status(422, "Invalid")));
        assert_eq!(
            settle_refused_patch(releasing, "alice").unwrap(),
            Action::requeue(CACHE_WAIT)
        );
        assert!(settle_refused_patch(Err(adding(500, "InternalError")), "alice").is_err());
        assert!(settle_refused_patch(Err(adding(403, "Forbidden")), "alice").is_err());
        let done = settle_refused_patch(Ok(Action::requeue(RESYNC)), "alice").unwrap();
        assert_eq!(done, Action::requeue(RESYNC));
    }

    #[test]
    fn finalizer_patch_is_due_when_adding_or_releasing() {
        let mut p = Profile::new("alice", ProfileSpec::default());
        assert!(finalizer_patch_due(&p), "first sight adds the finalizer");
        p.metadata.finalizers = Some(vec![FINALIZER.into()]);
        assert!(!finalizer_patch_due(&p), "steady state");
        p.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert!(finalizer_patch_due(&p), "deletion releases it");
        p.metadata.finalizers = Some(vec!["other".into()]);
        assert!(
            !finalizer_patch_due(&p),
            "deleting without ours: nothing to do"
        );
    }
}
