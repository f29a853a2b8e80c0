//! Sinks of the record stream: the human table (`printer`, laid out by
//! `table`), JSON Lines (`json`), the live view (`top`), the HTTP server
//! (`serve`). Each consumes the
//! same [`Record`]s; none computes anything of its own. `escape` makes names
//! from the traced system safe to print.
pub mod cost;
pub mod escape;
pub mod json;
pub mod printer;
pub mod serve;
pub mod stall_table;
pub mod table;
pub mod top;

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
    /// The live view (`mmtrace top`).
    top: Option<top::TopSink>,
    /// The final record, held for the printer until the live view has
    /// given the terminal back ([`Sinks::close`]).
    held: Option<Record>,
    /// The HTTP server (`--serve`).
    serve: Option<serve::ServeSink>,
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
        if spec.view == View::Top && spec.json_on_stdout() {
            anyhow::bail!(
                "mmtrace top draws on stdout: write the JSON to a file (-o FILE) instead of --json"
            );
        }
        // First: a refusal (not a terminal) comes before any file is made.
        let top = if spec.view == View::Top {
            Some(top::TopSink::open(
                stop.clone(),
                crate::session::page_size(),
            )?)
        } else {
            None
        };
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
            let p = printer::Printer::new(
                out,
                table::TableOptions {
                    page_size: crate::session::page_size(),
                    top: spec.top,
                    mappings: spec.mappings,
                    title: String::new(),
                    write_faults: true,
                },
            );
            // The live view draws the intervals; intervals that only
            // `--serve` asked for go to the server, not the table.
            if spec.view == View::Top || !spec.table_intervals {
                p.final_only()
            } else {
                p
            }
        });
        let serve = match &spec.serve {
            Some(o) => Some(serve::ServeSink::start(o, spec.view == View::Quiet)?),
            None => None,
        };
        Ok(Self {
            json,
            printer,
            top,
            held: None,
            serve,
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
        if let Some(t) = &mut self.top
            && let Err(e) = t.record(r)
        {
            self.top = None;
            first = Some(e);
        }
        if let Some(j) = &mut self.json
            && let Err(e) = j.write(r)
        {
            self.json = None;
            first.get_or_insert(e);
        }
        if let Some(s) = &self.serve {
            s.record(r);
        }
        if self.top.is_some() && matches!(r, Record::Summary(_)) {
            // Printed once the view is closed, on the restored terminal.
            self.held = Some(r.clone());
        } else if let Some(p) = &mut self.printer
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

    /// Ends the sinks: the live view (after its last frame, until `q` when
    /// the trace ended by itself) gives the terminal back, then the final
    /// report it held back is printed.
    pub async fn close(&mut self) -> Result<()> {
        let mut first = None;
        if let Some(mut t) = self.top.take() {
            t.wait().await;
            first = t.close().err();
        }
        if let (Some(p), Some(r)) = (&mut self.printer, self.held.take())
            && let Err(e) = p.record(&r)
        {
            first.get_or_insert(e);
        }
        // The server keeps the final state for `--serve-linger`, then
        // closes (its clients got the summary).
        if let Some(s) = &mut self.serve {
            s.finish().await;
        }
        first.map_or(Ok(()), Err)
    }
}
