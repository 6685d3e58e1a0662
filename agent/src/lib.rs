//! The Palisade agent. The data flow, one module a stage: `source` (files or
//! the API server) -> `sync` (the loop: `node` interfaces and roles,
//! `endpoints`, the engine's incremental compiler, `writer` into `maps`,
//! `datapath` attachments, `repair`) -> `events` -> `denylog`, `metrics`,
//! `status` served by `http`; `cni` serves the CNI plugin's requests to the
//! sync loop. `run` wires them together; `cli` is the command line.
pub mod cli;
pub mod cni;
pub mod datapath;
pub mod denylog;
pub mod endpoints;
pub mod events;
pub mod http;
pub mod ingest;
pub mod maps;
pub mod metrics;
pub mod node;
pub mod packet;
pub mod pins;
pub mod pressure;
pub mod repair;
pub mod source;
pub mod status;
pub mod stream;
pub mod sync;
pub mod writer;
