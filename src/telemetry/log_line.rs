//! The JSON log line: one object per event, event fields at the top level.
//!
//! `{"timestamp":"2026-11-21T15:04:05.123456Z","level":"INFO","message":"decision","request_id":"…",…,"target":"fleet_authz::decision"}`
//!
//! The same shape as `tracing-subscriber`'s JSON formatter with
//! `flatten_event(true)` and no span fields, written straight into the
//! line buffer. That formatter passes every value through `serde_json` and an
//! `io::Write` adaptor (re-checking the bytes as UTF-8) and formats each
//! `%value` into a `String` first; on the decision line, written once per
//! Check, that cost several microseconds of CPU per Check under load (see
//! BENCHMARKS.md). This one allocates nothing.

use std::{
    cell::RefCell,
    fmt::{self, Write as _},
    time::{Duration, UNIX_EPOCH},
};

use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
};
use tracing_log::NormalizeEvent;
use tracing_subscriber::{
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

/// The event formatter for `telemetry.log_format: json`.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Events bridged from the `log` crate carry their real target and
        // location as `log.*` fields; show the real target, drop the rest.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        writer.write_str("{\"timestamp\":\"")?;
        timestamp(&mut writer, std::time::SystemTime::now())?;
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(meta.level().as_str())?;
        writer.write_char('"')?;
        let mut fields = Fields {
            out: &mut writer,
            skip_log_fields: normalized.is_some(),
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_str(",\"target\":")?;
        string(&mut writer, meta.target())?;
        writer.write_str("}\n")
    }
}

/// Writes each field as `,"name":value`.
struct Fields<'a, 'w> {
    out: &'a mut Writer<'w>,
    skip_log_fields: bool,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    /// Writes `,"name":` and then `value`, unless the field is skipped or a
    /// write already failed.
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        if self.skip_log_fields && name.starts_with("log.") {
            return;
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.result = (|| {
            self.out.write_char(',')?;
            string(self.out, name)?;
            self.out.write_char(':')?;
            value(self.out)
        })();
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, |w| string(w, value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.field(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.field(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinities: those are written as strings.
        self.field(field, |w| {
            if value.is_finite() {
                write!(w, "{value}")
            } else {
                write!(w, "\"{value}\"")
            }
        });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.field(field, |w| quoted(w, format_args!("{value}")));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, |w| quoted(w, format_args!("{value:?}")));
    }
}

/// RFC 3339 in UTC with microseconds, `2026-11-21T15:04:05.123456Z`. The
/// part up to the seconds is formatted once per second per thread.
fn timestamp(w: &mut Writer<'_>, now: std::time::SystemTime) -> fmt::Result {
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with_borrow_mut(|(cached, prefix)| {
        if *cached != secs {
            prefix.clear();
            let whole = UNIX_EPOCH + Duration::from_secs(secs);
            // `…T15:04:05Z`: keep everything before the `Z`.
            write!(prefix, "{}", humantime::format_rfc3339_seconds(whole))?;
            prefix.pop();
            *cached = secs;
        }
        w.write_str(prefix)
    })?;
    // Six digits with leading zeros: format 1xxxxxx and drop the 1.
    let mut digits = itoa::Buffer::new();
    let micros = digits.format(since.subsec_micros() + 1_000_000);
    w.write_char('.')?;
    w.write_str(&micros[1..])?;
    w.write_char('Z')
}

/// `s` as a JSON string.
fn string(w: &mut Writer<'_>, s: &str) -> fmt::Result {
    w.write_char('"')?;
    Escaped(w).write_str(s)?;
    w.write_char('"')
}

/// Formatted `args` as a JSON string, escaped as it is produced.
fn quoted(w: &mut Writer<'_>, args: fmt::Arguments<'_>) -> fmt::Result {
    w.write_char('"')?;
    Escaped(w).write_fmt(args)?;
    w.write_char('"')
}

/// Escapes what JSON requires inside a string: `"`, `\` and control
/// characters; everything else passes through in runs.
struct Escaped<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for Escaped<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut run = 0;
        for (i, b) in s.bytes().enumerate() {
            let escape = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&s[run..i])?;
            if escape.is_empty() {
                write!(self.0, "\\u{b:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            run = i + 1;
        }
        self.0.write_str(&s[run..])
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::Value;
    use tracing_subscriber::{fmt::MakeWriter, prelude::*};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    /// The lines `emit` logs, each parsed as JSON.
    fn lines(emit: impl FnOnce()) -> (String, Vec<Value>) {
        let out = Captured::default();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .event_format(JsonLine)
                .with_writer(out.clone()),
        );
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let parsed = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        (text, parsed)
    }

    #[test]
    fn decision_line_has_every_field_at_the_top_level() {
        let route: Arc<str> = Arc::from("pay\"roll");
        let (text, lines) = lines(|| {
            tracing::info!(
                target: "fleet_authz::decision",
                request_id = "r-1",
                route = %route,
                host_id = Some(42u64),
                fingerprint = None::<&str>,
                latency_us = 17u64,
                delta = -3i64,
                dry = false,
                ratio = 0.5f64,
                odd = f64::NAN,
                "decision"
            );
        });
        assert_eq!(text.lines().count(), 1);
        assert!(text.ends_with("}\n"), "{text}");
        let line = &lines[0];
        assert_eq!(line["message"], "decision");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["target"], "fleet_authz::decision");
        assert_eq!(line["request_id"], "r-1");
        assert_eq!(line["route"], "pay\"roll");
        assert_eq!(line["host_id"], 42);
        assert!(line.get("fingerprint").is_none(), "{line}");
        assert_eq!(line["latency_us"], 17);
        assert_eq!(line["delta"], -3);
        assert_eq!(line["dry"], false);
        assert_eq!(line["ratio"], 0.5);
        assert_eq!(line["odd"], "NaN");
        let ts = line["timestamp"].as_str().unwrap();
        assert!(
            ts.len() == 27 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "{ts}"
        );
    }

