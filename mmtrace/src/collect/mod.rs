//! Loading the eBPF programs (`loader`) and reading their maps into a
//! plain-data [`Snapshot`] (`maps`), which the model consumes.
pub mod cgroup_watch;
pub mod collector;
pub mod events;
pub mod loader;
pub mod maps;

pub use maps::Snapshot;
