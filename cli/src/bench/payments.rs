//! Driving payments over HTTP: the client, the slots that create and confirm, and the
//! observers that see each payment succeed.

#[allow(unused_imports)]
use super::*;

/// `http://` in front of a bare host:port (PAYSTREAM_API_ADDR's form), no trailing slash.
pub fn api_base(raw: &str) -> String {
    let raw = raw.trim().trim_end_matches('/');
    if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("http://{raw}")
    }
}

#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
    pub(crate) key: String,
    pub(crate) retries: Arc<AtomicU64>,
}

/// The fields of a payment intent the bench reads; serde skips the rest.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IntentSeen {
    pub(crate) id: String,
    pub(crate) status: String,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
    pub(crate) last_payment_error: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Page {
    pub(crate) data: Vec<IntentSeen>,
    pub(crate) has_more: bool,
}

/// "HTTP 409 invalid_state_transition" from an answer, for failure reasons.
pub(crate) fn describe(status: StatusCode, body: &[u8]) -> String {
    let code = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_default();
    format!("HTTP {} {code}", status.as_u16()).trim().to_owned()
}

/// A transport failure without its URL (which names an intent, so every failure would count
/// on its own) and with its causes ("connection refused" is in a source, not the message).
pub(crate) fn transport_error(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl Api {
    /// One request, retried on transient failures when repeating it is safe: always for GET,
    /// for POST only with an Idempotency-Key or when no connection was made.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        idempotency_key: Option<&str>,
    ) -> Result<(StatusCode, Vec<u8>), String> {
        let repeatable = method == Method::GET || idempotency_key.is_some();
        let mut attempt = 0;
        loop {
            let mut rb = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .bearer_auth(&self.key);
            if let Some(b) = body {
                rb = rb.json(b);
            }
            if let Some(k) = idempotency_key {
                rb = rb.header("Idempotency-Key", k);
            }
            let result = match rb.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    resp.bytes().await.map(|b| (status, b.to_vec()))
                }
                Err(e) => Err(e),
            };
            let transient = match &result {
                Ok((s, _)) => {
                    repeatable && (s.is_server_error() || *s == StatusCode::TOO_MANY_REQUESTS)
                }
                Err(e) => repeatable || e.is_connect(),
            };
            if transient && attempt < MAX_RETRIES {
                attempt += 1;
                self.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(25) * 2u32.pow(attempt)).await;
                continue;
            }
            return result.map_err(|e| format!("{method} {}", transport_error(e)));
        }
    }

    async fn get_intent(&self, id: &str) -> Result<IntentSeen, String> {
        let (status, body) = self
            .call(
                Method::GET,
                &format!("/api/payment-intents/{id}"),
                None,
                None,
            )
            .await?;
        if status != StatusCode::OK {
            return Err(format!("GET payment intent: {}", describe(status, &body)));
        }
        serde_json::from_slice(&body)
            .map_err(|e| format!("GET payment intent: unreadable answer: {e}"))
    }
}

// ---------------------------------------------------------------------------------------------
// The run.

/// What a look at one intent says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Succeeded,
    Waiting,
    Failed(String),
}

pub(crate) fn verdict(pi: &IntentSeen) -> Verdict {
    match pi.status.as_str() {
        "succeeded" => Verdict::Succeeded,
        // Still on its way (a look may even precede the confirm's commit).
        "processing" | "requires_confirmation" => Verdict::Waiting,
        other => {
            let code = pi
                .last_payment_error
                .as_ref()
                .and_then(|e| e["code"].as_str())
                .map(|c| format!(" ({c})"))
                .unwrap_or_default();
            Verdict::Failed(format!("ended in {other}{code}"))
        }
    }
}

/// How a payment's wait ended, as the watcher saw it.
#[derive(Debug)]
pub(crate) enum Seen {
    /// Seen `succeeded` in an answer that arrived at `at`; the previous look, sent at
    /// `window_start`, had not seen it yet.
    Succeeded {
        at: Instant,
        window_start: Instant,
        updated_at: DateTime<Utc>,
        /// When its `payment_intent.succeeded` webhook arrived (`--observe webhook`).
        webhook_at: Option<DateTime<Utc>>,
    },
    Failed(String),
}