    #[test]
    fn timestamps_and_numbers_are_written_exactly() {
        let mut line = String::new();
        let at = UNIX_EPOCH + Duration::from_micros(1_795_532_645_000_042);
        timestamp(&mut Writer::new(&mut line), at).unwrap();
        assert_eq!(line, "2026-11-24T15:04:05.000042Z");
        line.clear();
        // The same second again (from the per-thread cache), then the next.
        timestamp(
            &mut Writer::new(&mut line),
            at + Duration::from_micros(999_000),
        )
        .unwrap();
        timestamp(&mut Writer::new(&mut line), at + Duration::from_secs(1)).unwrap();
        assert_eq!(
            line,
            "2026-11-24T15:04:05.999042Z2026-11-24T15:04:06.000042Z"
        );
        let (_, lines) = lines(|| tracing::info!(low = i64::MIN, high = u64::MAX, "n"));
        assert_eq!(lines[0]["low"], i64::MIN);
        assert_eq!(lines[0]["high"], u64::MAX);
    }

    #[test]
    fn strings_are_escaped_as_json_requires() {
        let nasty = "quote\" back\\slash\nnew\rret\ttab\u{1}ctl\u{7f} é ✓";
        let (_, lines) = lines(|| {
            tracing::warn!(value = nasty, shown = ?nasty, "m\"sg");
        });
        let line = &lines[0];
        assert_eq!(line["value"], nasty);
        assert_eq!(line["shown"], format!("{nasty:?}"));
        assert_eq!(line["message"], "m\"sg");
        assert_eq!(line["level"], "WARN");
    }

    #[test]
    fn errors_are_written_by_their_display() {
        let error = std::io::Error::other("disk \"full\"");
        let (_, lines) = lines(|| {
            tracing::error!(
                error = &error as &(dyn std::error::Error + 'static),
                "failed"
            );
        });
        assert_eq!(lines[0]["error"], "disk \"full\"");
        assert_eq!(lines[0]["level"], "ERROR");
    }
}
