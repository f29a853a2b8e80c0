//! Tracepoint record layouts from tracefs `events/<category>/<event>/format`
//! files, so the eBPF programs read fields at this kernel's offsets instead
//! of ones compiled in.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Errors from finding or parsing tracefs event formats.
#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error("tracepoint {category}:{event} not found in {}: this kernel does not have it", root.display())]
    MissingEvent {
        category: String,
        event: String,
        root: PathBuf,
    },
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot parse tracepoint format {what}: {line:?}")]
    Parse { what: String, line: String },
    #[error("tracepoint {event} has no field {field}")]
    NoField { event: String, field: String },
    #[error("tracepoint {event} field {field} is {size} bytes, expected one of {allowed:?}")]
    FieldSize {
        event: String,
        field: String,
        size: u32,
        allowed: Vec<u32>,
    },
    /// A layout the caller cannot use (e.g. two events that must agree don't).
    #[error("unexpected tracepoint layout: {0}")]
    Layout(String),
}

/// One `field:` line of a format file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// The field name without array suffix (`comm` for `char comm[16]`).
    pub name: String,
    /// The declared C type with the name removed, array suffix kept
    /// (`unsigned long`, `char[16]`, `__data_loc char[]`, `const char *`).
    pub c_type: String,
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
}

impl Field {
    /// Whether this is a `__data_loc` (dynamic array) field: the record holds
    /// a u32 of `len << 16 | offset` rather than the data.
    pub fn is_data_loc(&self) -> bool {
        self.c_type.starts_with("__data_loc")
    }

    /// Whether this is one of the `common_*` header fields.
    pub fn is_common(&self) -> bool {
        self.name.starts_with("common_")
    }
}

/// A parsed tracepoint format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Format {
    pub name: String,
    pub id: u32,
    pub fields: Vec<Field>,
}

impl Format {
    /// The field called `name`; the error names the event and the field.
    pub fn field(&self, name: &str) -> Result<&Field, TracefsError> {
        self.fields
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| TracefsError::NoField {
                event: self.name.clone(),
                field: name.to_owned(),
            })
    }

    /// Like [`Format::field`], but also checks the field's size is one of
    /// `allowed_sizes`.
    pub fn field_sized(&self, name: &str, allowed_sizes: &[u32]) -> Result<&Field, TracefsError> {
        let f = self.field(name)?;
        if allowed_sizes.contains(&f.size) {
            Ok(f)
        } else {
            Err(TracefsError::FieldSize {
                event: self.name.clone(),
                field: name.to_owned(),
                size: f.size,
                allowed: allowed_sizes.to_vec(),
            })
        }
    }

    /// Size of the record up to the end of its last field.
    pub fn record_size(&self) -> u32 {
        self.fields
            .iter()
            .map(|f| f.offset.saturating_add(f.size))
            .max()
            .unwrap_or(0)
    }
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Splits a C declaration like `unsigned long pfn`, `char comm[16]` or
/// `const char * name` into (type, name).
fn split_decl(decl: &str) -> Option<(String, String)> {
    let decl = decl.trim();
    let (head, array) = if decl.ends_with(']') {
        let open = decl.rfind('[')?;
        (decl[..open].trim_end(), &decl[open..])
    } else {
        (decl, "")
    };
    let name_start = head
        .bytes()
        .rposition(|b| !is_ident_byte(b))
        .map_or(0, |i| i + 1);
    let name = &head[name_start..];
    if name.is_empty() || name.as_bytes()[0].is_ascii_digit() {
        return None;
    }
    let ty = head[..name_start].trim_end();
    if ty.is_empty() {
        return None;
    }
    Some((format!("{ty}{array}"), name.to_owned()))
}

fn parse_field_line(line: &str, event: &str) -> Result<Field, TracefsError> {
    let bad = |what: &str| TracefsError::Parse {
        what: format!("{event}: {what}"),
        line: line.trim().to_owned(),
    };
    let mut decl = None;
    let (mut offset, mut size, mut signed) = (None, None, None);
    for part in line.split(';') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let Some((key, value)) = part.split_once(':') else {
            return Err(bad("field attribute without ':'"));
        };
        let num = || {
            value
                .trim()
                .parse::<u32>()
                .map_err(|_| bad(&format!("bad {key}")))
        };
        match key.trim() {
            "field" => decl = Some(value),
            "offset" => offset = Some(num()?),
            "size" => size = Some(num()?),
            "signed" => signed = Some(num()? != 0),
            _ => {} // future attributes
        }
    }
    let decl = decl.ok_or_else(|| bad("missing field declaration"))?;
    let (c_type, name) = split_decl(decl).ok_or_else(|| bad("bad field declaration"))?;
    Ok(Field {
        name,
        c_type,
        offset: offset.ok_or_else(|| bad("missing offset"))?,
        size: size.ok_or_else(|| bad("missing size"))?,
        // Very old kernels had no `signed:` attribute.
        signed: signed.unwrap_or(false),
    })
}

