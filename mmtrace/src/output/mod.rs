//! Sinks of the record stream: the human table (`printer`, laid out by
//! `table`), JSON Lines (`json`), the live view (`top`). Each consumes the
//! same [`Record`]s; none computes anything of its own. `escape` makes names
//! from the traced system safe to print.
pub mod escape;
pub mod json;
pub mod printer;
pub mod table;

use std::fs::File;

use anyhow::{Context as _, Result};
use tokio::sync::mpsc;

use crate::{
    record::Record,
    spec::{JsonDest, TraceSpec, View},
};

/// Every sink a trace writes to.
pub struct Sinks {
    json: Option<json::JsonSink>,
    printer: Option<printer::Printer>,
    quiet: bool,
    /// Held so the trace's stop channel stays open (a closed one reads as
    /// a stop request).
    _stop: mpsc::Sender<()>,
}

impl Sinks {
    /// Opens the sinks the spec asks for (a JSON file that cannot be
    /// created is an error before anything is traced). `stop` is how an
    /// interactive sink asks the trace to end.
    pub fn open(spec: &TraceSpec, stop: mpsc::Sender<()>) -> Result<Self> {
        let json = match &spec.json {
            Some(JsonDest::File(p)) => {
                let f = File::create(p)
                    .with_context(|| format!("cannot write the JSON output to {}", p.display()))?;
                Some(json::JsonSink::new(
                    Box::new(std::io::BufWriter::new(f)),
                    p.display().to_string(),
                ))
            }
            Some(JsonDest::Stdout) => Some(json::JsonSink::new(
                Box::new(std::io::BufWriter::new(std::io::stdout())),
                "stdout",
            )),
            None => None,
        };
        let out: Box<dyn std::io::Write + Send> = if spec.json_on_stdout() {
            Box::new(std::io::stderr())
        } else {
            Box::new(std::io::stdout())
        };
        let printer = (spec.view != View::Quiet).then(|| {
            printer::Printer::new(
                out,
                table::TableOptions {
                    page_size: crate::session::page_size(),
                    top: spec.top,
                    mappings: spec.mappings,
                    title: String::new(),
                    write_faults: true,
                },
            )
        });
        Ok(Self {
            json,
            printer,
            quiet: spec.view == View::Quiet,
            _stop: stop,
        })
    }

    pub fn emit(&mut self, r: &Record) -> Result<()> {
        if let (Some(p), Record::Meta(m)) = (&mut self.printer, r) {
            p.set_write_faults(m.features.write_faults);
        }
        if let Some(j) = &mut self.json {
            j.write(r)?;
        }
        if let Some(p) = &mut self.printer {
            p.record(r)?;
        }
        Ok(())
    }

    /// A batch of raw events: JSON only (the table shows totals), flushed
    /// once for the batch.
    pub fn emit_events(&mut self, events: Vec<crate::collect::events::RawEvent>) -> Result<()> {
        if let Some(j) = &mut self.json {
            for e in events {
                j.write_unflushed(&Record::Event(e))?;
            }
            j.flush()?;
        }
        Ok(())
    }

    /// Diagnostics on stderr are off (`--quiet`).
    pub fn quiet_stderr(&self) -> bool {
        self.quiet
    }

    pub fn close(&mut self) -> Result<()> {
        Ok(())
    }
}
