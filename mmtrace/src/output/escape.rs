//! Names from the traced system (file paths, command names) made safe to
//! print on a terminal: control characters, terminal escape sequences and
//! invisible reordering characters are shown as visible escapes, so a
//! hostile file name can neither break a table line nor drive the terminal.
use std::borrow::Cow;

/// `p` with every character that could change what a terminal shows written
/// as a visible escape:
///
/// - `\n`, `\t`, `\r` as themselves;
/// - other C0 controls and DEL as `\xHH` (ESC is `\x1b`);
/// - C1 controls (U+0080..U+009F, e.g. NEL, CSI) and the invisible
///   formatting characters that reorder or hide text (bidi overrides and
///   isolates, zero-width characters, line/paragraph separators, BOM) as
///   `\u{HH}`;
/// - the backslash itself as `\\`, so the escaping is lossless: two
///   different names never display the same.
///
/// Everything else, U+FFFD (what invalid UTF-8 was replaced with when read),
/// quotes and spaces included, is kept. Borrowed when nothing needs escaping
/// (the common case).
pub fn display_path(p: &str) -> Cow<'_, str> {
    if !p.chars().any(needs_escape) {
        return Cow::Borrowed(p);
    }
    let mut out = String::with_capacity(p.len() + 8);
    for c in p.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

/// Like [`display_path`] for a name that is not UTF-8: each byte of an
/// invalid sequence shows as `\xHH` (so the exact name can be read off).
pub fn display_bytes(b: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(b.len() + 8);
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            push_escaped(&mut out, c);
        }
        for x in chunk.invalid() {
            let _ = write!(out, r"\x{x:02x}");
        }
    }
    out
}

/// A name shown from its text, or from its exact bytes (lowercase hex, as
/// in the JSON's `path_bytes_hex`) when it is not UTF-8.
pub fn display_name<'a>(text: &'a str, bytes_hex: Option<&str>) -> Cow<'a, str> {
    match bytes_hex.and_then(crate::model::unhex) {
        Some(b) => Cow::Owned(display_bytes(&b)),
        None => display_path(text),
    }
}

fn needs_escape(c: char) -> bool {
    c == '\\' || c.is_control() || is_invisible_format(c)
}

/// Unicode format characters that reorder (bidi: "Trojan Source") or hide
/// text, or that some terminals take as a line break.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{200b}'..='\u{200f}' // zero-width space/joiners, LRM, RLM
            | '\u{2028}'..='\u{202e}' // line/paragraph separators, bidi embeddings and overrides
            | '\u{2060}'..='\u{2069}' // word joiner, invisible operators, bidi isolates
            | '\u{feff}' // zero-width no-break space (BOM)
    )
}

fn push_escaped(out: &mut String, c: char) {
    use std::fmt::Write as _;
    match c {
        '\\' => out.push_str(r"\\"),
        '\n' => out.push_str(r"\n"),
        '\t' => out.push_str(r"\t"),
        '\r' => out.push_str(r"\r"),
        '\0'..='\x1f' | '\x7f' => {
            let _ = write!(out, r"\x{:02x}", c as u32);
        }
        c if needs_escape(c) => {
            let _ = write!(out, r"\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_not_utf8_show_their_bytes() {
        let b = b"/tmp/a\xffb\n\\c";
        assert_eq!(display_bytes(b), r"/tmp/a\xffb\n\\c");
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        assert_eq!(display_name("ignored", Some(&hex)), r"/tmp/a\xffb\n\\c");
        assert_eq!(display_name("/tmp/x\ty", None), r"/tmp/x\ty");
        // A malformed hex string falls back to the text.
        assert_eq!(display_name("/tmp/t", Some("zz")), "/tmp/t");
    }

    /// The inverse of [`display_path`], to prove it loses nothing.
    fn undo(s: &str) -> String {
        let mut out = String::new();
        let mut it = s.chars().peekable();
        while let Some(c) = it.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match it.next().expect("dangling backslash") {
                '\\' => out.push('\\'),
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'x' => {
                    let h: String = it.by_ref().take(2).collect();
                    out.push(char::from(u8::from_str_radix(&h, 16).unwrap()));
                }
                'u' => {
                    assert_eq!(it.next(), Some('{'));
                    let h: String = it.by_ref().take_while(|c| *c != '}').collect();
                    out.push(char::from_u32(u32::from_str_radix(&h, 16).unwrap()).unwrap());
                }
                other => panic!("unknown escape \\{other} in {s:?}"),
            }
        }
        out
    }

    fn is_safe(s: &str) -> bool {
        !s.chars().any(|c| c.is_control() || is_invisible_format(c))
    }

    #[test]
    fn plain_paths_are_borrowed_unchanged() {
        for p in [
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "/data/my file \"quoted\" 'too'.db",
            "/tmp/caf\u{e9}/\u{65e5}\u{672c}.txt",
            "/tmp/bad-utf8-\u{fffd}\u{fffd}.bin",
            "",
        ] {
            assert!(matches!(display_path(p), Cow::Borrowed(_)), "{p:?}");
            assert_eq!(display_path(p), p);
        }
    }

    #[test]
    fn controls_are_escaped_visibly() {
        assert_eq!(display_path("a\nb\tc\rd"), r"a\nb\tc\rd");
        assert_eq!(display_path("x\x1b[31mred\x1b[0m"), r"x\x1b[31mred\x1b[0m");
        assert_eq!(display_path("\0\x07\x7f"), r"\x00\x07\x7f");
        assert_eq!(
            display_path("nel\u{85}csi\u{9b}2J"),
            r"nel\u{85}csi\u{9b}2J"
        );
        assert_eq!(
            display_path("evil\u{202e}txt.exe\u{2066}\u{feff}\u{2028}"),
            r"evil\u{202e}txt.exe\u{2066}\u{feff}\u{2028}"
        );
        assert_eq!(display_path(r"C:\dir\n"), r"C:\\dir\\n");
    }

    #[test]
    fn hostile_names_round_trip_and_print_safely() {
        let mut all_chars: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        all_chars.push('\u{feff}');
        let long = format!("/tmp/{}", "x\u{1b}".repeat(2000));
        let names = [
            "/tmp/a\nb",
            "/tmp/\x1b]0;owned\x07title",
            "/tmp/\u{9b}6n",
            r"/tmp/back\slash\n not a newline",
            "/tmp/\"quoted\" and 'single'",
            "/tmp/\u{fffd}invalid",
            long.as_str(),
            all_chars.as_str(),
        ];
        for n in names {
            let shown = display_path(n);
            assert!(is_safe(&shown), "unsafe output for {n:?}: {shown:?}");
            assert!(!shown.contains('\n'));
            assert_eq!(undo(&shown), n, "round trip of {n:?}");
        }
        assert_eq!(display_path(&long).chars().count(), 5 + 2000 * 5);
    }

    #[test]
    fn different_names_never_display_the_same() {
        // A real newline and the two characters `\n` differ once shown.
        let pairs = [
            ("a\nb", r"a\nb"),
            ("a\x1bb", r"a\x1bb"),
            ("a\u{85}", r"a\u{85}"),
        ];
        for (x, y) in pairs {
            assert_ne!(display_path(x), display_path(y));
        }
    }
}
