//! Prometheus metrics in the text exposition format, with a small hand-written encoder.
//!
//! Request counters and latency histograms are recorded by the HTTP layer; change-capture and
//! database gauges are read at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Latency histogram bucket bounds, in seconds.
const BOUNDS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BOUNDS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, b) in BOUNDS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }
}

#[derive(Debug, Default)]
struct Inner {
    requests: BTreeMap<(&'static str, u16), u64>,
    latency: BTreeMap<&'static str, Histogram>,
    push_outcomes: BTreeMap<&'static str, u64>,
    since_last_sync: Histogram,
}

/// Process-wide counters and histograms.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// A gauge or counter value read at scrape time.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Metric name.
    pub name: &'static str,
    /// `gauge` or `counter`.
    pub kind: &'static str,
    /// Help text.
    pub help: &'static str,
    /// The value.
    pub value: f64,
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        match self.inner.lock() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    /// Records one HTTP request.
    pub fn observe_request(&self, endpoint: &'static str, status: u16, elapsed: Duration) {
        self.with(|m| {
            *m.requests.entry((endpoint, status)).or_default() += 1;
            m.latency.entry(endpoint).or_default().observe(elapsed.as_secs_f64());
        });
    }

    /// Records one push result status.
    pub fn observe_push(&self, status: &'static str) {
        self.with(|m| *m.push_outcomes.entry(status).or_default() += 1);
    }

    /// Records how long a client had been away when it synced.
    pub fn observe_since_last_sync(&self, secs: f64) {
        self.with(|m| m.since_last_sync.observe(secs));
    }

    /// Renders everything plus `samples` in the Prometheus text format.
    pub fn render(&self, samples: &[Sample]) -> String {
        let mut out = String::new();
        for s in samples {
            let _ = writeln!(out, "# HELP {} {}\n# TYPE {} {}\n{} {}", s.name, s.help, s.name, s.kind, s.name, s.value);
        }
        self.with(|m| {
            out.push_str("# HELP synchro_http_requests_total HTTP requests by endpoint and status.\n# TYPE synchro_http_requests_total counter\n");
            for ((e, s), n) in &m.requests {
                let _ = writeln!(out, "synchro_http_requests_total{{endpoint=\"{}\",status=\"{s}\"}} {n}", escape(e));
            }
            out.push_str("# HELP synchro_http_request_duration_seconds HTTP request latency by endpoint.\n# TYPE synchro_http_request_duration_seconds histogram\n");
            for (e, h) in &m.latency {
                write_histogram(&mut out, "synchro_http_request_duration_seconds", &format!("endpoint=\"{}\",", escape(e)), h);
            }
            out.push_str("# HELP synchro_push_records_total Pushed records by result status.\n# TYPE synchro_push_records_total counter\n");
            for (s, n) in &m.push_outcomes {
                let _ = writeln!(out, "synchro_push_records_total{{status=\"{}\"}} {n}", escape(s));
            }
            out.push_str("# HELP synchro_seconds_since_last_sync Time since a client's previous sync, observed when it syncs.\n# TYPE synchro_seconds_since_last_sync histogram\n");
            write_histogram(&mut out, "synchro_seconds_since_last_sync", "", &m.since_last_sync);
        });
        out
    }
}

/// One counter family with a single label, read at scrape time: `name{label="value"} n`.
#[derive(Debug, Clone)]
pub struct LabeledCounter {
    /// Metric name.
    pub name: &'static str,
    /// Help text.
    pub help: &'static str,
    /// The label's name.
    pub label: &'static str,
    /// Each label value with its count.
    pub values: Vec<(&'static str, u64)>,
}

impl LabeledCounter {
    /// Appends the family in the text format.
    pub fn render_into(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}\n# TYPE {} counter", self.name, self.help, self.name);
        for (value, n) in &self.values {
            let _ = writeln!(out, "{}{{{}=\"{}\"}} {n}", self.name, self.label, escape(value));
        }
    }
}

fn write_histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    for (i, b) in BOUNDS.iter().enumerate() {
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{b}\"}} {}", h.counts[i]);
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {}", h.count);
    let trimmed = labels.trim_end_matches(',');
    if trimmed.is_empty() {
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", h.sum, h.count);
    } else {
        let _ = writeln!(out, "{name}_sum{{{trimmed}}} {}\n{name}_count{{{trimmed}}} {}", h.sum, h.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let m = Metrics::default();
        m.observe_request("pull", 200, Duration::from_millis(3));
        m.observe_request("pull", 200, Duration::from_millis(30));
        m.observe_push("applied");
        let text = m.render(&[Sample {
            name: "synchro_slot_active",
            kind: "gauge",
            help: "Whether the slot is active.",
            value: 1.0,
        }]);
        assert!(text.contains("synchro_http_requests_total{endpoint=\"pull\",status=\"200\"} 2"));
        assert!(text.contains("synchro_http_request_duration_seconds_bucket{endpoint=\"pull\",le=\"0.005\"} 1"));
        assert!(text.contains("synchro_http_request_duration_seconds_bucket{endpoint=\"pull\",le=\"+Inf\"} 2"));
        assert!(text.contains("synchro_http_request_duration_seconds_count{endpoint=\"pull\"} 2"));
        assert!(text.contains("synchro_push_records_total{status=\"applied\"} 1"));
        assert!(text.contains("# TYPE synchro_slot_active gauge\nsynchro_slot_active 1"));
        // Every non-comment line is `name{labels} value` or `name value`.
        let mut text = text;
        LabeledCounter {
            name: "synchro_pull_hydrations_total",
            help: "Pulled pages.",
            label: "source",
            values: vec![("replica", 2), ("primary", 1)],
        }
        .render_into(&mut text);
        assert!(text.contains("# TYPE synchro_pull_hydrations_total counter\n"));
        assert!(text.contains("synchro_pull_hydrations_total{source=\"replica\"} 2\n"));
        assert!(text.contains("synchro_pull_hydrations_total{source=\"primary\"} 1\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
