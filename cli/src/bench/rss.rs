//! Memory and CPU of the stack's processes during a run, from `/proc` (Linux; elsewhere the
//! report says nothing was found).
//!
//! Which processes: the children of a `paystream up` (a process whose parent's name is
//! `paystream`) named like the stack's binaries; the `nats-server` of `NATS_URL` (one `up`
//! started, or one listening on that port by its command line); and the PostgreSQL
//! backends connected to the stack's database (their command line names it), not the shared
//! server's own processes nor other databases' backends. Every second each one's resident set
//! is sampled; at the end its kernel-kept peak (`VmHWM`) is read too. A backend's RSS counts the
//! shared buffers it touched, so it overstates what one backend owns.

#[allow(unused_imports)]
use super::*;

use std::collections::BTreeMap as Map;

/// The stack's binaries, as `/proc/<pid>/comm` names them (at most 15 bytes).
pub const STACK: [&str; 9] = [
    "paystream-api",
    "confirm-worker",
    "refund-worker",
    "webhook-worker",
    "scheduler",
    "vault",
    "acquirer-sim",
    "nats-server",
    "postgres",
];

const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// One process's figures over the run (kilobytes; CPU in clock ticks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessFigures {
    pub name: String,
    pub pid: u32,
    pub first_kb: u64,
    pub last_kb: u64,
    /// The larger of the highest sample and the kernel's `VmHWM`.
    pub peak_kb: u64,
    pub cpu_ticks: u64,
}

/// One look at a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Look {
    rss_kb: u64,
    hwm_kb: u64,
    ticks: u64,
}

/// `VmRSS` and `VmHWM` from `/proc/<pid>/status`, in kB.
pub(crate) fn parse_status(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// utime + stime from `/proc/<pid>/stat` (fields 14 and 15, after the parenthesised name,
/// which may itself hold spaces).
pub(crate) fn parse_stat_ticks(text: &str) -> Option<u64> {
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name, field 3 (state) is index 0, so utime (14) is index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn read(pid: u32, what: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/{what}")).ok()
}

fn parent(pid: u32) -> Option<u32> {
    let stat = read(pid, "stat")?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Whether a process is part of the stack under measurement, and by what name.
pub(crate) fn classify(
    comm: &str,
    cmdline: &str,
    parent_comm: &str,
    target: &Target,
) -> Option<String> {
    let database = target.database.as_str();
    let comm = comm.trim();
    if comm == "postgres" {
        // "postgres: 15/main: user database 127.0.0.1(port) state": a backend of this database.
        let words: Vec<&str> = cmdline.split_whitespace().collect();
        let of_db =
            cmdline.starts_with("postgres:") && words.iter().skip(1).any(|w| *w == database);
        return of_db.then(|| "postgres backends".to_owned());
    }
    if comm == "nats-server" {
        let words: Vec<&str> = cmdline.split_whitespace().collect();
        let port = target.nats_port.to_string();
        let on_port = words
            .windows(2)
            .any(|w| matches!(w[0], "-p" | "--port") && w[1] == port)
            || (target.nats_port == 4222 && !words.iter().any(|w| matches!(*w, "-p" | "--port")));
        return (on_port || parent_comm.trim() == "paystream").then(|| comm.to_owned());
    }
    (STACK.contains(&comm) && parent_comm.trim() == "paystream").then(|| comm.to_owned())
}

/// Which stack: its database (for the backends) and its broker's port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) database: String,
    pub(crate) nats_port: u16,
}

fn look_all(target: &Target) -> Vec<(u32, String, Look)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(comm) = read(pid, "comm") else {
            continue;
        };
        if !STACK.contains(&comm.trim()) {
            continue;
        }
        let cmdline = read(pid, "cmdline").unwrap_or_default().replace('\0', " ");
        let parent_comm = parent(pid)
            .and_then(|p| read(p, "comm"))
            .unwrap_or_default();
        let Some(name) = classify(&comm, &cmdline, &parent_comm, target) else {
            continue;
        };
        let (Some((rss_kb, hwm_kb)), Some(ticks)) = (
            read(pid, "status").as_deref().and_then(parse_status),
            read(pid, "stat").as_deref().and_then(parse_stat_ticks),
        ) else {
            continue;
        };
        found.push((
            pid,
            name,
            Look {
                rss_kb,
                hwm_kb,
                ticks,
            },
        ));
    }
    found
}

#[derive(Default)]
struct Tracked {
    name: String,
    first: Option<Look>,
    last: Option<Look>,
    peak_kb: u64,
}

pub(crate) struct Sampler {
    task: tokio::task::JoinHandle<Vec<ProcessFigures>>,
}

