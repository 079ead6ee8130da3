//! report: what a benchmark run measured, for people (`render`) and as JSON
//! (the keys an integration test or a CI job reads: `sent`, `delivered`,
//! `lost`, `duplicated`, `events_per_sec`, `broker_cpu_us_per_event`,
//! `broker_cpu_us_per_delivered_event`, `broker_peak_rss_bytes`,
//! `broker_workers`, `broker_cpus`, `latency_ms.{p50,p99,p999,max}`).

use std::fmt::Write;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::bench::BrokerOverrides;
use crate::gen::{Format, Framing};
use crate::send::SendSummary;
use crate::sink::Responses;
use crate::verify::{Latency, SinkSummary};

/// The broker process, as /proc saw it. restart-at-cap adds up its two
/// processes: the first's CPU from send start to its exit (its shutdown
/// included, sampled every 20 ms) and the restarted one's from its start to
/// drain end; peak RSS is the sum of their VmHWM (they never run together).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct BrokerUsage {
    /// user + system CPU seconds while the run lasted (send start to drain end)
    pub cpu_s: f64,
    /// VmHWM
    pub peak_rss_bytes: u64,
}

/// restart-at-cap: the broker when it was signalled, and its two lives.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct RestartReport {
    /// frames the broker had read (every frame sent)
    pub frames_read: u64,
    /// frames in its work queue or being converted (`qbroker_queue_messages`)
    pub queue_messages: u64,
    pub queue_bytes: u64,
    /// bytes of its spool's segments, and the appends that waited on it full
    pub spool_bytes: u64,
    pub spool_full_waits: u64,
    /// SIGTERM to exit, seconds (the sink still answers 503: the broker tries
    /// it until `[shutdown] grace_secs` ends)
    pub stop_s: f64,
    /// the stopped broker's last `qbroker stopped` line
    pub stopped: String,
    /// start of the second broker to its listening, seconds
    pub restart_s: f64,
}

/// How the run was set up.
#[derive(Clone, Debug, Serialize)]
pub struct Setup {
    pub scenario: String,
    /// what carried the batches: `https`, `amqp` (a message per batch) or
    /// `amqp-event` (a message per event)
    pub egress: String,
    pub clusters: u16,
    pub nodes_per_cluster: u16,
    pub format: Format,
    pub framing: Framing,
    pub seed: u64,
    /// the configured send rate (events/s, all nodes), None: flat out
    pub rate: Option<f64>,
    /// the qbroker binary
    pub broker: String,
    /// the broker's parse threads (`workers` in its configuration)
    pub broker_workers: usize,
    /// the CPUs the broker may run on (its `Cpus_allowed_list`)
    pub broker_cpus: String,
    /// started under `taskset -c` (`--broker-cpus`)
    pub broker_pinned: bool,
    /// `[batch]` and `[spool]` settings of the run (null: the broker's default)
    pub broker_overrides: BrokerOverrides,
    /// how the broker ended, e.g. `exit status: 0 after SIGTERM`
    /// (restart-at-cap: both processes)
    pub broker_exit: String,
    /// times the broker was stopped and started again mid-run (restart-at-cap: 1)
    pub broker_restarts: u32,
}

/// The enrichment part of a report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EnrichReport {
    /// metadata changes on namespace objects the senders wrote
    pub sent: u64,
    pub share_pct: f64,
    /// of which arrived (records)
    pub records: u64,
    pub exact: u64,
    pub first: u64,
    pub fallbacks: u64,
    pub unverified: u64,
    pub lost: u64,
    /// the broker's counters
    pub jobs: u64,
    pub jobs_per_sec: f64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub cache_hit_rate: f64,
    pub api_errors: u64,
    pub logins: u64,
    pub token_renewals: u64,
    pub api_delay_ms: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub setup: Setup,
    /// the enrichment scenarios: metadata changes and what qbroker made of them
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrich: Option<EnrichReport>,
    /// restart-at-cap: the broker when it was signalled
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartReport>,
    /// nothing lost, invented, altered or malformed; see `failures`
    pub ok: bool,
    pub failures: Vec<String>,
    /// seconds spent sending
    pub duration_s: f64,
    /// seconds from the end of sending to the last delivery (or giving up)
    pub drain_s: f64,
    /// events written to the broker, filtered ones included
    pub sent: u64,
    /// of which qbroker must deliver
    pub sent_expected: u64,
    /// distinct expected events the sink accepted
    pub delivered: u64,
    pub lost: u64,
    /// events received more than once
    pub duplicated: u64,
    /// of which inside a re-delivered batch (same batch_id): an idempotent re-send
    pub duplicated_in_redelivered_batches: u64,
    /// accepted batches whose batch_id came before
    pub duplicate_batches: u64,
    pub batches: u64,
    pub reordered: u64,
    pub order_violations: u64,
    pub unexpected: u64,
    pub foreign: u64,
    pub schema_errors: u64,
    pub mismatches: u64,
    /// events/s the senders wrote while sending
    pub send_rate: f64,
    /// events/s through the broker: sent / (send start to last delivery)
    pub events_per_sec: f64,
    /// delivered / (send start to last delivery)
    pub delivered_per_sec: f64,
    pub sender_reconnects: u64,
    pub broker_cpu_s: f64,
    /// broker CPU per event sent (its input, filtered events included)
    pub broker_cpu_us_per_event: f64,
    /// broker CPU per event delivered (its output)
    pub broker_cpu_us_per_delivered_event: f64,
    pub broker_cpu_s_per_million: f64,
    pub broker_peak_rss_bytes: u64,
    /// receipt time minus event time; event time is truncated to ms, so
    /// these read up to 1 ms high
    pub latency_ms: Latency,
    pub sink: Responses,
    pub gaps: Vec<(String, u64, u64)>,
    pub problems: Vec<String>,
    pub sender_errors: Vec<String>,
}

