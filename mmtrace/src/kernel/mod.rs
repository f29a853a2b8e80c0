//! What the running kernel looks like: struct offsets from BTF, tracepoint
//! layouts from tracefs. Nothing here is fixed to one kernel version.
pub mod btf;
pub mod offsets;
pub mod probes;
pub mod tracefs;
