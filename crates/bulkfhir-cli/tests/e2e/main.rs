//! End-to-end tests: a real server on 127.0.0.1:0 over the embedded store (and, in
//! `postgres.rs`, over PostgreSQL), driven over HTTP.

// Test helpers fail loudly: an unexpected error is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod authz;
mod bad_input;
mod bench_smoke;
mod bundles;
mod clients;
mod common;
mod crash;
mod crud;
mod destinations;
mod export;
mod hardening;
mod multinode;
mod operations;
mod postgres;
mod pull;
mod real_data;
mod tenants;
mod tls;
mod typefilter;
mod views;
