//! The report: a float-free JSON tree, the table, and the figures derived from a run.

#[allow(unused_imports)]
use super::*;

/// A small JSON tree whose numbers are integers or fixed-point decimals, so the output needs
/// no float anywhere. Strings go through serde_json for escaping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Json {
    Null,
    Int(u128),
    /// Thousandths, printed with three decimals.
    Fixed3(u128),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    pub(crate) fn obj<const N: usize>(fields: [(&str, Json); N]) -> Json {
        Json::Obj(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Int(n) => out.push_str(&n.to_string()),
            Json::Fixed3(n) => out.push_str(&fixed3(*n)),
            Json::Str(s) => out.push_str(&serde_json::Value::from(s.as_str()).to_string()),
            Json::Arr(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.write(out);
                }
                out.push(']');
            }
            Json::Obj(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::from(k.as_str()).to_string());
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }
}

/// Milliseconds with three decimals from microsecond percentiles (`latencyMs` and friends).
pub(crate) fn summary_ms(s: Option<Summary>) -> Json {
    match s {
        None => Json::Null,
        Some(s) => Json::obj([
            ("p50", Json::Fixed3(s.p50.into())),
            ("p90", Json::Fixed3(s.p90.into())),
            ("p99", Json::Fixed3(s.p99.into())),
            ("max", Json::Fixed3(s.max.into())),
        ]),
    }
}

