//! The JSON Lines sink: one [`Record`] per line, flushed as it is written.
//! Schema: `mmtrace schema` (generated from the record types) and
//! docs/json-schema.md (versioned by `schema_version`; fields are added,
//! never renamed silently).
use std::io::Write;

use crate::record::Record;

/// Writes one record per line and flushes, so a reader sees every record as
/// soon as it is complete.
pub struct JsonSink {
    out: Box<dyn Write + Send>,
    name: String,
}

impl JsonSink {
    pub fn new(out: Box<dyn Write + Send>, name: impl Into<String>) -> Self {
        Self {
            out,
            name: name.into(),
        }
    }

    pub fn write(&mut self, r: &Record) -> anyhow::Result<()> {
        self.write_value(r)
    }

    /// Writes any serializable value as one line.
    pub fn write_value<T: serde::Serialize>(&mut self, v: &T) -> anyhow::Result<()> {
        self.write_unflushed(v)?;
        self.flush()
    }

    /// One line, left in the buffer (a batch of raw events; `flush` ends it).
    pub fn write_unflushed<T: serde::Serialize>(&mut self, v: &T) -> anyhow::Result<()> {
        use anyhow::Context as _;
        serde_json::to_writer(&mut self.out, v)
            .map_err(std::io::Error::from)
            .and_then(|_| self.out.write_all(b"\n"))
            .with_context(|| format!("writing JSON to {}", self.name))
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        use anyhow::Context as _;
        self.out
            .flush()
            .with_context(|| format!("writing JSON to {}", self.name))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn sink_writes_one_line_per_record_and_reports_write_errors() {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let b = Buf::default();
        let mut s = JsonSink::new(Box::new(b.clone()), "buf");
        s.write_value(&json!({"a": 1})).unwrap();
        s.write_value(&json!({"b": 2})).unwrap();
        assert_eq!(
            String::from_utf8(b.0.lock().unwrap().clone()).unwrap(),
            "{\"a\":1}\n{\"b\":2}\n"
        );

        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let err = JsonSink::new(Box::new(Full), "/full")
            .write_value(&json!({}))
            .unwrap_err();
        assert!(format!("{err:#}").contains("/full"));
    }
}
