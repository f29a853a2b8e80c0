//! Loading the eBPF programs and reading their maps.