/// Parses the text of a tracefs `format` file.
pub fn parse_format(text: &str) -> Result<Format, TracefsError> {
    let mut name = None;
    let mut id = None;
    let mut fields = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(v) = trimmed.strip_prefix("name:") {
            name = Some(v.trim().to_owned());
        } else if let Some(v) = trimmed.strip_prefix("ID:") {
            id = Some(v.trim().parse::<u32>().map_err(|_| TracefsError::Parse {
                what: "bad ID".into(),
                line: trimmed.to_owned(),
            })?);
        } else if trimmed.starts_with("field:") {
            let event = name.as_deref().unwrap_or("<unnamed>");
            fields.push(parse_field_line(trimmed, event)?);
        } else if trimmed.starts_with("print fmt:") {
            break;
        }
    }
    let first = text.lines().next().unwrap_or("").to_owned();
    let name = name.ok_or_else(|| TracefsError::Parse {
        what: "missing name: line".into(),
        line: first.clone(),
    })?;
    let id = id.ok_or_else(|| TracefsError::Parse {
        what: format!("{name}: missing ID: line"),
        line: first.clone(),
    })?;
    if fields.is_empty() {
        return Err(TracefsError::Parse {
            what: format!("{name}: no fields"),
            line: first,
        });
    }
    Ok(Format { name, id, fields })
}

const DEFAULT_ROOTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The first of `/sys/kernel/tracing` and `/sys/kernel/debug/tracing` that is
/// mounted (has an `events` directory).
pub fn find_root() -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = DEFAULT_ROOTS.iter().map(PathBuf::from).collect();
    find_root_in(&candidates)
}

/// The first of `candidates` that has an `events` directory.
pub fn find_root_in(candidates: &[PathBuf]) -> Option<PathBuf> {
    candidates
        .iter()
        .find(|c| c.join("events").is_dir())
        .cloned()
}