/// A confirmed payment the list observer is watching for.
pub(crate) struct Waiting {
    pub(crate) block: u64,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) sent: Instant,
    /// When the latest look that did not see it succeeded was sent.
    pub(crate) last_look: Instant,
    /// When the observer may check it on its own again (stragglers only).
    pub(crate) next_check: Instant,
    pub(crate) tx: oneshot::Sender<Seen>,
}

pub(crate) struct Run {
    pub(crate) api: Api,
    /// With the block number, every intent's `customerId`: the list pages hold this run's
    /// intents only, and a block's at most [`BLOCK`].
    pub(crate) run_id: String,
    pub(crate) payments: u64,
    pub(crate) observe: Observe,
    pub(crate) poll: Duration,
    pub(crate) timeout: Duration,
    pub(crate) idempotency: bool,
    pub(crate) next: AtomicU64,
    pub(crate) waiting: Mutex<HashMap<String, Waiting>>,
    /// How many of this run's intents each block created at each instant, from the oldest
    /// block still waiting: sizes the list pages to what can lie above a block's horizon.
    pub(crate) created: Mutex<BTreeMap<(u64, DateTime<Utc>), u64>>,
    pub(crate) wake: Notify,
    pub(crate) observer_requests: AtomicU64,
    pub(crate) observer_errors: AtomicU64,
    pub(crate) latency_sum_us: AtomicU64,
    pub(crate) latency_count: AtomicU64,
}

/// One payment's measurements (microseconds).
#[derive(Debug)]
pub(crate) struct Outcome {
    /// When the bench saw it end (either way).
    pub(crate) finished: Instant,
    pub(crate) create_us: u64,
    pub(crate) confirm_us: Option<u64>,
    pub(crate) result: Result<Done, String>,
}

#[derive(Debug)]
pub(crate) struct Done {
    pub(crate) observed_us: u64,
    pub(crate) uncertainty_us: u64,
    /// To the worker's `updatedAt`; `None` when that lies before the confirm was sent, which
    /// only happens when the bench's clock and the stack's disagree.
    pub(crate) recorded_us: Option<u64>,
    /// From the worker's `updatedAt` to the webhook's arrival (`--observe webhook`).
    pub(crate) webhook_us: Option<u64>,
    /// From the intended start (not the actual one, so a late sender cannot hide a queue)
    /// to `succeeded` seen.
    pub(crate) intended_us: u64,
}

impl Run {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiting>> {
        // A panic while holding the lock cannot leave the map half-updated in a way that
        // matters here (every edit is one insert or remove), so a poisoned lock is still usable.
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn created(&self) -> std::sync::MutexGuard<'_, BTreeMap<(u64, DateTime<Utc>), u64>> {
        self.created
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn register(&self, pi: &IntentSeen, block: u64, sent: Instant) -> oneshot::Receiver<Seen> {
        *self.created().entry((block, pi.created_at)).or_insert(0) += 1;
        let (tx, rx) = oneshot::channel();
        self.lock().insert(
            pi.id.clone(),
            Waiting {
                block,
                created_at: pi.created_at,
                sent,
                last_look: sent,
                next_check: sent,
                tx,
            },
        );
        // A stored permit if the observer is busy, so no registration is ever missed.
        self.wake.notify_one();
        rx
    }

    /// An intent is a straggler once it waited this long: four times the mean latency so far,
    /// and at least [`STRAGGLER_AFTER`].
    fn straggler_after(&self) -> Duration {
        let count = self.latency_count.load(Ordering::Relaxed);
        let mean = self
            .latency_sum_us
            .load(Ordering::Relaxed)
            .checked_div(count)
            .unwrap_or(0);
        STRAGGLER_AFTER.max(Duration::from_micros(mean.saturating_mul(4)))
    }

    /// A verified webhook from the sink: the payment waiting for it is told.
    pub(crate) fn delivered(&self, delivery: sink::Delivery, at: Instant, at_wall: DateTime<Utc>) {
        let (id, seen) = match delivery {
            sink::Delivery::Succeeded { id, updated_at } => (
                id,
                Seen::Succeeded {
                    at,
                    window_start: at,
                    updated_at,
                    webhook_at: Some(at_wall),
                },
            ),
            sink::Delivery::Failed { id, reason } => (id, Seen::Failed(reason)),
            sink::Delivery::Other => return,
        };
        if let Some(w) = self.lock().remove(&id) {
            let _ = w.tx.send(seen);
        }
    }

