//! `paystream chaos`: the whole stack under failure, then a check of everything that must
//! still hold.
//!
//! It starts a stack of its own: a nats-server on a free port with its store under a temp
//! dir (with `--nats-cluster N`, N clustered nodes and every stream with N replicas), a fresh
//! database on the configured PostgreSQL server (dropped afterwards unless
//! `--keep`), the simulator, the API and every worker as child processes, started the way
//! `paystream up` starts them (`up::stack_env`). It never touches another broker or database.
//!
//! While a driver starts payments at a steady `--rate` (cards that succeed, decline and ask
//! for 3-D Secure, whose challenge page it answers over plain HTTP, and refunds of part of
//! some, each followed by a refund of more than what is left), a killer SIGKILLs one process at
//! a time by its exact pid (every worker, the API, which runs the outbox relay, and
//! nats-server, each at least once, then at random; on a cluster one node at a time, the
//! first time and about half the times after the payment-commands stream's leader, otherwise
//! a follower, and NATS twice at least) and restarts it, and the simulator
//! answers 5xx, hangs after doing the work, and drops, duplicates and reorders its
//! notifications. Requests the API could not answer are retried with the same
//! Idempotency-Key. A webhook sink of its own receives every payment and refund event.
//!
//! At the end it waits for the system to settle and checks (see [`check::evaluate`]); exit 1 on
//! any violation. `--seed` makes the choice of cards, amounts, victims and timings repeatable
//! (the interleaving with the processes' own timing is not).

mod check;
mod driver;
mod stack;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use paystream_shared::config::Config;

pub use check::{evaluate, CheckRow, IntentObs, Observations};

#[derive(Debug, clap::Args)]
pub struct ChaosArgs {
    /// How many payments to drive.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub payments: u64,
    /// Seeds every random choice (cards, amounts, refunds, victims, pauses); printed when not given.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Payments started per second.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub rate: u64,
    /// A process is killed about this often (seconds, jittered).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub kill_every_secs: u64,
    /// How long the system gets to settle after the last payment was started.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub settle_secs: u64,
    /// Keep the database and the temp dir (logs, NATS store) afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Run NATS as a JetStream cluster of this many nodes (3 or 5), every stream with that many
    /// replicas; a NATS kill then takes one node (often the leader) and never two at once.
    #[arg(long, value_parser = crate::nats_cluster::parse_size)]
    pub nats_cluster: Option<usize>,
}

/// SplitMix64: small, seedable and good enough to pick cards and victims; no float.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// The generator of item `i`: independent of how many draws other items made.
    pub fn for_item(seed: u64, i: u64) -> Rng {
        let mut r = Rng(seed ^ i.wrapping_mul(0xD6E8_FEB8_6659_FD93));
        r.next_u64();
        r
    }
}

/// What the run did to the system, so a clean report is known not to be vacuous.
#[derive(Debug, Default)]
pub struct Mayhem {
    pub kills: Mutex<BTreeMap<String, u64>>,
    pub driver_retries: AtomicU64,
    pub faults: Mutex<BTreeMap<String, u64>>,
    /// Payments not final but in the dead letters at the end.
    pub dead_lettered: AtomicU64,
    /// Payments whose confirm the API never accepted within the driver's retries.
    pub unconfirmed: AtomicU64,
    /// 3-D Secure payments whose challenge the driver could not get through.
    pub unchallenged: AtomicU64,
    /// On a cluster: what the NATS kills did and how many nodes held each stream at the end.
    pub cluster: Mutex<Option<ClusterMayhem>>,
}

