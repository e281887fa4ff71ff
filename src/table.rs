//! The plain-text tables of `status` and `report`: columns two spaces
//! apart, each as wide as its widest cell on a screen.

use unicode_width::UnicodeWidthStr;

/// Where a cell sits in its column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// The rows (a head, if any, first) as lines. A column is as wide as its
/// widest cell's display width, so wide and combining characters line up;
/// `align` gives each column's side (a column it does not name is left
/// aligned). Trailing space is trimmed from every line. Cells are printed
/// as given: escaping is the caller's.
pub fn render<R, S>(rows: &[R], align: &[Align]) -> String
where
    R: AsRef<[S]>,
    S: AsRef<str>,
{
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, cell) in row.as_ref().iter().enumerate() {
            let w = cell.as_ref().width();
            match widths.get_mut(i) {
                Some(max) => *max = (*max).max(w),
                None => widths.push(w),
            }
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.as_ref().iter().enumerate() {
            let cell = cell.as_ref();
            if i > 0 {
                line.push_str("  ");
            }
            let pad = " ".repeat(widths[i] - cell.width());
            match align.get(i).copied().unwrap_or(Align::Left) {
                Align::Left => {
                    line.push_str(cell);
                    line.push_str(&pad);
                }
                Align::Right => {
                    line.push_str(&pad);
                    line.push_str(cell);
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_by_display_width() {
        let rows = [["KEY", "N"], ["a", "10"], ["日本", "2"], ["e\u{301}", "3"]];
        assert_eq!(
            render(&rows, &[Align::Left, Align::Right]),
            "KEY    N\na     10\n日本   2\ne\u{301}      3\n"
        );
    }

    #[test]
    fn left_aligned_last_column_is_not_padded() {
        let rows = [vec!["A", "LONG HEAD"], vec!["bb", "x"]];
        assert_eq!(render(&rows, &[]), "A   LONG HEAD\nbb  x\n");
    }
}
