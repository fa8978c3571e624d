//! Statistics of a run: latency percentiles (HDR histogram), loss per subscriber, and the
//! server process's CPU time and memory read from `/proc/<pid>`.

use hdrhistogram::Histogram;

/// What one subscriber saw.
#[derive(Debug, Default, Clone)]
pub(crate) struct SubscriberResult {
    /// The subscriber's position in the run (what it follows in a market run).
    pub(crate) index: usize,
    /// Messages of this run received (send time at or after the run's start).
    pub(crate) received: u64,
    /// One-way latencies in microseconds.
    pub(crate) latencies_us: Vec<u32>,
    /// Set when the connection failed or ended early.
    pub(crate) error: Option<String>,
    /// Whether this subscriber was told to stop reading (slow-consumer runs).
    pub(crate) slow: bool,
    /// Market runs: what arrived per symbol index (empty otherwise).
    pub(crate) per_symbol: Vec<SymbolSeen>,
}

/// Deliveries of one symbol to one subscriber (market runs).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SymbolSeen {
    pub(crate) count: u32,
    /// The highest trade id received.
    pub(crate) last_id: u64,
}

/// Loss and latency over all healthy subscribers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeliverySummary {
    pub(crate) subscribers: usize,
    pub(crate) expected_per_subscriber: u64,
    pub(crate) received: u64,
    pub(crate) lost: u64,
    pub(crate) duplicated: u64,
    pub(crate) subscribers_with_loss: usize,
    pub(crate) errors: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
}

/// Summarizes the subscribers that kept reading; `expected` is what each should have got.
pub(crate) fn summarize(results: &[SubscriberResult], expected: u64) -> DeliverySummary {
    // Three significant digits from 1 µs to one hour covers every sane latency.
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
        .expect("constant histogram bounds are valid");
    let mut summary = DeliverySummary {
        subscribers: 0,
        expected_per_subscriber: expected,
        received: 0,
        lost: 0,
        duplicated: 0,
        subscribers_with_loss: 0,
        errors: 0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        p999_ms: 0.0,
        max_ms: 0.0,
    };
    for result in results.iter().filter(|r| !r.slow) {
        summary.subscribers += 1;
        summary.received += result.received;
        if result.error.is_some() {
            summary.errors += 1;
        }
        if result.received < expected {
            summary.lost += expected - result.received;
            summary.subscribers_with_loss += 1;
        } else {
            summary.duplicated += result.received - expected;
        }
        for &latency in &result.latencies_us {
            histogram.saturating_record(u64::from(latency.max(1)));
        }
    }
    if !histogram.is_empty() {
        let ms = |us: u64| us as f64 / 1000.0;
        summary.p50_ms = ms(histogram.value_at_quantile(0.50));
        summary.p99_ms = ms(histogram.value_at_quantile(0.99));
        summary.p999_ms = ms(histogram.value_at_quantile(0.999));
        summary.max_ms = ms(histogram.max());
    }
    summary
}

/// CPU time and memory of a process at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ProcSample {
    /// User plus system CPU time in clock ticks (USER_HZ, 100 per second on Linux).
    pub(crate) cpu_ticks: u64,
    /// The system (kernel) part of `cpu_ticks`.
    pub(crate) system_ticks: u64,
    pub(crate) rss_kib: u64,
    /// Proportional set size: shared pages divided among the processes sharing them, so a sum
    /// over nginx's master and workers counts Nchan's shared memory once. Falls back to RSS.
    pub(crate) pss_kib: u64,
}

/// Clock ticks per second in `/proc/<pid>/stat`; fixed at 100 by the Linux user ABI.
pub(crate) const USER_HZ: u64 = 100;

