//! drawbridge: an edge proxy on Cloudflare Pingora for taking a site or a
//! server out of service without hurting users.
//!
//! Module map, from the bottom layer up (each imports only those above it
//! in this list; see `docs/architecture.md`):
//!
//! - [`config`]: the file format, the validated model, and [`config::check`],
//!   the one check per runtime setting shared by the loader, the API and the
//!   state file.
//! - [`policy`]: the contract's decisions as pure functions: host routing
//!   ([`policy::route`]), the maintenance gate and bypass ([`policy::gate`],
//!   [`policy::bypass`]), server choice ([`policy::select`]), sticky cookies
//!   ([`policy::sticky`]), local pages ([`policy::pages`]), failure statuses
//!   ([`policy::errors`]), the drain verdict ([`policy::drain`]) and the
//!   admin listener's cross-site rule ([`policy::origin`]).
//! - [`wire`], [`logging`], [`metrics`], [`sketch`]: text on the hot path,
//!   the batched access log, Prometheus metrics, distinct-client counts.
//! - [`state`]: the runtime: the operators' decisions in one snapshot behind
//!   arc-swap, live per-server figures, the state file; beside it
//!   [`queue`] (requests waiting for a server below its `max_conns`) and
//!   [`sessions`] (upstream sockets to shut when a server is marked down).
//! - Services: [`proxy`] (Pingora's HTTP phases), [`tcp`] (Layer-4
//!   listeners), [`health`] (health checks), [`schedule`] (maintenance
//!   windows), [`admin`] (the API, the console and `ctl`), [`reload`],
//!   [`server`] (wires them into a Pingora server), [`demo`], and [`httpc`]
//!   (a small HTTP/1.1 client for `ctl` and the tests).

#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod demo;
pub mod fuzzing;
pub mod health;
pub mod httpc;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod procfs;
pub mod proxy;
pub mod queue;
pub mod reload;
pub mod schedule;
pub mod server;
pub mod sessions;
pub mod sketch;
pub mod state;
pub mod tcp;
pub mod tls;
pub mod wire;