impl Sampler {
    /// Samples until `done` is cancelled; `database` picks the PostgreSQL backends.
    pub(crate) fn start(target: Target, done: CancellationToken) -> Sampler {
        let task = tokio::task::spawn(async move {
            let mut tracked: Map<u32, Tracked> = Map::new();
            loop {
                let t = target.clone();
                let looks = tokio::task::spawn_blocking(move || look_all(&t))
                    .await
                    .unwrap_or_default();
                for (pid, name, look) in looks {
                    let t = tracked.entry(pid).or_insert_with(|| Tracked {
                        name,
                        ..Tracked::default()
                    });
                    t.first.get_or_insert(look);
                    t.last = Some(look);
                    t.peak_kb = t.peak_kb.max(look.rss_kb).max(look.hwm_kb);
                }
                if done.is_cancelled() {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                    _ = done.cancelled() => {}
                }
            }
            tracked
                .into_iter()
                .filter_map(|(pid, t)| {
                    let (first, last) = (t.first?, t.last?);
                    Some(ProcessFigures {
                        name: t.name,
                        pid,
                        first_kb: first.rss_kb,
                        last_kb: last.rss_kb,
                        peak_kb: t.peak_kb,
                        cpu_ticks: last.ticks.saturating_sub(first.ticks),
                    })
                })
                .collect()
        });
        Sampler { task }
    }

    pub(crate) async fn finish(self) -> Vec<ProcessFigures> {
        self.task.await.unwrap_or_default()
    }
}

/// Per name: how many processes, the largest single peak, and the sums at the first and last
/// sample (flat memory means `lastKb` stays near `firstKb` over a long run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameFigures {
    pub processes: u64,
    pub peak_kb: u64,
    pub first_kb: u64,
    pub last_kb: u64,
    pub cpu_ticks: u64,
}

pub fn by_name(figures: &[ProcessFigures]) -> Map<String, NameFigures> {
    let mut out: Map<String, NameFigures> = Map::new();
    for f in figures {
        let n = out.entry(f.name.clone()).or_insert(NameFigures {
            processes: 0,
            peak_kb: 0,
            first_kb: 0,
            last_kb: 0,
            cpu_ticks: 0,
        });
        n.processes += 1;
        n.peak_kb = n.peak_kb.max(f.peak_kb);
        n.first_kb += f.first_kb;
        n.last_kb += f.last_kb;
        n.cpu_ticks += f.cpu_ticks;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read() {
        let status = "Name:\tpaystream-api\nVmHWM:\t   20480 kB\nVmRSS:\t   14336 kB\n";
        assert_eq!(parse_status(status), Some((14_336, 20_480)));
        assert_eq!(parse_status("Name: x\n"), None);
        let stat = "1234 (confirm worker) S 1200 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 5 0 1 2 3";
        assert_eq!(parse_stat_ticks(stat), Some(325));
        assert_eq!(
            parent(std::process::id()).is_some(),
            cfg!(target_os = "linux")
        );
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn only_the_stack_is_counted() {
        let db = &Target {
            database: "paystream".into(),
            nats_port: 4222,
        };
        let own = &Target {
            database: "paystream".into(),
            nats_port: 14222,
        };
        assert_eq!(
            classify("paystream-api\n", "/x/paystream-api", "paystream\n", db).as_deref(),
            Some("paystream-api")
        );
        // The same binary started by a test harness is someone else's.
        assert_eq!(
            classify("paystream-api", "/x/paystream-api", "it-abc", db),
            None
        );
        assert_eq!(
            classify(
                "postgres",
                "postgres: 15/main: postgres paystream 127.0.0.1(5000) idle",
                "postgres",
                db
            )
            .as_deref(),
            Some("postgres backends")
        );
        assert_eq!(
            classify(
                "postgres",
                "postgres: 15/main: postgres other_db 127.0.0.1(5000) idle",
                "postgres",
                db
            ),
            None
        );
        assert_eq!(
            classify(
                "postgres",
                "postgres: 15/main: checkpointer",
                "postgres",
                db
            ),
            None
        );
        assert_eq!(
            classify("nats-server", "nats-server -js", "systemd", db).as_deref(),
            Some("nats-server")
        );
        // Another broker on the machine is not this stack's.
        assert_eq!(
            classify(
                "nats-server",
                "nats-server -a 127.0.0.1 -p 4222 -js",
                "systemd",
                own
            ),
            None
        );
        assert_eq!(
            classify("nats-server", "nats-server -p 14222 -js", "systemd", own).as_deref(),
            Some("nats-server")
        );
        assert_eq!(
            classify("nats-server", "nats-server -js -p 9", "paystream", own).as_deref(),
            Some("nats-server")
        );
        assert_eq!(classify("bash", "bash", "paystream", db), None);
    }

    #[test]
    fn figures_sum_by_name() {
        let f = |name: &str, pid, first_kb, last_kb, peak_kb| ProcessFigures {
            name: name.into(),
            pid,
            first_kb,
            last_kb,
            peak_kb,
            cpu_ticks: 10,
        };
        let m = by_name(&[
            f("confirm-worker", 1, 10, 12, 14),
            f("confirm-worker", 2, 11, 11, 13),
            f("paystream-api", 3, 14, 20, 21),
        ]);
        assert_eq!(
            m["confirm-worker"],
            NameFigures {
                processes: 2,
                peak_kb: 14,
                first_kb: 21,
                last_kb: 23,
                cpu_ticks: 20
            }
        );
        assert_eq!(m["paystream-api"].processes, 1);
    }
}