    /// `--observe webhook`: the sink sees successes; this only times out and looks at the
    /// few intents that wait far longer than usual (a lost webhook, a decline).
    pub(crate) async fn watch_stragglers(&self, done: CancellationToken) {
        while !done.is_cancelled() {
            self.check_stragglers(self.straggler_after()).await;
            tokio::select! {
                _ = tokio::time::sleep(STRAGGLER_RECHECK) => {}
                _ = done.cancelled() => {}
            }
        }
    }

    pub(crate) async fn one_payment(&self, i: u64, intended: Instant) -> Outcome {
        let key = |what: &str| {
            self.idempotency
                .then(|| format!("{}-{i}-{what}", self.run_id))
        };
        let block = i / BLOCK;
        let body = json!({
            "amount": 1000 + i % 1000,
            "currency": "usd",
            "customerId": format!("{}_{block}", self.run_id),
            "paymentMethodId": "pm_card_visa",
        });
        let started = Instant::now();
        let created = self
            .api
            .call(
                Method::POST,
                "/api/payment-intents",
                Some(&body),
                key("create").as_deref(),
            )
            .await;
        let create_us = micros(started.elapsed());
        let failed = |reason: String, confirm_us: Option<u64>| Outcome {
            finished: Instant::now(),
            create_us,
            confirm_us,
            result: Err(reason),
        };
        let intent: IntentSeen = match created {
            // 200 is an idempotent replay of our own create after a retry.
            Ok((s, b)) if s == StatusCode::CREATED || s == StatusCode::OK => {
                match serde_json::from_slice(&b) {
                    Ok(pi) => pi,
                    Err(e) => return failed(format!("create: unreadable answer: {e}"), None),
                }
            }
            Ok((s, b)) => return failed(format!("create: {}", describe(s, &b)), None),
            Err(e) => return failed(format!("create: {e}"), None),
        };

        let sent = Instant::now();
        let sent_wall = Utc::now();
        // Registered before the confirm goes out: the worker may finish before the 202 is back.
        let rx = (self.observe != Observe::Get).then(|| self.register(&intent, block, sent));
        let confirmed = self
            .api
            .call(
                Method::POST,
                &format!("/api/payment-intents/{}/confirm", intent.id),
                Some(&json!({})),
                key("confirm").as_deref(),
            )
            .await;
        let confirm_us = micros(sent.elapsed());
        let problem = match confirmed {
            Ok((s, _)) if s == StatusCode::ACCEPTED || s == StatusCode::OK => None,
            Ok((s, b)) => Some(describe(s, &b)),
            Err(e) => Some(e),
        };
        if let Some(p) = problem {
            self.lock().remove(&intent.id);
            return failed(format!("confirm: {p}"), Some(confirm_us));
        }

        let seen = match rx {
            Some(rx) => rx
                .await
                .unwrap_or_else(|_| Seen::Failed("the observer stopped".to_owned())),
            None => self.poll_one(&intent.id, sent).await,
        };
        match seen {
            Seen::Succeeded {
                at,
                window_start,
                updated_at,
                webhook_at,
            } => {
                let observed_us = micros(at.saturating_duration_since(sent));
                self.latency_sum_us
                    .fetch_add(observed_us, Ordering::Relaxed);
                self.latency_count.fetch_add(1, Ordering::Relaxed);
                let recorded_us = (updated_at - sent_wall)
                    .num_microseconds()
                    .and_then(|us| u64::try_from(us).ok());
                let webhook_us = webhook_at.and_then(|w| {
                    (w - updated_at)
                        .num_microseconds()
                        .and_then(|us| u64::try_from(us).ok())
                });
                Outcome {
                    finished: at,
                    create_us,
                    confirm_us: Some(confirm_us),
                    result: Ok(Done {
                        observed_us,
                        uncertainty_us: micros(at.saturating_duration_since(window_start)),
                        recorded_us,
                        webhook_us,
                        intended_us: micros(at.saturating_duration_since(intended)),
                    }),
                }
            }
            Seen::Failed(reason) => failed(reason, Some(confirm_us)),
        }
    }

