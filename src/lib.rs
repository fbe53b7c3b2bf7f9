//! tenancy-fixer: extends Kubeflow multi-tenancy to Katib and Kubeflow Pipelines.
//!
//! Pure decision code lives in [`policy`] (admission rules over the typed views of [`model`])
//! and [`istio`] (the objects kept per profile); [`admission`] turns an AdmissionReview into a
//! response without I/O, with the patch of [`patch`]. I/O lives in [`webhook`] (HTTPS server) and [`controller`].
#![forbid(unsafe_code)]

pub mod admission;
pub mod certs;
pub mod check;
pub mod cli;
pub mod config;
pub mod controller;
pub mod demo;
pub mod istio;
pub mod local;
pub mod manifests;
pub mod metrics;
pub mod model;
pub mod patch;
pub mod policy;
pub mod runtime;
pub mod telemetry;
#[cfg(test)]
mod testing;
pub mod webhook;
