#![no_std]
//! The TC programs live in main.rs; this lib target exists so agent/build.rs can
//! depend on the crate.
