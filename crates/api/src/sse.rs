//! A server-sent events parser for the change stream: bytes in, events out.
//!
//! It follows the event-stream format of the HTML standard for what the change stream sends:
//! `data:` lines (joined with `\n`), `event:` and `id:` fields, comments (`:` lines, the
//! keep-alives) ignored, an empty line dispatching the event. Lines end with `\n` or `\r\n`;
//! a lone `\r` as a line end (allowed by the standard, sent by no server Keel talks to) is not
//! recognized. `retry:` is ignored: reconnecting is the client's own policy.

/// One dispatched event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// The event type (`message` when the stream gave none).
    pub event: String,
    /// The data lines, joined with `\n`.
    pub data: String,
    /// The event's `id` field, if it had one.
    pub id: Option<String>,
}

/// An incremental parser; feed it bytes as they arrive.
///
/// Invariants:
/// * `line` holds the bytes of the current, unfinished line only.
/// * The fields of the event being built are in `event`, `data`, `has_data` and `id`.
#[derive(Debug, Default)]
pub struct Parser {
    /// The unfinished line.
    line: Vec<u8>,
    /// The pending event's type.
    event: String,
    /// The pending event's data.
    data: String,
    /// Whether any `data` field was seen for the pending event.
    has_data: bool,
    /// The pending event's id.
    id: Option<String>,
}

impl Parser {
    /// Parses `bytes` and returns the events they complete, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        for &byte in bytes {
            if byte != b'\n' {
                self.line.push(byte);
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if let Some(event) = self.line_done(&String::from_utf8_lossy(&line)) {
                events.push(event);
            }
        }
        events
    }

    /// Handles one complete line; an empty line dispatches the pending event.
    fn line_done(&mut self, line: &str) -> Option<Event> {
        if line.is_empty() {
            let event = std::mem::take(&mut self.event);
            let data = std::mem::take(&mut self.data);
            let id = self.id.take();
            if !std::mem::take(&mut self.has_data) {
                return None;
            }
            let event = if event.is_empty() { "message".to_string() } else { event };
            return Some(Event { event, data, id });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = value.to_string(),
            "id" if !value.contains('\0') => self.id = Some(value.to_string()),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event: &str, data: &str, id: Option<&str>) -> Event {
        Event { event: event.into(), data: data.into(), id: id.map(str::to_string) }
    }

    #[test]
    fn events_split_anywhere_come_out_whole() {
        let stream = b": keep-alive\n\nid: 7:0\ndata: {\"a\":1}\n\nevent: caught-up\r\nid: 9\r\ndata:{\"lsn\":9}\r\n\r\ndata: x\ndata: y\n\n";
        let expected = vec![
            event("message", "{\"a\":1}", Some("7:0")),
            event("caught-up", "{\"lsn\":9}", Some("9")),
            event("message", "x\ny", None),
        ];
        for split in 0..stream.len() {
            let mut parser = Parser::default();
            let mut events = parser.feed(&stream[..split]);
            events.extend(parser.feed(&stream[split..]));
            assert_eq!(events, expected, "split at {split}");
        }
    }

    #[test]
    fn incomplete_events_and_bare_fields_wait_or_vanish() {
        let mut parser = Parser::default();
        assert_eq!(parser.feed(b"id: 3\ndata: half"), vec![]);
        assert_eq!(parser.feed(b"\n"), vec![]);
        assert_eq!(parser.feed(b"\n"), vec![event("message", "half", Some("3"))]);
        // An event without data is not dispatched; a field without a colon has an empty value.
        assert_eq!(parser.feed(b"event: lonely\n\ndata\n\n"), vec![event("message", "", None)]);
    }
}