/// The same percentiles as integer microseconds, for readers that want no decimals at all.
pub(crate) fn summary_us(s: Option<Summary>) -> Json {
    match s {
        None => Json::Null,
        Some(s) => Json::obj([
            ("p50", Json::Int(s.p50.into())),
            ("p90", Json::Int(s.p90.into())),
            ("p99", Json::Int(s.p99.into())),
            ("max", Json::Int(s.max.into())),
        ]),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pgbench {
    /// `clients` is below `requested` when the server had fewer free connection slots.
    Ran {
        tps_milli: u128,
        clients: u64,
        requested: u64,
    },
    Skipped(String),
}

#[derive(Debug)]
pub struct Report {
    pub api: String,
    pub payments: u64,
    pub concurrency: u64,
    pub observe: Observe,
    pub poll_ms: u64,
    pub succeeded: u64,
    pub failures: BTreeMap<String, u64>,
    pub wall_us: u64,
    pub latency: Option<Summary>,
    pub recorded: Option<Summary>,
    pub uncertainty: Option<Summary>,
    pub create: Option<Summary>,
    pub confirm: Option<Summary>,
    pub observer_requests: u64,
    pub observer_errors: u64,
    pub retries: u64,
    pub clock_skewed: u64,
    pub pgbench: Option<Pgbench>,
    /// `--rate` and `--duration` of an open-loop run.
    pub rate: Option<u64>,
    pub duration_secs: Option<u64>,
    pub max_send_lag_us: Option<u64>,
    /// From the worker's `updatedAt` to the webhook's arrival.
    pub webhook: Option<Summary>,
    /// From each payment's intended start to `succeeded` seen.
    pub intended: Option<Summary>,
    pub sink: Option<SinkFigures>,
    /// Payments seen succeeded in each second of the run.
    pub timeline: Vec<u64>,
    pub processes: Vec<rss::ProcessFigures>,
}

/// Linux's clock tick for /proc CPU times: 100 per second everywhere it runs in practice.
const MS_PER_TICK: u64 = 10;

/// Successes per whole second since the start.
pub(crate) fn timeline(m: &Measured) -> Vec<u64> {
    let mut buckets: Vec<u64> = Vec::new();
    for o in m.outcomes.iter().filter(|o| o.result.is_ok()) {
        let second = usize::try_from(o.finished.saturating_duration_since(m.started).as_secs())
            .unwrap_or(usize::MAX);
        if second >= buckets.len() {
            buckets.resize(second.saturating_add(1).min(1_000_000), 0);
        }
        if let Some(b) = buckets.get_mut(second) {
            *b += 1;
        }
    }
    buckets
}

impl Report {
    pub(crate) fn from_measured(api: &str, args: &BenchArgs, m: Measured) -> Report {
        let mut failures = BTreeMap::new();
        let (mut latency, mut recorded, mut uncertainty, mut create, mut confirm) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut webhook, mut intended) = (Vec::new(), Vec::new());
        let mut clock_skewed = 0;
        for o in &m.outcomes {
            create.push(o.create_us);
            confirm.extend(o.confirm_us);
            match &o.result {
                Ok(d) => {
                    latency.push(d.observed_us);
                    uncertainty.push(d.uncertainty_us);
                    intended.push(d.intended_us);
                    webhook.extend(d.webhook_us);
                    match d.recorded_us {
                        Some(r) => recorded.push(r),
                        None => clock_skewed += 1,
                    }
                }
                Err(reason) => *failures.entry(reason.clone()).or_insert(0) += 1,
            }
        }
        let succeeded = u64::try_from(latency.len()).unwrap_or(u64::MAX);
        let accounted = u64::try_from(m.outcomes.len()).unwrap_or(u64::MAX);
        let payments = args.total_payments();
        if accounted < payments {
            failures.insert(
                "lost with a failed bench task".to_owned(),
                payments - accounted,
            );
        }
        let timeline = timeline(&m);
        Report {
            api: api.to_owned(),
            payments,
            concurrency: args.concurrency,
            observe: args.observe,
            poll_ms: args.poll_ms,
            succeeded,
            failures,
            wall_us: micros(m.wall),
            latency: Summary::of(latency),
            recorded: Summary::of(recorded),
            uncertainty: Summary::of(uncertainty),
            create: Summary::of(create),
            confirm: Summary::of(confirm),
            observer_requests: m.observer_requests,
            observer_errors: m.observer_errors,
            retries: m.retries,
            clock_skewed,
            pgbench: None,
            rate: args.rate,
            duration_secs: args.duration,
            max_send_lag_us: m.max_send_lag_us,
            webhook: Summary::of(webhook),
            intended: Summary::of(intended),
            sink: m.sink,
            timeline,
            processes: m.rss,
        }
    }

    pub fn failed(&self) -> u64 {
        self.payments.saturating_sub(self.succeeded)
    }

    fn milli_per_second(&self) -> u128 {
        milli_rate(self.succeeded, self.wall_us)
    }

    fn poll_description(&self) -> String {
        match self.observe {
            Observe::Webhook => "its own verified webhook endpoint".to_owned(),
            Observe::List => format!("list pages every {} ms", self.poll_ms),
            Observe::Get => "a GET per payment every 5-50 ms".to_owned(),
        }
    }

    pub fn to_json(&self) -> Json {
        let (pgbench_tps, pgbench_clients) = match &self.pgbench {
            Some(Pgbench::Ran {
                tps_milli, clients, ..
            }) => (Json::Fixed3(*tps_milli), Json::Int((*clients).into())),
            _ => (Json::Null, Json::Null),
        };
        let per_payment = (u128::from(self.observer_requests) * 1000)
            .checked_div(u128::from(self.payments))
            .unwrap_or(0);
        Json::obj([
            ("payments", Json::Int(self.payments.into())),
            ("concurrency", Json::Int(self.concurrency.into())),
            ("seconds", Json::Fixed3((self.wall_us / 1000).into())),
            ("paymentsPerSecond", Json::Fixed3(self.milli_per_second())),
            ("latencyMs", summary_ms(self.latency)),
            ("failed", Json::Int(self.failed().into())),
            ("pgbenchTps", pgbench_tps),
            ("pgbenchClients", pgbench_clients),
            ("succeeded", Json::Int(self.succeeded.into())),
            ("latencyUs", summary_us(self.latency)),
            ("recordedLatencyMs", summary_ms(self.recorded)),
            ("createMs", summary_ms(self.create)),
            ("confirmMs", summary_ms(self.confirm)),
            (
                "observation",
                Json::obj([
                    ("method", Json::Str(self.observe.as_str().to_owned())),
                    ("pollMs", Json::Int(self.poll_ms.into())),
                    ("requests", Json::Int(self.observer_requests.into())),
                    ("requestsPerPayment", Json::Fixed3(per_payment)),
                    ("errors", Json::Int(self.observer_errors.into())),
                    ("uncertaintyMs", summary_ms(self.uncertainty)),
                ]),
            ),
            ("confirmToSucceededMs", summary_ms(self.recorded)),
            ("succeededToWebhookMs", summary_ms(self.webhook)),
            ("intendedStartToSeenMs", summary_ms(self.intended)),
            (
                "load",
                Json::obj([
                    (
                        "loop",
                        Json::Str(
                            if self.rate.is_some() {
                                "open"
                            } else {
                                "closed"
                            }
                            .to_owned(),
                        ),
                    ),
                    (
                        "rate",
                        self.rate.map_or(Json::Null, |r| Json::Int(r.into())),
                    ),
                    (
                        "durationSeconds",
                        self.duration_secs
                            .map_or(Json::Null, |d| Json::Int(d.into())),
                    ),
                    (
                        "maxSendLagMs",
                        self.max_send_lag_us
                            .map_or(Json::Null, |us| Json::Fixed3(us.into())),
                    ),
                ]),
            ),
            (
                "webhooks",
                match self.sink {
                    None => Json::Null,
                    Some(s) => Json::obj([
                        ("received", Json::Int(s.received.into())),
                        ("invalidSignatures", Json::Int(s.invalid_signatures.into())),
                        ("duplicates", Json::Int(s.duplicates.into())),
                    ]),
                },
            ),
            (
                "throughputPerSecond",
                Json::Arr(
                    self.timeline
                        .iter()
                        .map(|n| Json::Int((*n).into()))
                        .collect(),
                ),
            ),
            ("processes", self.processes_json()),
            ("retries", Json::Int(self.retries.into())),
            ("clockSkewed", Json::Int(self.clock_skewed.into())),
            (
                "failures",
                Json::Obj(
                    self.failures
                        .iter()
                        .map(|(k, v)| (k.clone(), Json::Int((*v).into())))
                        .collect(),
                ),
            ),
        ])
    }

    /// Per process name: peak RSS, RSS at the first and last sample, CPU over the run and per
    /// succeeded payment (from `/proc`, see `bench::rss`).
    fn processes_json(&self) -> Json {
        Json::Obj(
            rss::by_name(&self.processes)
                .into_iter()
                .map(|(name, f)| {
                    let cpu_ms = f.cpu_ticks * MS_PER_TICK;
                    let per_payment = (u128::from(cpu_ms) * 1000)
                        .checked_div(u128::from(self.succeeded))
                        .unwrap_or(0);
                    (
                        name,
                        Json::obj([
                            ("processes", Json::Int(f.processes.into())),
                            ("peakRssKb", Json::Int(f.peak_kb.into())),
                            ("firstRssKb", Json::Int(f.first_kb.into())),
                            ("lastRssKb", Json::Int(f.last_kb.into())),
                            ("cpuMs", Json::Int(cpu_ms.into())),
                            ("cpuMsPerPayment", Json::Fixed3(per_payment)),
                        ]),
                    )
                })
                .collect(),
        )
    }

    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        let load = match (self.rate, self.duration_secs) {
            (Some(r), Some(d)) => format!(
                "{r}/s for {d} s, open loop (sender at most {} ms behind schedule)",
                fixed3(self.max_send_lag_us.unwrap_or_default().into())
            ),
            _ => format!("{} in flight", self.concurrency),
        };
        line(
            &mut out,
            format!(
                "paystream bench: {} payments, {load}, against {}",
                self.payments, self.api
            ),
        );
        line(
            &mut out,
            format!(
                "  succeeded {}, failed {}, in {} s: {} payments/s",
                self.succeeded,
                self.failed(),
                fixed3((self.wall_us / 1000).into()),
                fixed3(self.milli_per_second())
            ),
        );
        line(
            &mut out,
            format!(
                "  {:<38} {:>10} {:>10} {:>10} {:>10}",
                "latency (ms)", "p50", "p90", "p99", "max"
            ),
        );
        for (name, s) in [
            ("confirm sent -> succeeded seen", self.latency),
            ("confirm sent -> worker's updatedAt", self.recorded),
            ("updatedAt -> webhook received", self.webhook),
            ("intended start -> succeeded seen", self.intended),
            ("create request", self.create),
            ("confirm request (202)", self.confirm),
            ("observation window (error bound)", self.uncertainty),
        ] {
            let cells = match s {
                Some(s) => [s.p50, s.p90, s.p99, s.max].map(|v| fixed3(v.into())),
                None => ["-"; 4].map(str::to_owned),
            };
            line(
                &mut out,
                format!(
                    "  {:<38} {:>10} {:>10} {:>10} {:>10}",
                    name, cells[0], cells[1], cells[2], cells[3]
                ),
            );
        }
        let per_payment = (u128::from(self.observer_requests) * 1000)
            .checked_div(u128::from(self.payments))
            .unwrap_or(0);
        line(
            &mut out,
            format!(
                "  observed by {}: {} requests ({} per payment), {} errors; {} retried requests",
                self.poll_description(),
                self.observer_requests,
                fixed3(per_payment),
                self.observer_errors,
                self.retries
            ),
        );
        line(
            &mut out,
            "  (seen is an upper bound, late by at most the observation window; updatedAt is a \
             lower bound, stamped before the worker's commit)"
                .to_owned(),
        );
        if self.clock_skewed > 0 {
            line(
                &mut out,
                format!(
                    "  {} updatedAt stamps precede their confirm: the stack's clock differs from this one",
                    self.clock_skewed
                ),
            );
        }
        if let Some(s) = self.sink {
            line(
                &mut out,
                format!(
                    "  webhook sink: {} deliveries, {} bad signatures (refused), {} duplicates",
                    s.received, s.invalid_signatures, s.duplicates
                ),
            );
        }
        let names = rss::by_name(&self.processes);
        if !names.is_empty() {
            line(
                &mut out,
                format!(
                    "  {:<24} {:>5} {:>12} {:>12} {:>12} {:>14}",
                    "process", "count", "peak RSS kB", "first kB", "last kB", "CPU ms/payment"
                ),
            );
            for (name, f) in names {
                let per_payment = (u128::from(f.cpu_ticks * MS_PER_TICK) * 1000)
                    .checked_div(u128::from(self.succeeded))
                    .unwrap_or(0);
                line(
                    &mut out,
                    format!(
                        "  {:<24} {:>5} {:>12} {:>12} {:>12} {:>14}",
                        name,
                        f.processes,
                        f.peak_kb,
                        f.first_kb,
                        f.last_kb,
                        fixed3(per_payment)
                    ),
                );
            }
        }
        match &self.pgbench {
            Some(Pgbench::Ran {
                tps_milli,
                clients,
                requested,
            }) => {
                let capped = if clients < requested {
                    format!(" (of {requested}: the other connection slots are in use)")
                } else {
                    String::new()
                };
                line(
                    &mut out,
                    format!(
                        "  PostgreSQL ceiling: pgbench -N, {clients} clients{capped}, {PGBENCH_SECS} s: {} tps",
                        fixed3(*tps_milli)
                    ),
                );
            }
            Some(Pgbench::Skipped(why)) => line(&mut out, format!("  pgbench not run: {why}")),
            None => {}
        }
        for (reason, count) in &self.failures {
            line(&mut out, format!("  failed x{count}: {reason}"));
        }
        out
    }
}
