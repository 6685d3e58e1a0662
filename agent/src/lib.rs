//! The Palisade agent: loader, map writer, event reader, sources and sync loop.
pub mod datapath;
pub mod events;
pub mod maps;
pub mod packet;
