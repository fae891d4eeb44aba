//! The policy plugins (plugins/policies/*) through the running gateway,
//! against real upstream servers.

mod aggregate;
mod auth_jwt;
mod auth_key;
mod cache;
mod cors;
mod rate_limit;
mod transform;