impl ProcSample {
    pub(crate) fn read(pid: u32) -> Result<ProcSample, String> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
        let (user, system) = parse_stat_cpu(&stat).ok_or("unexpected /proc/<pid>/stat format")?;
        let rss_kib = parse_status_rss(&status).ok_or("no VmRSS in /proc/<pid>/status")?;
        let pss_kib = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .ok()
            .and_then(|rollup| parse_kib_field(&rollup, "Pss:"))
            .unwrap_or(rss_kib);
        Ok(ProcSample {
            cpu_ticks: user + system,
            system_ticks: system,
            rss_kib,
            pss_kib,
        })
    }

    /// Sums the samples of several processes (nginx's master and workers).
    pub(crate) fn read_all(pids: &[u32]) -> Result<ProcSample, String> {
        let mut total = ProcSample::default();
        for &pid in pids {
            let sample = ProcSample::read(pid)?;
            total.cpu_ticks += sample.cpu_ticks;
            total.system_ticks += sample.system_ticks;
            total.rss_kib += sample.rss_kib;
            total.pss_kib += sample.pss_kib;
        }
        Ok(total)
    }
}

/// `(utime, stime)` (fields 14 and 15). The command name in field 2 may hold spaces and
/// parentheses, so fields are counted from the last `)`.
pub(crate) fn parse_stat_cpu(stat: &str) -> Option<(u64, u64)> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name, field 3 (state) is index 0, so field N is index N - 3.
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some((utime, stime))
}

pub(crate) fn parse_status_rss(status: &str) -> Option<u64> {
    parse_kib_field(status, "VmRSS:")
}

/// The number after `name` on its line, as in `VmRSS:   1234 kB`.
fn parse_kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscriber(received: u64, latencies: &[u32]) -> SubscriberResult {
        SubscriberResult {
            received,
            latencies_us: latencies.to_vec(),
            ..SubscriberResult::default()
        }
    }

    #[test]
    fn loss_is_counted_per_subscriber_against_the_expected_count() {
        let results = [
            subscriber(10, &[]),
            subscriber(7, &[]),
            subscriber(12, &[]),
            SubscriberResult {
                slow: true,
                ..subscriber(0, &[])
            },
        ];
        let summary = summarize(&results, 10);
        assert_eq!(summary.subscribers, 3, "slow subscribers are left out");
        assert_eq!(summary.received, 29);
        assert_eq!(summary.lost, 3);
        assert_eq!(summary.subscribers_with_loss, 1);
        assert_eq!(summary.duplicated, 2);
    }

    #[test]
    fn percentiles_come_from_all_healthy_latencies() {
        let mut latencies: Vec<u32> = (1..=1000).collect();
        latencies[999] = 50_000;
        let results = [
            subscriber(500, &latencies[..500]),
            subscriber(500, &latencies[500..]),
        ];
        let summary = summarize(&results, 500);
        assert!((summary.p50_ms - 0.5).abs() < 0.01, "{}", summary.p50_ms);
        assert!((summary.p99_ms - 0.99).abs() < 0.01, "{}", summary.p99_ms);
        assert!((summary.max_ms - 50.0).abs() < 0.1, "{}", summary.max_ms);
        assert_eq!(summary.lost, 0);
    }

    #[test]
    fn an_empty_run_has_zero_percentiles() {
        let summary = summarize(&[], 5);
        assert_eq!(summary.subscribers, 0);
        assert_eq!(summary.p99_ms, 0.0);
    }

    #[test]
    fn proc_stat_cpu_is_user_plus_system_even_with_odd_command_names() {
        let stat = "1234 (tick gate) (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1 1000 200 18446744073709551615";
        assert_eq!(parse_stat_cpu(stat), Some((250, 50)));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn proc_status_rss_is_read_in_kib() {
        let status = "Name:\ttickgate\nVmPeak:\t  99 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_status_rss(status), Some(12345));
        assert_eq!(parse_status_rss("Name: x\n"), None);
        let rollup = "00400000-7ffd [rollup]\nRss:  900 kB\nPss:  450 kB\n";
        assert_eq!(parse_kib_field(rollup, "Pss:"), Some(450));
    }

    #[test]
    fn this_process_can_be_sampled() {
        let sample = ProcSample::read(std::process::id()).expect("own /proc entry");
        assert!(sample.rss_kib > 0);
        assert!(sample.pss_kib > 0 && sample.pss_kib <= sample.rss_kib);
    }
}
