//! The decisions of the contract, as pure functions over plain values:
//! which site a request is for, whether maintenance holds it, which server
//! takes it, what the cookies and pages say. Nothing here performs I/O or
//! knows of the services (proxy, tcp, admin, health) that call it; its only
//! import from the rest of drawbridge is the configuration's data model.

pub mod bypass;
pub mod drain;
pub mod errors;
pub mod gate;
pub mod health;
pub mod limits;
pub mod origin;
pub mod pages;
pub mod route;
pub mod select;
pub mod slowstart;
pub mod sni;
pub mod sticky;