#[derive(Debug, Default, Clone)]
pub struct ClusterMayhem {
    pub nodes: usize,
    /// Kills per node name.
    pub node_kills: BTreeMap<String, u64>,
    /// Kills of the node that led the payment-commands stream at that moment.
    pub leader_kills: u64,
    /// Nodes holding each stream (leader and other peers) once the run settled.
    pub stream_peers: BTreeMap<String, u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub async fn run(config: &Config, args: ChaosArgs) -> anyhow::Result<ExitCode> {
    let seed = args.seed.unwrap_or_else(|| {
        u64::from_le_bytes(
            uuid::Uuid::new_v4().as_bytes()[..8]
                .try_into()
                .unwrap_or_default(),
        )
    });
    let say = |s: String| {
        if !args.json {
            eprintln!("{s}");
        }
    };
    say(format!(
        "chaos: {} payments at {}/s, seed {seed} (repeat with --seed {seed})",
        args.payments, args.rate
    ));
    let mut stack = stack::Stack::start(
        config.database_url.expose(),
        seed,
        &config.stream_prefix,
        args.nats_cluster,
    )
    .await
    .context("starting the chaos stack")?;
    say(format!(
        "stack up: api {}, simulator {}, nats {}, database {}, logs in {}",
        stack.api,
        stack.sim,
        stack.nats_url(),
        stack.db_name,
        stack.dir.display()
    ));
    let outcome = drive_and_check(&mut stack, &args, seed).await;
    stack.stop().await;
    let violations: u64 = outcome
        .as_ref()
        .map(|(rows, _)| rows.iter().map(|r| r.violations).sum())
        .unwrap_or(0);
    // A violation is kept for a look: the database and every process's log.
    if args.keep || violations > 0 {
        eprintln!(
            "kept database {} and {} (drop and remove them when done)",
            stack.db_name,
            stack.dir.display()
        );
    } else {
        stack.remove().await;
    }
    let (rows, mayhem) = outcome?;
    if args.json {
        println!("{}", report_json(&rows, &mayhem, seed));
    } else {
        print!("{}", check::table(&rows));
        print!("{}", mayhem_table(&mayhem));
        println!(
            "{}",
            if violations == 0 {
                "no violation".to_owned()
            } else {
                format!("{violations} VIOLATIONS (seed {seed})")
            }
        );
    }
    Ok(if violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn drive_and_check(
    stack: &mut stack::Stack,
    args: &ChaosArgs,
    seed: u64,
) -> anyhow::Result<(Vec<CheckRow>, Arc<Mayhem>)> {
    let mayhem = Arc::new(Mayhem::default());
    let client = driver::Client::new(&stack.api, &stack.key, mayhem.clone())?;
    let sink = driver::Sink::start(&client).await?;
    let started = Instant::now();
    let total = args.payments;

    // The driver: payment i starts at i / rate seconds.
    let driving = {
        let (client, sink_url, rate) = (client.clone(), sink.return_url(), args.rate);
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            for i in 0..total {
                let due = started + bench_offset(i, rate);
                tokio::time::sleep_until(due.into()).await;
                let (client, ret) = (client.clone(), sink_url.clone());
                tasks.push(tokio::spawn(async move {
                    driver::one_payment(&client, Rng::for_item(seed, i), i, &ret).await
                }));
            }
            let mut driven = Vec::new();
            for t in tasks {
                if let Ok(Some(d)) = t.await {
                    driven.push(d);
                }
            }
            driven
        })
    };

    // Faults from a tenth of the way in until nine tenths, so both edges are crossed under load.
    let run_secs = total / args.rate + 1;
    let faults_on = Duration::from_secs(run_secs / 10);
    let faults_off = Duration::from_secs(run_secs * 9 / 10);
    let mut rng = Rng::new(seed ^ 0x6B69_6C6C);
    let victims = stack::VICTIMS;
    let mut order: Vec<&str> = victims.to_vec();
    // A cluster loses a node twice at least: once its leader, once any node.
    if stack.is_cluster() {
        order.push("nats-server");
        *lock(&mayhem.cluster) = Some(ClusterMayhem {
            nodes: stack.nats_nodes(),
            ..ClusterMayhem::default()
        });
    }
    // Every victim once, in a seeded order, then at random.
    for i in (1..order.len()).rev() {
        let j = usize::try_from(rng.below(u64::try_from(i).unwrap_or(0) + 1)).unwrap_or(0);
        order.swap(i, j);
    }
    let mut faults_state = 0u8;
    let mut kill_no = 0usize;
    let mut next_kill = started + Duration::from_secs(args.kill_every_secs);
    while !driving.is_finished() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let elapsed = started.elapsed();
        if faults_state == 0 && elapsed >= faults_on {
            client.sim_faults(&stack.sim, fault_settings()).await;
            faults_state = 1;
        } else if faults_state == 1 && elapsed >= faults_off {
            client.sim_faults(&stack.sim, json!({})).await;
            faults_state = 2;
        }
        if Instant::now() >= next_kill {
            let victim = order.get(kill_no).copied().unwrap_or_else(|| {
                let n = u64::try_from(victims.len()).unwrap_or(1);
                victims[usize::try_from(rng.below(n)).unwrap_or(0)]
            });
            kill_no += 1;
            let down = Duration::from_millis(200 + rng.below(1300));
            kill(stack, victim, down, &mut rng, &mayhem).await?;
            let jitter = rng.below(args.kill_every_secs * 1000);
            next_kill = Instant::now() + Duration::from_millis(args.kill_every_secs * 500 + jitter);
        }
    }
    // A short run may end before every victim had its turn: kill the rest now, under the tail.
    while let Some(victim) = order.get(kill_no).copied() {
        kill_no += 1;
        kill(stack, victim, Duration::from_millis(300), &mut rng, &mayhem).await?;
    }
    let fired = client.sim_fault_counts(&stack.sim).await;
    client.sim_faults(&stack.sim, json!({})).await;
    *mayhem
        .faults
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = fired;
    let driven = driving.await.context("the driver")?;
    let unconfirmed = driven.iter().filter(|d| !d.confirmed).count();
    let unchallenged = driven
        .iter()
        .filter(|d| d.confirmed && !d.challenged)
        .count();
    mayhem
        .unchallenged
        .store(u64::try_from(unchallenged).unwrap_or(0), Ordering::Relaxed);
    mayhem
        .unconfirmed
        .store(u64::try_from(unconfirmed).unwrap_or(0), Ordering::Relaxed);