    /// `--observe get`: look at this one intent until it is final, 5 ms doubling to 50 ms.
    async fn poll_one(&self, id: &str, sent: Instant) -> Seen {
        let mut wait = GET_FIRST;
        let mut last_look = sent;
        loop {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(GET_MAX);
            let look = Instant::now();
            self.observer_requests.fetch_add(1, Ordering::Relaxed);
            let pi = match self.api.get_intent(id).await {
                Ok(pi) => pi,
                Err(e) => return Seen::Failed(e),
            };
            match verdict(&pi) {
                Verdict::Succeeded => {
                    return Seen::Succeeded {
                        at: Instant::now(),
                        window_start: last_look,
                        updated_at: pi.updated_at,
                        webhook_at: None,
                    }
                }
                Verdict::Failed(reason) => return Seen::Failed(reason),
                Verdict::Waiting => {}
            }
            last_look = look;
            if sent.elapsed() > self.timeout {
                return Seen::Failed(format!(
                    "still {} {} s after its confirm",
                    pi.status,
                    self.timeout.as_secs()
                ));
            }
        }
    }

    /// `--observe list`: until `done`, every `poll` while anything waits, page through this
    /// run's succeeded intents down to the oldest one waiting, then check stragglers singly.
    async fn observe_list(&self, done: CancellationToken) {
        loop {
            while self.lock().is_empty() {
                if done.is_cancelled() {
                    return;
                }
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = done.cancelled() => {}
                }
            }
            let cycle = Instant::now();
            let straggle = self.straggler_after();
            let young = |w: &Waiting| cycle.saturating_duration_since(w.sent) < straggle;
            // Per block, the oldest young intent waiting: pages need go no further down.
            let (horizons, oldest_block) = {
                let waiting = self.lock();
                let mut horizons: BTreeMap<u64, DateTime<Utc>> = BTreeMap::new();
                for w in waiting.values().filter(|w| young(w)) {
                    let h = horizons.entry(w.block).or_insert(w.created_at);
                    *h = (*h).min(w.created_at);
                }
                (horizons, waiting.values().map(|w| w.block).min())
            };
            if let Some(oldest) = oldest_block {
                // Earlier blocks are settled and are never paged again.
                let mut created = self.created();
                *created = created.split_off(&(oldest, DateTime::<Utc>::MIN_UTC));
            }
            // The blocks are looked at concurrently, so a cycle takes one request's time.
            let looks = horizons.into_iter().map(|(block, horizon)| {
                // At most this many succeeded intents of the block lie at or above its horizon,
                // so one page of this size reaches it: no row is sent twice in a cycle.
                let window: u64 = self
                    .created()
                    .range((block, horizon)..=(block, DateTime::<Utc>::MAX_UTC))
                    .map(|(_, n)| n)
                    .sum();
                let limit = usize::try_from(window).unwrap_or(PAGE).clamp(1, PAGE);
                async move { (block, self.page_down_to(block, horizon, limit).await) }
            });
            let looked: Vec<u64> = futures::future::join_all(looks)
                .await
                .into_iter()
                .filter_map(|(block, complete)| complete.then_some(block))
                .collect();
            // Every young intent of those blocks that waited when the cycle began was in range
            // of a page and not yet succeeded as of a snapshot taken after `cycle`.
            for w in self.lock().values_mut() {
                if w.sent <= cycle && young(w) && looked.contains(&w.block) {
                    w.last_look = w.last_look.max(cycle);
                }
            }
            self.check_stragglers(straggle).await;
            tokio::time::sleep_until((cycle + self.poll).into()).await;
        }
    }

