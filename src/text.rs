//! The one function that makes untrusted text (file names, server strings,
//! file contents) fit for a line on a terminal or in a log.

/// Control characters, bidi overrides, isolates and marks, and the Unicode
/// line and paragraph separators: never sent raw to a terminal or a log
/// line from server or file text (an ESC or OSC sequence rewrites the
/// screen or the window title, a CR or LF forges a line, a bidi override
/// shows the text in another order than it is).
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// The longest line [`line`] lets through.
pub const LINE_MAX: usize = 4000;

/// At most `max` characters of `s`, each unsafe character written as a
/// visible escape (`\n`, `\r`, `\t`, `\x1b`, `\u{202e}`), with `…` when
/// cut: server and file text never breaks a terminal or a log line, and a
/// person still sees that something was there.
pub fn clip(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max * 4));
    for c in s.chars().take(max) {
        escape_into(&mut out, c);
    }
    if s.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// A whole message line (a warning, an error), through [`clip`].
pub fn line(s: &str) -> String {
    clip(s, LINE_MAX)
}

/// Pretty JSON fit for a terminal: `serde_json` escapes the C0 controls
/// inside strings but writes DEL, the C1 controls, the bidi characters and
/// the line separators raw; here each of those becomes a `\uXXXX` escape
/// too, so the JSON reads back the same and never rewrites a screen.
pub fn json_pretty<T: serde::Serialize + ?Sized>(v: &T) -> serde_json::Result<String> {
    Ok(json_escape_raw(serde_json::to_string_pretty(v)?))
}

/// [`json_pretty`] on one line (as `serde_json` writes a value compactly).
pub fn json_line<T: serde::Serialize + ?Sized>(v: &T) -> serde_json::Result<String> {
    Ok(json_escape_raw(serde_json::to_string(v)?))
}

/// Outside its strings, JSON text is ASCII with no control but the
/// newlines of the pretty form; every unsafe character at or above DEL is
/// thus inside a string, where `\uXXXX` means the same character (all of
/// them lie in the Basic Multilingual Plane).
fn json_escape_raw(s: String) -> String {
    use std::fmt::Write;
    if !s.chars().any(|c| c >= '\u{7f}' && is_unsafe_char(c)) {
        return s;
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if c >= '\u{7f}' && is_unsafe_char(c) {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

fn escape_into(out: &mut String, c: char) {
    use std::fmt::Write;
    if !is_unsafe_char(c) {
        out.push(c);
        return;
    }
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x100 => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_escapes_controls_and_bidi_and_marks_the_cut() {
        // (input, max, shown)
        let rows: &[(&str, usize, &str)] = &[
            ("a\x1b[31mb\u{202e}c", 20, "a\\x1b[31mb\\u{202e}c"),
            ("x\x1b]0;title\x07y", 20, "x\\x1b]0;title\\x07y"),
            ("one\r\ntwo\tthree", 20, "one\\r\\ntwo\\tthree"),
            ("\u{9b}2J\u{7f}", 20, "\\x9b2J\\x7f"),
            (
                "\u{2066}\u{2069}\u{200f}\u{2028}",
                20,
                "\\u{2066}\\u{2069}\\u{200f}\\u{2028}",
            ),
            ("ünïcödé ✓ 日本", 20, "ünïcödé ✓ 日本"),
            ("abcdef", 3, "abc…"),
            ("abc", 3, "abc"),
            ("", 3, ""),
        ];
        for &(input, max, shown) in rows {
            let got = clip(input, max);
            assert_eq!(got, shown, "{input:?}");
            assert!(!got.chars().any(is_unsafe_char), "{got:?}");
        }
        assert_eq!(
            line(&"a".repeat(LINE_MAX + 1)).chars().count(),
            LINE_MAX + 1
        );
    }

    #[test]
    fn json_escapes_what_serde_leaves_raw_and_reads_back_the_same() {
        let rows = [
            "a\x1bb\u{202e}c",
            "\u{7f}\u{9b}2J",
            "\u{2028}\u{2029}\u{2066}\u{061c}",
            "line\none\ttab",
            "ünïcödé ✓ 日本",
            "",
        ];
        for s in rows {
            let v = serde_json::json!({"k": s, "list": [s, 1.5]});
            let got = json_pretty(&v).unwrap();
            assert!(!got.contains('\u{1b}'), "{got:?}");
            assert!(
                !got.chars().any(|c| c != '\n' && is_unsafe_char(c)),
                "{got:?}"
            );
            let back: serde_json::Value = serde_json::from_str(&got).unwrap();
            assert_eq!(back, v, "{got}");
            let one = json_line(&v).unwrap();
            assert!(!one.chars().any(is_unsafe_char), "{one:?}");
            assert_eq!(serde_json::from_str::<serde_json::Value>(&one).unwrap(), v);
        }
        assert!(json_pretty(&"\u{202e}").unwrap() == "\"\\u202e\"");
    }
}