    let observations = check::observe(
        stack,
        &client,
        &sink,
        &driven,
        Duration::from_secs(args.settle_secs),
    )
    .await?;
    sink.close(&client).await;
    let peers = stack.stream_peers().await;
    if let Some(c) = lock(&mayhem.cluster).as_mut() {
        c.stream_peers = peers;
    }
    let parked = observations
        .intents
        .iter()
        .filter(|i| observations.dead_lettered.contains(&i.id))
        .count();
    mayhem
        .dead_lettered
        .store(u64::try_from(parked).unwrap_or(0), Ordering::Relaxed);
    Ok((evaluate(&observations), mayhem))
}

/// Kills `victim` and starts it again after `down`, and counts it. On a cluster a NATS kill
/// takes one node: the first time the payment-commands stream's leader, after that the
/// leader or a follower, by a coin flip.
async fn kill(
    stack: &mut stack::Stack,
    victim: &'static str,
    down: Duration,
    rng: &mut Rng,
    mayhem: &Mayhem,
) -> anyhow::Result<()> {
    if victim == "nats-server" && stack.is_cluster() {
        let first = lock(&mayhem.cluster)
            .as_ref()
            .is_none_or(|c| c.node_kills.is_empty());
        let leader_turn = first || rng.below(2) == 0;
        let random = rng.next_u64();
        let killed = stack
            .kill_and_restart_node(leader_turn, random, down)
            .await?;
        if let Some(c) = lock(&mayhem.cluster).as_mut() {
            *c.node_kills.entry(killed.node).or_insert(0) += 1;
            c.leader_kills += u64::from(killed.was_leader);
        }
    } else {
        stack.kill_and_restart(victim, down).await?;
    }
    *lock(&mayhem.kills).entry(victim.to_owned()).or_insert(0) += 1;
    Ok(())
}