/// Reads and parses `root/events/<category>/<event>/format`.
pub fn read_format(root: &Path, category: &str, event: &str) -> Result<Format, TracefsError> {
    let path = root
        .join("events")
        .join(category)
        .join(event)
        .join("format");
    let text = match fs::read(&path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(TracefsError::MissingEvent {
                category: category.to_owned(),
                event: event.to_owned(),
                root: root.to_owned(),
            });
        }
        Err(source) => return Err(TracefsError::Io { path, source }),
    };
    parse_format(&text).map_err(|e| match e {
        TracefsError::Parse { what, line } => TracefsError::Parse {
            what: format!("{what} in {}", path.display()),
            line,
        },
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADD_TO_PAGE_CACHE: &str = "name: mm_filemap_add_to_page_cache
ID: 532
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:unsigned long pfn;\toffset:8;\tsize:8;\tsigned:0;
\tfield:unsigned long i_ino;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned long index;\toffset:24;\tsize:8;\tsigned:0;
\tfield:dev_t s_dev;\toffset:32;\tsize:4;\tsigned:0;
\tfield:unsigned char order;\toffset:36;\tsize:1;\tsigned:0;

print fmt: \"dev %d:%d ino %lx pfn=0x%lx ofs=%lu order=%u\", ((unsigned int) ((REC->s_dev) >> 20)), ((unsigned int) ((REC->s_dev) & ((1U << 20) - 1))), REC->i_ino, REC->pfn, REC->index << 12, REC->order
";

    const SCHED_EXEC: &str = "name: sched_process_exec
ID: 300
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:pid_t old_pid;\toffset:16;\tsize:4;\tsigned:1;
\tfield:char comm[16];\toffset:20;\tsize:16;\tsigned:0;
\tfield:bool group_dead;\toffset:36;\tsize:1;\tsigned:0;
\tfield:const char * name;\toffset:40;\tsize:8;\tsigned:0;
\tfield:struct foo *ptr;\toffset:48;\tsize:8;\tsigned:0;

print fmt: \"filename=%s pid=%d old_pid=%d\", __get_str(filename), REC->pid, REC->old_pid
";

    #[test]
    fn parses_add_to_page_cache() {
        let f = parse_format(ADD_TO_PAGE_CACHE).unwrap();
        assert_eq!(f.name, "mm_filemap_add_to_page_cache");
        assert_eq!(f.id, 532);
        assert_eq!(f.fields.len(), 9);
        let pid = f.field("common_pid").unwrap();
        assert!(pid.signed && pid.is_common());
        assert_eq!((pid.offset, pid.size), (4, 4));
        let dev = f.field("s_dev").unwrap();
        assert_eq!(
            *dev,
            Field {
                name: "s_dev".into(),
                c_type: "dev_t".into(),
                offset: 32,
                size: 4,
                signed: false
            }
        );
        assert_eq!(f.field("i_ino").unwrap().c_type, "unsigned long");
        assert_eq!(f.field_sized("index", &[4, 8]).unwrap().offset, 24);
        assert_eq!(f.record_size(), 37);
    }

    #[test]
    fn parses_arrays_data_loc_pointers() {
        let f = parse_format(SCHED_EXEC).unwrap();
        let comm = f.field("comm").unwrap();
        assert_eq!(
            (comm.c_type.as_str(), comm.offset, comm.size),
            ("char[16]", 20, 16)
        );
        let name = f.field("filename").unwrap();
        assert_eq!(name.c_type, "__data_loc char[]");
        assert!(name.is_data_loc() && !comm.is_data_loc());
        assert_eq!(f.field("group_dead").unwrap().c_type, "bool");
        assert_eq!(f.field("name").unwrap().c_type, "const char *");
        assert_eq!(f.field("ptr").unwrap().c_type, "struct foo *");
        assert!(f.field("pid").unwrap().signed);
    }

    #[test]
    fn field_errors_name_event_and_field() {
        let f = parse_format(ADD_TO_PAGE_CACHE).unwrap();
        let e = f.field("folio").unwrap_err();
        assert_eq!(
            e.to_string(),
            "tracepoint mm_filemap_add_to_page_cache has no field folio"
        );
        let e = f.field_sized("s_dev", &[8]).unwrap_err();
        assert!(
            matches!(e, TracefsError::FieldSize { size: 4, .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("s_dev is 4 bytes"), "{e}");
    }

    #[test]
    fn old_format_without_signed() {
        let text = "name: x\nID: 1\nformat:\n\tfield:int a;\toffset:8;\tsize:4;\n";
        let f = parse_format(text).unwrap();
        assert!(!f.fields[0].signed);
    }

    #[test]
    fn malformed_formats() {
        let cases = [
            ("", "missing name"),
            (
                "ID: 1\n\tfield:int a;\toffset:8;\tsize:4;\tsigned:1;\n",
                "missing name",
            ),
            (
                "name: x\n\tfield:int a;\toffset:8;\tsize:4;\tsigned:1;\n",
                "missing ID",
            ),
            ("name: x\nID: one\n", "bad ID"),
            ("name: x\nID: 1\nformat:\nprint fmt: \"\"\n", "no fields"),
            (
                "name: x\nID: 1\n\tfield:int a;\tsize:4;\tsigned:1;\n",
                "missing offset",
            ),
            (
                "name: x\nID: 1\n\tfield:int a;\toffset:8;\tsigned:1;\n",
                "missing size",
            ),
            (
                "name: x\nID: 1\n\tfield:int a;\toffset:-8;\tsize:4;\n",
                "bad offset",
            ),
            (
                "name: x\nID: 1\n\tfield:int a;\toffset:8;\tsize:4;\tsigned:x;\n",
                "bad signed",
            ),
            (
                "name: x\nID: 1\n\tfield:a;\toffset:8;\tsize:4;\n",
                "bad field declaration",
            ),
            (
                "name: x\nID: 1\n\tfield:int 3;\toffset:8;\tsize:4;\n",
                "bad field declaration",
            ),
            (
                "name: x\nID: 1\n\tfield:int a[;\toffset:8;\tsize:4;\n",
                "bad field declaration",
            ),
            (
                "name: x\nID: 1\n\tfield:int a;\toffset 8;\tsize:4;\n",
                "without ':'",
            ),
        ];
        for (text, want) in cases {
            let e = parse_format(text).expect_err(text);
            assert!(matches!(e, TracefsError::Parse { .. }), "{text:?}: {e:?}");
            assert!(e.to_string().contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn find_root_and_read_format_on_fixture() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::create_dir_all(&a).unwrap();
        let ev = b.join("events/filemap/mm_filemap_add_to_page_cache");
        std::fs::create_dir_all(&ev).unwrap();
        std::fs::write(ev.join("format"), ADD_TO_PAGE_CACHE).unwrap();
        let bad = b.join("events/x/broken");
        std::fs::create_dir_all(&bad).unwrap();
        std::fs::write(bad.join("format"), "name: broken\nID: z\n").unwrap();

        assert_eq!(find_root_in(&[a.clone(), b.clone()]), Some(b.clone()));
        assert_eq!(find_root_in(std::slice::from_ref(&a)), None);
        assert_eq!(find_root_in(&[]), None);

        let f = read_format(&b, "filemap", "mm_filemap_add_to_page_cache").unwrap();
        assert_eq!(f.id, 532);

        let e = read_format(&b, "filemap", "mm_filemap_nope").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "tracepoint filemap:mm_filemap_nope not found in {}: this kernel does not have it",
                b.display()
            )
        );
        let e = read_format(&b, "x", "broken").unwrap_err();
        assert!(e.to_string().contains("x/broken/format"), "{e}");
    }

    #[test]
    fn real_tracefs_if_readable() {
        let Some(root) = find_root() else {
            eprintln!("no tracefs mounted; skipping");
            return;
        };
        match read_format(&root, "sched", "sched_process_exec") {
            Ok(f) => {
                assert_eq!(f.name, "sched_process_exec");
                assert!(f.field("common_pid").is_ok());
                assert!(f.field("filename").unwrap().is_data_loc());
            }
            Err(e) => eprintln!("cannot read tracefs ({e}); skipping"),
        }
    }
}