/// Inputs to [`Report::assemble`] beyond the summaries.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timing {
    pub send_s: f64,
    pub drain_s: f64,
    /// send start to the last delivery
    pub through_s: f64,
}

impl Report {
    pub fn assemble(
        setup: Setup,
        send: &SendSummary,
        sink: &SinkSummary,
        responses: Responses,
        broker: BrokerUsage,
        t: Timing,
    ) -> Report {
        let mut failures = sink.failures();
        failures.extend(send.errors.iter().map(|e| format!("sender: {e}")));
        if send.events == 0 {
            failures.push("nothing was sent".to_string());
        }
        let per_s = |n: u64, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
        let us_per = |n: u64| {
            if n > 0 {
                broker.cpu_s * 1e6 / n as f64
            } else {
                0.0
            }
        };
        let cpu_us_per_event = us_per(send.events);
        Report {
            setup,
            enrich: None,
            restart: None,
            ok: failures.is_empty(),
            failures,
            duration_s: t.send_s,
            drain_s: t.drain_s,
            sent: send.events,
            sent_expected: send.expected,
            delivered: sink.delivered,
            lost: sink.lost,
            duplicated: sink.duplicated,
            duplicated_in_redelivered_batches: sink.duplicated_in_redelivered_batches,
            duplicate_batches: sink.duplicate_batches,
            batches: sink.batches,
            reordered: sink.reordered,
            order_violations: sink.order_violations,
            unexpected: sink.unexpected,
            foreign: sink.foreign,
            schema_errors: sink.schema_errors,
            mismatches: sink.mismatches,
            send_rate: per_s(send.events, t.send_s),
            events_per_sec: per_s(send.events, t.through_s),
            delivered_per_sec: per_s(sink.delivered, t.through_s),
            sender_reconnects: send.reconnects,
            broker_cpu_s: broker.cpu_s,
            broker_cpu_us_per_event: cpu_us_per_event,
            broker_cpu_us_per_delivered_event: us_per(sink.delivered),
            broker_cpu_s_per_million: cpu_us_per_event,
            broker_peak_rss_bytes: broker.peak_rss_bytes,
            latency_ms: sink.latency_ms.clone(),
            sink: responses,
            gaps: sink.gaps.clone(),
            problems: sink.problems.clone(),
            sender_errors: send.errors.clone(),
        }
    }

