//! DMS core: the cgroup mechanism, domains and their backends, the state store and the request
//! handler that the D-Bus, CLI and HTTP adapters share.

pub mod accounts;
pub mod backends;
pub mod cgroup;
pub mod client;
pub mod config;
pub mod dbus;
pub mod domain;
pub mod http;
pub mod init;
pub mod libvirt;
pub mod metrics;
pub mod monitor;
pub mod net;
pub mod service;
pub mod session;
pub mod spawn;
pub mod store;
pub mod usage;
