//! Fixtures shared by the unit tests.

use crate::{
    config::{Capabilities, Config, Settings},
    model::{Profile, ProfileOwner, ProfileSpec},
};

/// Settings from YAML, resolved as `auto` resolves them on a current cluster.
pub fn config(yaml: &str) -> Config {
    Settings::from_yaml(yaml, "t")
        .unwrap()
        .resolve(&Capabilities::modern())
}

/// A stored Profile (it has a uid) owned by the user `owner`.
pub fn profile(name: &str, owner: &str) -> Profile {
    let mut p = Profile::new(
        name,
        ProfileSpec {
            owner: Some(ProfileOwner {
                kind: "User".into(),
                name: owner.into(),
            }),
        },
    );
    p.metadata.uid = Some(format!("uid-{name}"));
    p
}
