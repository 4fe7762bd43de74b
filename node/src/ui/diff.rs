//! A line diff of two JSON values (pretty-printed), for history and conflict pages.

use serde::Serialize;
use serde_json::Value;

/// One line of a diff: `" "` kept, `"-"` only in the old text, `"+"` only in the new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiffLine {
    pub op: &'static str,
    pub text: String,
}

/// Beyond this many lines on either side the diff shows the old text removed and the new one
/// added instead of computing the longest common subsequence (quadratic in the line counts).
const MAX_LINES: usize = 500;

fn lines(v: Option<&Value>) -> Vec<String> {
    match v {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => super::forms::pretty(v)
            .lines()
            .map(str::to_string)
            .collect(),
    }
}

/// Unchanged lines kept around each change; longer unchanged runs fold into one `…` line.
const CONTEXT: usize = 3;

/// The lines of `before` → `after`; a missing side (created or deleted) is empty.
pub fn json_diff(before: Option<&Value>, after: Option<&Value>) -> Vec<DiffLine> {
    fold_unchanged(line_diff(&lines(before), &lines(after)), CONTEXT)
}

/// Replaces each run of unchanged lines farther than `context` from a change by one line
/// `op: "…"` saying how many lines it stands for.
pub fn fold_unchanged(diff: Vec<DiffLine>, context: usize) -> Vec<DiffLine> {
    let changed: Vec<usize> = (0..diff.len()).filter(|&i| diff[i].op != " ").collect();
    let near = |i: usize| changed.iter().any(|&c| c.abs_diff(i) <= context);
    let mut out = Vec::new();
    let mut folded = 0;
    for (i, line) in diff.into_iter().enumerate() {
        if line.op == " " && !near(i) {
            folded += 1;
            continue;
        }
        if folded > 0 {
            out.push(DiffLine {
                op: "…",
                text: format!("{folded} unchanged lines"),
            });
            folded = 0;
        }
        out.push(line);
    }
    if folded > 0 {
        out.push(DiffLine {
            op: "…",
            text: format!("{folded} unchanged lines"),
        });
    }
    out
}

pub fn line_diff(a: &[String], b: &[String]) -> Vec<DiffLine> {
    let line = |op, text: &String| DiffLine {
        op,
        text: text.clone(),
    };
    if a.len() > MAX_LINES || b.len() > MAX_LINES {
        return a
            .iter()
            .map(|t| line("-", t))
            .chain(b.iter().map(|t| line("+", t)))
            .collect();
    }
    // lcs[i][j]: length of the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        if a[i] == b[j] {
            out.push(line(" ", &a[i]));
            i += 1;
            j += 1;
        } else if lcs[i + 1][j] >= lcs[i][j + 1] {
            out.push(line("-", &a[i]));
            i += 1;
        } else {
            out.push(line("+", &b[j]));
            j += 1;
        }
    }
    out.extend(a[i..].iter().map(|t| line("-", t)));
    out.extend(b[j..].iter().map(|t| line("+", t)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(d: &[DiffLine]) -> Vec<String> {
        d.iter()
            .map(|l| format!("{}{}", l.op, l.text.trim()))
            .collect()
    }

    #[test]
    fn a_changed_field_is_one_removed_and_one_added_line() {
        let d = json_diff(
            Some(&json!({"a": 1, "state": "ENABLED", "z": 2})),
            Some(&json!({"a": 1, "state": "DISABLED", "z": 2})),
        );
        assert_eq!(
            render(&d),
            [
                " {",
                " \"a\": 1,",
                "-\"state\": \"ENABLED\",",
                "+\"state\": \"DISABLED\",",
                " \"z\": 2",
                " }"
            ]
        );
    }

    #[test]
    fn long_unchanged_runs_fold_and_changes_keep_their_context() {
        let a: Vec<String> = (0..20).map(|i| format!("l{i}")).collect();
        let mut b = a.clone();
        b[10] = "changed".into();
        let d = fold_unchanged(line_diff(&a, &b), 2);
        let shown: Vec<String> = d.iter().map(|l| format!("{}{}", l.op, l.text)).collect();
        assert_eq!(
            shown,
            [
                "…8 unchanged lines",
                " l8",
                " l9",
                "-l10",
                "+changed",
                " l11",
                " l12",
                "…7 unchanged lines"
            ]
        );
        // Nothing changed: everything folds; nothing to fold: nothing added.
        assert_eq!(fold_unchanged(line_diff(&a, &a), 2).len(), 1);
        let short = fold_unchanged(line_diff(&a[8..13], &b[8..13]), 5);
        assert!(short.iter().all(|l| l.op != "…"));
    }

    #[test]
    fn creation_and_deletion_are_all_added_or_all_removed() {
        let v = json!({"a": 1});
        assert!(json_diff(None, Some(&v)).iter().all(|l| l.op == "+"));
        assert!(json_diff(Some(&v), None).iter().all(|l| l.op == "-"));
        assert!(json_diff(None, None).is_empty());
    }

    #[test]
    fn every_line_of_both_sides_appears_in_order() {
        let a: Vec<String> = "a b c d e f".split(' ').map(String::from).collect();
        let b: Vec<String> = "b x d f g".split(' ').map(String::from).collect();
        let d = line_diff(&a, &b);
        let old: Vec<&str> = d
            .iter()
            .filter(|l| l.op != "+")
            .map(|l| l.text.as_str())
            .collect();
        let new: Vec<&str> = d
            .iter()
            .filter(|l| l.op != "-")
            .map(|l| l.text.as_str())
            .collect();
        assert_eq!(old, ["a", "b", "c", "d", "e", "f"]);
        assert_eq!(new, ["b", "x", "d", "f", "g"]);
        assert_eq!(d.iter().filter(|l| l.op == " ").count(), 3);
    }
}
