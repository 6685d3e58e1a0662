//! The Palisade agent: loader, map writer, event reader, sources and sync loop.
pub mod cli;
pub mod datapath;
pub mod denylog;
pub mod discovery;
pub mod events;
pub mod http;
pub mod inotify;
pub mod kube_source;
pub mod maps;
pub mod metrics;
pub mod packet;
pub mod pins;
pub mod repair;
pub mod source;
pub mod sync;
