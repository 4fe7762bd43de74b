//! An incremental Server-Sent Events parser (the WHATWG `text/event-stream` format).
//!
//! Bytes go in as they arrive, in chunks of any size and split anywhere; complete events come
//! out. A line or an event larger than the configured limit is an error rather than unbounded
//! memory, and an event cut off by the end of the stream is never produced (the standard says
//! to discard it), so a truncated stream cannot yield half an update.

use std::fmt;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; `message` when the event has none.
    pub event: String,
    /// The `id:` field of this event, if it had one.
    pub id: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// The stream broke the size limit or was not UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseError {
    /// A line or an event's data grew past the limit (bytes).
    TooLarge(usize),
    /// A line was not valid UTF-8.
    NotUtf8,
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge(n) => write!(f, "event stream line or event larger than {n} bytes"),
            Self::NotUtf8 => f.write_str("event stream is not UTF-8"),
        }
    }
}

impl std::error::Error for SseError {}

/// Parser state; feed it with [`SseParser::push`].
#[derive(Debug)]
pub struct SseParser {
    max: usize,
    line: Vec<u8>,
    /// The previous chunk ended with `\r`: a `\n` starting the next one belongs to it.
    after_cr: bool,
    started: bool,
    event: String,
    id: Option<String>,
    data: String,
    has_data: bool,
}

impl SseParser {
    /// A parser refusing lines and events larger than `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max: max_bytes,
            line: Vec::new(),
            after_cr: false,
            started: false,
            event: String::new(),
            id: None,
            data: String::new(),
            has_data: false,
        }
    }

    /// Feeds a chunk; appends every event it completes to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        let mut rest = chunk;
        if rest.is_empty() {
            return Ok(());
        }
        if self.after_cr {
            self.after_cr = false;
            if let Some(b'\n') = rest.first() {
                rest = &rest[1..];
            }
        }
        while let Some(pos) = rest.iter().position(|b| *b == b'\n' || *b == b'\r') {
            if self.line.len() + pos > self.max {
                return Err(SseError::TooLarge(self.max));
            }
            self.line.extend_from_slice(&rest[..pos]);
            let was_cr = rest[pos] == b'\r';
            rest = &rest[pos + 1..];
            if was_cr {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    None => self.after_cr = true,
                    Some(_) => {}
                }
            }
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, out)?;
        }
        if self.line.len() + rest.len() > self.max {
            return Err(SseError::TooLarge(self.max));
        }
        self.line.extend_from_slice(rest);
        Ok(())
    }

    fn line_done(&mut self, raw: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        let mut line = std::str::from_utf8(raw).map_err(|_| SseError::NotUtf8)?;
        if !self.started {
            self.started = true;
            line = line.strip_prefix('\u{feff}').unwrap_or(line);
        }
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        if line.starts_with(':') {
            return Ok(()); // comment (often a keep-alive)
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                if self.data.len() + value.len() + 1 > self.max {
                    return Err(SseError::TooLarge(self.max));
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            // An id with NUL is ignored, as the standard says.
            "id" if !value.contains('\0') => self.id = Some(value.to_string()),
            _ => {} // `retry` and unknown fields: the client has its own backoff
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = std::mem::take(&mut self.event);
        let id = self.id.take();
        let data = std::mem::take(&mut self.data);
        if !std::mem::replace(&mut self.has_data, false) {
            return; // no data lines: nothing to dispatch
        }
        out.push(SseEvent {
            event: if event.is_empty() {
                "message".to_string()
            } else {
                event
            },
            id,
            data,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_chunks(chunks: &[&[u8]]) -> Result<Vec<SseEvent>, SseError> {
        let mut p = SseParser::new(1024);
        let mut out = Vec::new();
        for c in chunks {
            p.push(c, &mut out)?;
        }
        Ok(out)
    }

    fn ev(event: &str, id: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.into(),
            id: id.map(str::to_string),
            data: data.into(),
        }
    }

    #[test]
    fn events_with_ids_types_and_multiline_data() {
        let s = b"event: snapshot\nid: 7\ndata: {\"a\":1}\n\n: keep-alive\n\nevent:change\nid:9\ndata:l1\ndata: l2\n\ndata: plain\n\n";
        assert_eq!(
            parse_chunks(&[s]).unwrap(),
            vec![
                ev("snapshot", Some("7"), "{\"a\":1}"),
                ev("change", Some("9"), "l1\nl2"),
                ev("message", None, "plain"),
            ]
        );
    }

    #[test]
    fn any_split_point_gives_the_same_events() {
        let s: &[u8] =
            b"\xef\xbb\xbfevent: a\r\nid: 1\r\ndata: x\r\n\r\nevent: b\rdata: y\r\rdata: z\n\n";
        let whole = parse_chunks(&[s]).unwrap();
        assert_eq!(
            whole,
            vec![
                ev("a", Some("1"), "x"),
                ev("b", None, "y"),
                ev("message", None, "z")
            ]
        );
        for i in 0..=s.len() {
            for j in i..=s.len() {
                assert_eq!(
                    parse_chunks(&[&s[..i], &s[i..j], &s[j..]]).unwrap(),
                    whole,
                    "split at {i},{j}"
                );
            }
        }
    }

    #[test]
    fn truncated_event_is_never_dispatched() {
        assert_eq!(
            parse_chunks(&[b"event: change\nid: 3\ndata: {\"revision\":3}\n"]).unwrap(),
            vec![]
        );
        assert_eq!(
            parse_chunks(&[b"data: a\n\ndata: b"]).unwrap(),
            vec![ev("message", None, "a")]
        );
    }

    #[test]
    fn events_without_data_and_unknown_fields_are_skipped() {
        assert_eq!(
            parse_chunks(&[b"event: x\nid: 4\n\nretry: 10\nfoo: bar\ndata\n\n"]).unwrap(),
            vec![ev("message", None, "")]
        );
    }

    #[test]
    fn oversized_lines_and_events_are_errors() {
        let long = vec![b'a'; 2000];
        assert_eq!(parse_chunks(&[&long]), Err(SseError::TooLarge(1024)));
        let mut p = SseParser::new(1024);
        let mut out = Vec::new();
        let line = format!("data: {}\n", "b".repeat(600));
        p.push(line.as_bytes(), &mut out).unwrap();
        assert_eq!(
            p.push(line.as_bytes(), &mut out),
            Err(SseError::TooLarge(1024))
        );
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        assert_eq!(
            parse_chunks(&[b"data: \xff\xfe\n\n"]),
            Err(SseError::NotUtf8)
        );
    }
}