    /// A failure found outside the sink's and senders' summaries.
    pub fn fail(&mut self, failure: String) {
        self.failures.push(failure);
        self.ok = false;
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let mut s = serde_json::to_string_pretty(self)?;
        s.push('\n');
        std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))
    }

    /// The report for people.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let s = &self.setup;
        let verdict = if self.ok { "PASS" } else { "FAIL" };
        let _ = writeln!(
            o,
            "loadgen bench: scenario {}, egress {} -- {verdict}",
            s.scenario, s.egress
        );
        if let Some(e) = &self.enrich {
            let _ = writeln!(
                o,
                "  enrichment  {} metadata changes sent ({:.1}% of events), {} arrived: {} exact, {} first sight, {} generic fallbacks, {} unchecked; lost {}",
                num(e.sent),
                e.share_pct,
                num(e.records),
                num(e.exact),
                num(e.first),
                num(e.fallbacks),
                num(e.unverified),
                num(e.lost)
            );
            let _ = writeln!(
                o,
                "              broker: {} lookups ({:.0}/s), ACL cache hit rate {:.1}%, {} API errors, {} logins ({} renewals); API delay {} ms",
                num(e.jobs),
                e.jobs_per_sec,
                e.cache_hit_rate * 100.0,
                num(e.api_errors),
                num(e.logins),
                num(e.token_renewals),
                e.api_delay_ms
            );
        }
        let rate = s
            .rate
            .map_or("flat out".to_string(), |r| format!("{}/s", num(r as u64)));
        let _ = writeln!(
            o,
            "  senders     {} clusters x {} nodes, {:?}/{:?}, seed {}, {rate}",
            s.clusters, s.nodes_per_cluster, s.format, s.framing, s.seed
        );
        let _ = writeln!(
            o,
            "  sent        {} events in {:.1} s ({}/s); {} to be delivered",
            num(self.sent),
            self.duration_s,
            num(self.send_rate as u64),
            num(self.sent_expected)
        );
        let _ = writeln!(
            o,
            "  delivered   {} ({}/s); lost {}; duplicated {} ({} duplicate batches); reordered {}",
            num(self.delivered),
            num(self.delivered_per_sec as u64),
            num(self.lost),
            num(self.duplicated),
            num(self.duplicate_batches),
            num(self.reordered)
        );
        let _ = writeln!(
            o,
            "  throughput  {} events/s through the broker (send start to last delivery; drain {:.1} s)",
            num(self.events_per_sec as u64),
            self.drain_s
        );
        let _ = writeln!(
            o,
            "  broker      CPU {:.2} s = {:.2} us per event sent, {:.2} us per event delivered; peak RSS {:.1} MiB{}",
            self.broker_cpu_s,
            self.broker_cpu_us_per_event,
            self.broker_cpu_us_per_delivered_event,
            self.broker_peak_rss_bytes as f64 / (1 << 20) as f64,
            if s.broker_restarts > 0 {
                " (both processes, added up)"
            } else {
                ""
            },
        );
        let b = &s.broker_overrides;
        let mut settings = match (b.max_events, b.max_age_ms) {
            (None, None) => String::new(),
            (e, a) => format!(
                "; batch max_events {}, max_age_ms {}",
                e.map_or("default".into(), |n| n.to_string()),
                a.map_or("default".into(), |n| n.to_string())
            ),
        };
        if let Some(f) = b.spool_fsync {
            settings.push_str(&format!("; spool fsync {}", f.as_str()));
        }
        if b.spool_in_memory {
            settings.push_str("; spool in memory (/dev/shm)");
        }
        for (name, v) in [
            ("batch max_bytes", b.batch_max_bytes),
            ("spool max_bytes", b.spool_max_bytes),
            ("spool segment_bytes", b.spool_segment_bytes),
            ("queue size", b.queue_size),
            ("queue max_bytes", b.queue_max_bytes),
            ("shutdown grace_secs", b.shutdown_grace_secs),
        ] {
            if let Some(v) = v {
                settings.push_str(&format!("; {name} {}", num(v)));
            }
        }
        let _ = writeln!(
            o,
            "              {} workers on CPUs {}{}{settings}; {}",
            s.broker_workers,
            s.broker_cpus,
            if s.broker_pinned { " (taskset)" } else { "" },
            s.broker_exit
        );
        if let Some(r) = &self.restart {
            let mib = |b: u64| b as f64 / (1 << 20) as f64;
            let _ = writeln!(
                o,
                "  restart     SIGTERM with all {} frames read, the spool at {:.1} MiB ({} full waits), {} frames ({:.1} MiB) in the work queue; stopped in {:.1} s: {}; listening again in {:.1} s",
                num(r.frames_read),
                mib(r.spool_bytes),
                num(r.spool_full_waits),
                num(r.queue_messages),
                mib(r.queue_bytes),
                r.stop_s,
                if r.stopped.is_empty() { "no `qbroker stopped` line" } else { &r.stopped },
                r.restart_s
            );
        }
        let l = &self.latency_ms;
        let _ = writeln!(
            o,
            "  latency     p50 {:.1} ms  p99 {:.1} ms  p99.9 {:.1} ms  max {:.1} ms  ({} events)",
            l.p50,
            l.p99,
            l.p999,
            l.max,
            num(l.count)
        );
        let r = &self.sink;
        let _ = writeln!(
            o,
            "  sink        {} requests: {} accepted, {} x 503, {} x 429, {} resets, {} lost acks, {} refused",
            num(r.requests),
            num(r.accepted),
            num(r.unavailable),
            num(r.throttled),
            num(r.resets),
            num(r.lost_acks),
            num(r.refused)
        );
        let checks = [
            (self.unexpected, "filtered-out events delivered"),
            (self.foreign, "foreign events"),
            (self.schema_errors, "schema errors"),
            (self.mismatches, "events with wrong fields"),
            (self.order_violations, "order violations inside batches"),
            (self.sender_reconnects, "sender reconnects"),
        ];
        for (n, what) in checks {
            if n > 0 {
                let _ = writeln!(o, "  !           {} {what}", num(n));
            }
        }
        for f in &self.failures {
            let _ = writeln!(o, "  FAIL        {f}");
        }
        for (node, a, b) in &self.gaps {
            let _ = writeln!(o, "  gap         {node}: seq {a}..{b} missing");
        }
        for p in &self.problems {
            let _ = writeln!(o, "  problem     {p}");
        }
        o
    }
}