    /// Pages a block newest first until a page ends below `horizon`. Returns whether it got
    /// there.
    async fn page_down_to(&self, block: u64, horizon: DateTime<Utc>, limit: usize) -> bool {
        let mut cursor: Option<String> = None;
        loop {
            let after = cursor
                .as_deref()
                .map(|c| format!("&startingAfter={c}"))
                .unwrap_or_default();
            let path = format!(
                "/api/payment-intents?customerId={}_{block}&status=succeeded&limit={limit}{after}",
                self.run_id
            );
            self.observer_requests.fetch_add(1, Ordering::Relaxed);
            let page = match self.api.call(Method::GET, &path, None, None).await {
                Ok((StatusCode::OK, body)) => serde_json::from_slice::<Page>(&body).ok(),
                _ => None,
            };
            let at = Instant::now();
            let Some(page) = page else {
                self.observer_errors.fetch_add(1, Ordering::Relaxed);
                return false;
            };
            {
                let mut waiting = self.lock();
                for pi in &page.data {
                    if let Some(w) = waiting.remove(&pi.id) {
                        let _ = w.tx.send(Seen::Succeeded {
                            at,
                            window_start: w.last_look,
                            updated_at: pi.updated_at,
                            webhook_at: None,
                        });
                    }
                }
            }
            // Equal timestamps may straddle pages, so only a strictly older last entry stops.
            match page.data.last() {
                Some(last) if page.has_more && last.created_at >= horizon => {
                    cursor = Some(last.id.clone());
                }
                _ => return true,
            }
        }
    }

