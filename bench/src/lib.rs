//! Shared pieces of the Flagstaff measurements: the load generator both systems are driven by,
//! an etcd cluster of real processes, the watch fan-out measurement, latency summaries, plots
//! and machine facts. `src/bin/bench_report.rs` runs them all and writes the dated report (see
//! README.md).

pub mod etcd;
pub mod fanout;
pub mod load;
pub mod machine;
pub mod plot;
pub mod stats;

/// `line` without ANSI colour sequences (`ESC [ ... m`): the nodes' logs carry them around
/// field names (`bytes=`).
pub fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn plain_strips_colours_around_fields() {
        let line = "\u{1b}[32m INFO\u{1b}[0m installed snapshot \u{1b}[3mbytes\u{1b}[0m\u{1b}[2m=\u{1b}[0m37967994";
        assert_eq!(
            super::plain(line),
            " INFO installed snapshot bytes=37967994"
        );
    }
}