/// 1234567 -> "1,234,567"
pub fn num(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::send::NodeTotal;
    use std::time::Duration;

    fn send_summary() -> SendSummary {
        SendSummary {
            elapsed: Duration::from_secs(10),
            events: 1_000_000,
            expected: 300_000,
            bytes: 300_000_000,
            reconnects: 0,
            nodes: vec![NodeTotal {
                cluster: 0,
                node: 1,
                events: 1_000_000,
                expected: 300_000,
                acl: 0,
            }],
            errors: vec![],
        }
    }

    fn setup() -> Setup {
        Setup {
            scenario: "steady".into(),
            egress: "https".into(),
            clusters: 1,
            nodes_per_cluster: 1,
            format: Format::Json,
            framing: Framing::Lf,
            seed: 1,
            rate: Some(100_000.0),
            broker: "target/release/qbroker".into(),
            broker_workers: 8,
            broker_cpus: "0-7".into(),
            broker_pinned: true,
            broker_overrides: BrokerOverrides::default(),
            broker_exit: "exit status: 0 after SIGTERM".into(),
            broker_restarts: 0,
        }
    }

    #[test]
    fn json_has_the_documented_keys() {
        let sink = SinkSummary {
            delivered: 300_000,
            latency_ms: Latency {
                count: 300_000,
                p50: 2.0,
                p99: 9.5,
                p999: 20.0,
                max: 31.0,
            },
            ..SinkSummary::default()
        };
        let usage = BrokerUsage {
            cpu_s: 1.5,
            peak_rss_bytes: 50 << 20,
        };
        let t = Timing {
            send_s: 10.0,
            drain_s: 0.5,
            through_s: 10.5,
        };
        let r = Report::assemble(
            setup(),
            &send_summary(),
            &sink,
            Responses::default(),
            usage,
            t,
        );
        assert!(r.ok, "{:?}", r.failures);
        let v = serde_json::to_value(&r).unwrap();
        for k in [
            "sent",
            "delivered",
            "lost",
            "duplicated",
            "events_per_sec",
            "broker_cpu_us_per_event",
            "broker_cpu_us_per_delivered_event",
            "broker_peak_rss_bytes",
            "broker_workers",
            "broker_cpus",
            "scenario",
            "ok",
        ] {
            assert!(v.get(k).is_some(), "{k} missing");
        }
        for k in ["p50", "p99", "p999", "max"] {
            assert!(v["latency_ms"][k].is_number(), "latency_ms.{k}");
        }
        assert_eq!(v["sent"], 1_000_000);
        assert!((r.broker_cpu_us_per_event - 1.5).abs() < 1e-9);
        assert!((r.broker_cpu_us_per_delivered_event - 5.0).abs() < 1e-9);
        assert_eq!(v["broker_workers"], 8);
        assert_eq!(v["broker_cpus"], "0-7");
        assert!((r.events_per_sec - 1e6 / 10.5).abs() < 1e-6);
        let text = r.render();
        assert!(
            text.contains("PASS")
                && text.contains("1,000,000")
                && text.contains("p99 9.5 ms")
                && text.contains("5.00 us per event delivered")
                && text.contains("8 workers on CPUs 0-7 (taskset)"),
            "{text}"
        );
    }

    #[test]
    fn losses_fail_the_run() {
        let sink = SinkSummary {
            delivered: 299_990,
            lost: 10,
            ..SinkSummary::default()
        };
        let r = Report::assemble(
            setup(),
            &send_summary(),
            &sink,
            Responses::default(),
            BrokerUsage::default(),
            Timing::default(),
        );
        assert!(!r.ok);
        assert!(r.render().contains("10 events lost"));
    }

    #[test]
    fn thousands() {
        assert_eq!(num(0), "0");
        assert_eq!(num(999), "999");
        assert_eq!(num(1000), "1,000");
        assert_eq!(num(1_234_567), "1,234,567");
    }
}
