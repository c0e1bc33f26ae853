//! switchyard: a Layer-7 load balancer that is also a release manager.
//! See ARCHITECTURE.md for the map of modules.

pub mod access_log;
pub mod activity;
pub mod analysis;
pub mod api;
pub mod audit;
pub mod backend;
pub mod bounded;
pub mod client;
pub mod config;
pub mod control;
pub mod error;
pub mod fingerprint;
#[doc(hidden)]
pub mod fuzz;
pub mod group;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod mirror;
pub mod proxy;
pub mod rollout;
pub mod route;
pub mod server;
pub mod service;
pub mod snapshot;
pub mod split;
pub mod store;
pub mod sys;
pub mod tls;
pub mod transform;
pub mod tunnels;
pub mod upstream;
