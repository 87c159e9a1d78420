//! drawbridge: an edge proxy on Cloudflare Pingora for taking a site or a
//! server out of service without hurting users.
//!
//! How a request flows (CONTRACT section 3):
//!
//! 1. [`proxy::route`] picks the site from the Host header.
//! 2. [`proxy::gate`] finds the client address (trusting X-Forwarded-For only
//!    from `trusted_proxies`), decides whether the site is in maintenance for
//!    this path and whether the request bypasses it (allow list or a signed
//!    [`bypass`] token); otherwise [`proxy::pages`] answers 503.
//! 3. [`proxy::sticky`] reads the sticky cookie and [`proxy::select`] picks a
//!    server from admin states, weights, backup flags and health.
//! 4. [`proxy`] strips our cookies, adds X-Forwarded-*, proxies, and pins new
//!    clients with Set-Cookie.
//!
//! Around it: [`config`] (file format and validation), [`state`] (the
//! runtime snapshot behind arc-swap and the state file), [`health`]
//! (Pingora health checks), [`tcp`] (Layer-4 listeners), [`admin`] (the
//! admin API and `ctl`), [`logging`] (batched access log),
//! [`metrics`], [`server`] (Pingora services) and [`demo`].

#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod demo;
pub mod health;
pub mod httpc;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod server;
pub mod state;
pub mod tcp;
pub mod wire;