    /// Times out what waited too long, and looks one by one at intents that wait far longer
    /// than usual: they may have failed (never in the succeeded list), and keeping them out of
    /// the horizon keeps the pages few.
    async fn check_stragglers(&self, straggle: Duration) {
        let now = Instant::now();
        let mut due = Vec::new();
        {
            let mut waiting = self.lock();
            let expired: Vec<String> = waiting
                .iter()
                .filter(|(_, w)| now.saturating_duration_since(w.sent) > self.timeout)
                .map(|(id, _)| id.clone())
                .collect();
            for id in expired {
                if let Some(w) = waiting.remove(&id) {
                    let _ = w.tx.send(Seen::Failed(format!(
                        "not succeeded {} s after its confirm",
                        self.timeout.as_secs()
                    )));
                }
            }
            for (id, w) in waiting.iter_mut() {
                if now.saturating_duration_since(w.sent) >= straggle && now >= w.next_check {
                    w.next_check = now + STRAGGLER_RECHECK;
                    due.push(id.clone());
                }
            }
        }
        if due.is_empty() {
            return;
        }
        futures::stream::iter(due)
            .map(|id| async move {
                self.observer_requests.fetch_add(1, Ordering::Relaxed);
                let look = Instant::now();
                let result = self.api.get_intent(&id).await;
                (id, look, result)
            })
            .buffer_unordered(STRAGGLER_PARALLEL)
            .for_each(|(id, look, result)| {
                let mut waiting = self.lock();
                match result.as_ref().map(verdict) {
                    Ok(Verdict::Waiting) => {
                        if let Some(w) = waiting.get_mut(&id) {
                            w.last_look = w.last_look.max(look);
                        }
                    }
                    Ok(Verdict::Succeeded) => {
                        if let (Some(w), Ok(pi)) = (waiting.remove(&id), &result) {
                            let _ = w.tx.send(Seen::Succeeded {
                                at: Instant::now(),
                                window_start: w.last_look,
                                updated_at: pi.updated_at,
                                webhook_at: None,
                            });
                        }
                    }
                    Ok(Verdict::Failed(reason)) => {
                        if let Some(w) = waiting.remove(&id) {
                            let _ = w.tx.send(Seen::Failed(reason));
                        }
                    }
                    // Looked at again after STRAGGLER_RECHECK, or timed out.
                    Err(_) => {
                        self.observer_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                futures::future::ready(())
            })
            .await;
    }
}

/// What a whole run measured.
pub(crate) struct Measured {
    pub(crate) outcomes: Vec<Outcome>,
    pub(crate) started: Instant,
    pub(crate) wall: Duration,
    pub(crate) observer_requests: u64,
    pub(crate) observer_errors: u64,
    pub(crate) retries: u64,
    /// `--observe webhook`: what the sink received.
    pub(crate) sink: Option<SinkFigures>,
    /// `--rate`: how late the sender started payments behind their schedule, at worst.
    pub(crate) max_send_lag_us: Option<u64>,
    pub(crate) rss: Vec<rss::ProcessFigures>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkFigures {
    pub received: u64,
    pub invalid_signatures: u64,
    pub duplicates: u64,
}

/// How the payments are started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Load {
    /// `--concurrency` slots, each starting its next payment when the last one ended.
    Closed { concurrency: u64 },
    /// `--rate`: payment `i` starts at `i / rate` seconds whatever the answers, so a slow
    /// stack meets a growing queue, as it would in production, and every latency runs from
    /// that intended start (no coordinated omission).
    Open { per_second: u64 },
}

pub(crate) async fn drive(
    api: Api,
    args: &BenchArgs,
    target: rss::Target,
) -> anyhow::Result<Measured> {
    let run = Arc::new(Run {
        api: api.clone(),
        run_id: format!("bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        payments: args.total_payments(),
        observe: args.observe,
        poll: Duration::from_millis(args.poll_ms),
        timeout: Duration::from_secs(args.timeout_secs),
        idempotency: !args.no_idempotency_keys,
        next: AtomicU64::new(0),
        waiting: Mutex::new(HashMap::new()),
        created: Mutex::new(BTreeMap::new()),
        wake: Notify::new(),
        observer_requests: AtomicU64::new(0),
        observer_errors: AtomicU64::new(0),
        latency_sum_us: AtomicU64::new(0),
        latency_count: AtomicU64::new(0),
    });
    let sink = match args.observe {
        Observe::Webhook => Some(sink::Sink::start(run.clone()).await?),
        _ => None,
    };
    let done = CancellationToken::new();
    let observer = match args.observe {
        Observe::List => {
            let (run, done) = (run.clone(), done.clone());
            Some(tokio::spawn(async move { run.observe_list(done).await }))
        }
        Observe::Webhook => {
            let (run, done) = (run.clone(), done.clone());
            Some(tokio::spawn(
                async move { run.watch_stragglers(done).await },
            ))
        }
        Observe::Get => None,
    };
    let sampler = rss::Sampler::start(target, done.clone());
    let started = Instant::now();
    let mut max_send_lag_us = None;
    let mut outcomes = Vec::new();
    match args.load() {
        Load::Closed { concurrency } => {
            let slots: Vec<_> = (0..concurrency.min(run.payments))
                .map(|_| {
                    let run = run.clone();
                    tokio::spawn(async move {
                        let mut outcomes = Vec::new();
                        loop {
                            let i = run.next.fetch_add(1, Ordering::Relaxed);
                            if i >= run.payments {
                                break;
                            }
                            outcomes.push(run.one_payment(i, Instant::now()).await);
                        }
                        outcomes
                    })
                })
                .collect();
            for slot in slots {
                match slot.await {
                    Ok(mut o) => outcomes.append(&mut o),
                    Err(e) => eprintln!("a bench task failed: {e}"),
                }
            }
        }
        Load::Open { per_second } => {
            let mut tasks = Vec::new();
            let mut lag = 0;
            for i in 0..run.payments {
                let intended = started + schedule_offset(i, per_second);
                tokio::time::sleep_until(intended.into()).await;
                lag = lag.max(micros(Instant::now().saturating_duration_since(intended)));
                let run = run.clone();
                tasks.push(tokio::spawn(
                    async move { run.one_payment(i, intended).await },
                ));
            }
            max_send_lag_us = Some(lag);
            for t in tasks {
                match t.await {
                    Ok(o) => outcomes.push(o),
                    Err(e) => eprintln!("a bench task failed: {e}"),
                }
            }
        }
    }
    let wall = started.elapsed();
    done.cancel();
    if let Some(observer) = observer {
        let _ = observer.await;
    }
    let rss = sampler.finish().await;
    let sink = match sink {
        Some(sink) => {
            let c = &sink.state.counts;
            let figures = SinkFigures {
                received: c.received.load(Ordering::Relaxed),
                invalid_signatures: c.invalid_signatures.load(Ordering::Relaxed),
                duplicates: c.duplicates.load(Ordering::Relaxed),
            };
            sink.close().await;
            Some(figures)
        }
        None => None,
    };
    Ok(Measured {
        outcomes,
        started,
        wall,
        observer_requests: run.observer_requests.load(Ordering::Relaxed),
        observer_errors: run.observer_errors.load(Ordering::Relaxed),
        retries: api.retries.load(Ordering::Relaxed),
        sink,
        max_send_lag_us,
        rss,
    })
}

/// When payment `i` of an open-loop run is due: exactly `i / rate` seconds after the start,
/// computed in integer nanoseconds so the schedule never drifts.
pub(crate) fn schedule_offset(i: u64, per_second: u64) -> Duration {
    let nanos = u128::from(i) * 1_000_000_000 / u128::from(per_second.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}
