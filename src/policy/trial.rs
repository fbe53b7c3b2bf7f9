//! Behaviour 3: Katib Trials created outside the Kubeflow namespace are labelled, so that the
//! Jobs and pods derived from them can be recognised.

use super::{Decision, outside_user_namespaces};
use crate::{config::Config, model::Trial};

pub const RULE: &str = "trial-label";

pub fn mutate_trial<'a>(
    trial: &Trial<'a>,
    namespace: &str,
    config: &Config,
) -> Decision<Trial<'a>> {
    let settings = &config.settings;
    if let Some(reason) = outside_user_namespaces(namespace, config) {
        return Decision::unchanged(trial, reason);
    }
    let mut decision = Decision::start(trial);
    if trial.metadata.label(&settings.extension_label) == Some("true") {
        decision.skip("already labelled");
    } else {
        decision
            .object
            .metadata
            .set_label(&settings.extension_label, "true");
        decision.applied(RULE);
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ObjectMeta;

    fn trial() -> Trial<'static> {
        Trial {
            metadata: ObjectMeta {
                name: Some("t1".into()),
                ..Default::default()
            },
        }
    }

    #[test]
    fn trial_in_user_namespace_is_labelled() {
        let d = mutate_trial(&trial(), "alice", &Config::default());
        assert_eq!(d.applied, vec![RULE]);
        assert_eq!(d.object.metadata.label("kubeflow-extension"), Some("true"));
    }

    #[test]
    fn trial_in_kubeflow_namespace_is_unchanged() {
        let d = mutate_trial(&trial(), "kubeflow", &Config::default());
        assert!(!d.changed());
        assert_eq!(d.object, trial());
    }

    #[test]
    fn labelled_trial_is_not_changed_again() {
        let once = mutate_trial(&trial(), "alice", &Config::default()).object;
        let twice = mutate_trial(&once, "alice", &Config::default());
        assert!(!twice.changed());
        assert_eq!(twice.object, once);
    }

    #[test]
    fn configured_names_are_used() {
        let mut config = Config::default();
        config.settings.extension_label = "ext".into();
        config.settings.kubeflow_namespace = "kf".into();
        assert!(!mutate_trial(&trial(), "kf", &config).changed());
        let d = mutate_trial(&trial(), "kubeflow", &config);
        assert_eq!(d.object.metadata.label("ext"), Some("true"));
    }
}
