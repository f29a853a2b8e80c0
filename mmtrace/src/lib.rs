//! mmtrace: per-file page-fault and page-cache tracing on eBPF.
//!
//! The data path follows the folders: `kernel` (what the running kernel looks
//! like: BTF offsets, tracefs formats) → `collect` (load the eBPF programs,
//! read their maps) → `model` (pure aggregation per process / mapping / file)
//! → `output` (table, JSON Lines). `procfs`, `devnum` and `residency` are the
//! userspace views the model joins with; `session` drives a trace.
pub mod cgroup;
pub mod cli;
pub mod collect;
pub mod datafile;
pub mod demo;
pub mod devnum;
pub mod kernel;
pub mod model;
pub mod names;
pub mod output;
pub mod preflight;
pub mod procfs;
pub mod record;
pub mod residency;
pub mod session;
pub mod signals;
pub mod spec;
pub mod stall;
pub mod target;
pub mod timing;
pub mod tlb;
pub mod verdict;
