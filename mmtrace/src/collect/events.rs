//! Raw events (`--events`): single faults, page-cache additions, evictions
//! and OOM kills streamed from the kernel's EVENTS ring buffer.
use schemars::JsonSchema;
use serde::Serialize;

/// One raw event (`"type":"event"`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, JsonSchema)]
pub struct RawEvent {
    pub kind: String,
    pub pid: u32,
}
