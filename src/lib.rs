//! smsfence: a fraud-aware reverse proxy in front of SMS provider APIs.
//!
//! The path of one request, and the module that owns each step:
//!
//! | step | module |
//! |---|---|
//! | accept, graceful shutdown | [`proxy::server`], TLS: [`proxy::tls`] |
//! | route by method + path | [`proxy::route`] |
//! | read body, forward, answer | [`proxy::handler`], [`proxy::upstream`] |
//! | extract recipients, native errors, sandbox | [`providers`] (one file per provider) |
//! | normalize numbers | [`phone`] |
//! | decide | [`decide`] against one [`rules::RuleSet`] snapshot |
//! | state (limits, windows) | [`store`] |
//! | observe | [`metrics`], [`audit`] |
//! | operate | [`admin`], [`config`] |
//! | replay recorded traffic offline | [`replay`] |
//!
//! Errors: modules expose `thiserror` enums; only `main.rs` uses `anyhow`. The request
//! path never panics on input and never logs a phone number, message text or credential.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod audit;
pub mod clock;
pub mod config;
pub mod decide;
pub mod metrics;
pub mod phone;
pub mod providers;
pub mod proxy;
pub mod replay;
pub mod rules;
pub mod store;
