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
}

impl Report {
    pub(crate) fn from_measured(api: &str, args: &BenchArgs, m: Measured) -> Report {
        let mut failures = BTreeMap::new();
        let (mut latency, mut recorded, mut uncertainty, mut create, mut confirm) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut clock_skewed = 0;
        for o in &m.outcomes {
            create.push(o.create_us);
            confirm.extend(o.confirm_us);
            match &o.result {
                Ok(d) => {
                    latency.push(d.observed_us);
                    uncertainty.push(d.uncertainty_us);
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
        if accounted < args.payments {
            failures.insert(
                "lost with a failed bench task".to_owned(),
                args.payments - accounted,
            );
        }
        Report {
            api: api.to_owned(),
            payments: args.payments,
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

    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(
            &mut out,
            format!(
                "paystream bench: {} payments, {} in flight, against {}",
                self.payments, self.concurrency, self.api
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
