//! Small helpers for showing untrusted text in one-line messages.

/// Control characters and bidi overrides/isolates: never sent to a
/// terminal or a log line from server or file text.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// At most `max` characters of `s`, unsafe characters blanked, with `…`
/// when cut: server and file text never breaks a terminal or a log line.
pub fn clip(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| if is_unsafe_char(c) { ' ' } else { c })
        .collect();
    if s.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn clip_blanks_controls_and_bidi_and_marks_the_cut() {
        assert_eq!(super::clip("a\x1b[31mb\u{202e}c", 20), "a [31mb c");
        assert_eq!(super::clip("abcdef", 3), "abc…");
        assert_eq!(super::clip("abc", 3), "abc");
    }
}