fn bench_offset(i: u64, rate: u64) -> Duration {
    let nanos = u128::from(i) * 1_000_000_000 / u128::from(rate.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// The simulator's misbehaviour while the faults are on (docs/acquirer.md, `POST /sim/faults`).
fn fault_settings() -> serde_json::Value {
    json!({
        "errorRate": 0.05,
        "timeoutRate": 0.02,
        "notifications": {"dropRate": 0.1, "duplicateRate": 0.1, "reorder": true},
    })
}

fn mayhem_table(m: &Mayhem) -> String {
    let kills = m
        .kills
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let faults = m
        .faults
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let list = |map: &BTreeMap<String, u64>| {
        map.iter()
            .map(|(k, v)| format!("{k} x{v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let cluster = lock(&m.cluster).as_ref().map_or_else(String::new, |c| {
        format!(
            "NATS cluster of {} nodes: nodes killed {}, {} of them while leading the payment-commands stream; nodes holding each stream at the end: {}\n",
            c.nodes,
            list(&c.node_kills),
            c.leader_kills,
            c.stream_peers
                .iter()
                .map(|(stream, n)| format!("{stream} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    });
    format!(
        "killed (SIGKILL, then restarted): {}\n{cluster}simulator faults fired: {}\nrequests the driver retried with the same Idempotency-Key: {}\npayments in the dead letters: {}\npayments the driver could not confirm (the API unreachable for 120 s): {}\n3-D Secure challenges the driver could not get through: {}\n",
        list(&kills),
        list(&faults),
        m.driver_retries.load(Ordering::Relaxed),
        m.dead_lettered.load(Ordering::Relaxed),
        m.unconfirmed.load(Ordering::Relaxed),
        m.unchallenged.load(Ordering::Relaxed)
    )
}

fn report_json(rows: &[CheckRow], m: &Mayhem, seed: u64) -> serde_json::Value {
    let kills = m
        .kills
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let faults = m
        .faults
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let cluster = lock(&m.cluster).as_ref().map(|c| {
        json!({
            "nodes": c.nodes,
            "nodeKills": c.node_kills,
            "leaderKills": c.leader_kills,
            "streamPeers": c.stream_peers,
        })
    });
    json!({
        "seed": seed,
        "ok": rows.iter().all(|r| r.violations == 0),
        "checks": rows.iter().map(|r| json!({
            "check": r.name, "checked": r.checked, "violations": r.violations, "example": r.example,
        })).collect::<Vec<_>>(),
        "kills": kills,
        "faultsFired": faults,
        "driverRetries": m.driver_retries.load(Ordering::Relaxed),
        "deadLettered": m.dead_lettered.load(Ordering::Relaxed),
        "unconfirmed": m.unconfirmed.load(Ordering::Relaxed),
        "unchallenged": m.unchallenged.load(Ordering::Relaxed),
        "natsCluster": cluster,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_seeded_and_per_item() {
        let a: Vec<u64> = (0..5).map(|_| Rng::new(7).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut r = Rng::new(7);
        let (x, y) = (r.next_u64(), r.next_u64());
        assert_ne!(x, y);
        assert_eq!(
            Rng::for_item(1, 3).next_u64(),
            Rng::for_item(1, 3).next_u64()
        );
        assert_ne!(
            Rng::for_item(1, 3).next_u64(),
            Rng::for_item(1, 4).next_u64()
        );
        let mut r = Rng::new(1);
        assert!((0..1000).all(|_| r.below(10) < 10));
        assert_eq!(bench_offset(50, 100), Duration::from_millis(500));
    }

    #[test]
    fn the_report_shows_what_was_done() {
        let m = Mayhem::default();
        m.kills.lock().unwrap().insert("nats-server".into(), 2);
        m.faults.lock().unwrap().insert("error".into(), 5);
        let text = mayhem_table(&m);
        assert!(
            text.contains("nats-server x2") && text.contains("error x5"),
            "{text}"
        );
        let rows = vec![CheckRow {
            name: "x",
            checked: 3,
            violations: 1,
            example: Some("pi_1".into()),
        }];
        let j = report_json(&rows, &m, 9);
        assert_eq!(j["ok"], false);
        assert_eq!(j["kills"]["nats-server"], 2);
        assert_eq!(j["checks"][0]["example"], "pi_1");
        assert!(j["natsCluster"].is_null(), "one server: {j}");
        assert!(!text.contains("NATS cluster"), "{text}");
    }

    #[test]
    fn a_cluster_run_reports_its_node_and_leader_kills() {
        let m = Mayhem::default();
        m.kills.lock().unwrap().insert("nats-server".into(), 3);
        *m.cluster.lock().unwrap() = Some(ClusterMayhem {
            nodes: 3,
            node_kills: [("n1".to_owned(), 2), ("n3".to_owned(), 1)].into(),
            leader_kills: 2,
            stream_peers: [("PAYMENT_COMMANDS".to_owned(), 3)].into(),
        });
        let text = mayhem_table(&m);
        assert!(
            text.contains(
                "NATS cluster of 3 nodes: nodes killed n1 x2, n3 x1, 2 of them while leading"
            ) && text.contains("PAYMENT_COMMANDS 3"),
            "{text}"
        );
        let j = report_json(&[], &m, 1);
        assert_eq!(j["natsCluster"]["nodes"], 3);
        assert_eq!(j["natsCluster"]["leaderKills"], 2);
        assert_eq!(j["natsCluster"]["nodeKills"]["n1"], 2);
        assert_eq!(j["natsCluster"]["streamPeers"]["PAYMENT_COMMANDS"], 3);
    }
}
