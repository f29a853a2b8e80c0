//! Sinks of the record stream: the human table (`printer`, laid out by
//! `table`), JSON Lines (`json`), the live view (`top`), the HTTP server
//! (`serve`). Each consumes the same [`Record`]s; none computes anything of
//! its own. `escape` makes names from the traced system safe to print.
pub mod escape;
pub mod json;
pub mod printer;
pub mod serve;
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
    serve: Option<serve::ServeSink>,
    /// Interval records reach the table (not when only --serve asked for them).
    table_intervals: bool,
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
        let serve = match &spec.serve {
            Some(o) => Some(serve::ServeSink::start(o, spec.view == View::Quiet)?),
            None => None,
        };
        Ok(Self {
            json,
            printer,
            serve,
            table_intervals: spec.table_intervals,
            quiet: spec.view == View::Quiet,
            _stop: stop,
        })
    }

    /// Gives `r` to every sink. A sink that fails is closed for the rest
    /// of the trace (the others still get every record, the final report
    /// included); its first error is returned.
    pub fn emit(&mut self, r: &Record) -> Result<()> {
        if let (Some(p), Record::Meta(m)) = (&mut self.printer, r) {
            p.set_write_faults(m.features.write_faults);
        }
        let mut first = None;
        if let Some(j) = &mut self.json
            && let Err(e) = j.write(r)
        {
            self.json = None;
            first = Some(e);
        }
        if let Some(s) = &self.serve {
            s.record(r);
        }
        let to_table = self.table_intervals || !matches!(r, Record::Interval(_));
        if let Some(p) = &mut self.printer
            && to_table
            && let Err(e) = p.record(r)
        {
            self.printer = None;
            first.get_or_insert(e);
        }
        first.map_or(Ok(()), Err)
    }

    /// A batch of raw events: JSON only (the table shows totals), flushed
    /// once for the batch.
    pub fn emit_events(&mut self, events: Vec<crate::collect::events::RawEvent>) -> Result<()> {
        if let Some(s) = &self.serve {
            s.events(&events);
        }
        let Some(j) = &mut self.json else {
            return Ok(());
        };
        let written = events
            .into_iter()
            .try_for_each(|e| j.write_unflushed(&Record::Event(e)))
            .and_then(|()| j.flush());
        if written.is_err() {
            self.json = None;
        }
        written
    }

    /// Diagnostics on stderr are off (`--quiet`).
    pub fn quiet_stderr(&self) -> bool {
        self.quiet
    }

    pub fn close(&mut self) -> Result<()> {
        Ok(())
    }

    /// After the final report: the server keeps the final state for
    /// `--serve-linger`, then closes (its clients got the summary).
    pub async fn finish(&mut self) {
        if let Some(s) = &mut self.serve {
            s.finish().await;
        }
    }
}
