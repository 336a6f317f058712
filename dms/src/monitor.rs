//! The Domain Monitor: watches every live domain for limit events (memory limit hits, OOM
//! kills, pids limit hits, CPU throttling above the policy's ratio, network drops) and hands
//! each to [`Service::limit_event`], which counts, logs, signals and acts on it.
//!
//! Event-driven where the kernel offers it: on cgroup v1 an eventfd registered on
//! `memory.oom_control`, and inotify on `pids.events` (and v2 `memory.events`), which the kernel
//! marks modified when a limit is hit. CPU throttling and network drops have no notification,
//! so every domain is also checked once per `interval`. Runs on its own thread, never on the
//! async runtime.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dms_accounting::Usage;
use dms_policies::LimitKind;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use crate::domain::{DomainState, EventSource};
use crate::service::Service;
use crate::usage::LimitEvent;

/// How often the domain list is re-read, so new domains are watched promptly.
const SYNC_EVERY: Duration = Duration::from_millis(500);

/// The counters limit events are derived from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counters {
    memory_limit_hits: u64,
    oom_kills: u64,
    pids_limit_hits: u64,
    cpu_periods: u64,
    cpu_throttled_periods: u64,
    network_drops: u64,
}

impl Counters {
    fn of(u: &Usage) -> Self {
        Self {
            memory_limit_hits: u.memory_limit_hits.unwrap_or(0),
            oom_kills: u.oom_kills.unwrap_or(0),
            pids_limit_hits: u.pids_limit_hits.unwrap_or(0),
            cpu_periods: u.cpu_periods.unwrap_or(0),
            cpu_throttled_periods: u.cpu_throttled_periods.unwrap_or(0),
            network_drops: u
                .network
                .as_ref()
                .map_or(0, |n| n.receive_dropped + n.transmit_dropped),
        }
    }
}

/// The events between two readings, given the throttling ratio that counts as an event.
fn events_between(prev: &Counters, now: &Counters, throttle_ratio: f64) -> Vec<(LimitKind, u64)> {
    let mut out = Vec::new();
    let d = |a: u64, b: u64| b.saturating_sub(a);
    for (kind, n) in [
        (
            LimitKind::MemoryLimit,
            d(prev.memory_limit_hits, now.memory_limit_hits),
        ),
        (LimitKind::OomKill, d(prev.oom_kills, now.oom_kills)),
        (
            LimitKind::PidsLimit,
            d(prev.pids_limit_hits, now.pids_limit_hits),
        ),
        (
            LimitKind::NetworkDrops,
            d(prev.network_drops, now.network_drops),
        ),
    ] {
        if n > 0 {
            out.push((kind, n));
        }
    }
    let periods = d(prev.cpu_periods, now.cpu_periods);
    let throttled = d(prev.cpu_throttled_periods, now.cpu_throttled_periods);
    if periods > 0 && throttled as f64 / periods as f64 > throttle_ratio {
        out.push((LimitKind::CpuThrottled, 1));
    }
    out
}

/// One watched domain.
struct Watch {
    /// Last counters seen.
    last: Counters,
    /// v1 OOM notifier: the eventfd and the `memory.oom_control` it is registered on.
    oom: Option<(EventFd, File)>,
    /// inotify watches on its event files.
    wds: Vec<WatchDescriptor>,
    /// A freeze or kill that failed (e.g. processes still dying after an OOM kill), tried
    /// again at each check until it succeeds or the domain is gone.
    retry: Option<(LimitKind, dms_policies::LimitAction)>,
}

fn register_oom(memory_dir: &Path) -> std::io::Result<(EventFd, File)> {
    let efd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
    let control = File::open(memory_dir.join("memory.oom_control"))?;
    let mut ec = std::fs::OpenOptions::new()
        .write(true)
        .open(memory_dir.join("cgroup.event_control"))?;
    ec.write_all(format!("{} {}", efd.as_raw_fd(), control.as_raw_fd()).as_bytes())?;
    Ok((efd, control))
}

/// Starts the monitor thread. It ends when the service is dropped.
pub fn spawn(svc: &Arc<Service>, interval: Duration) -> std::io::Result<()> {
    let ino = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?;
    let weak = Arc::downgrade(svc);
    std::thread::Builder::new()
        .name("domain-monitor".into())
        .spawn(move || run(&weak, &ino, interval))?;
    Ok(())
}

fn run(svc: &Weak<Service>, ino: &Inotify, interval: Duration) {
    let started = crate::service::now();
    let mut watches: HashMap<String, Watch> = HashMap::new();
    let mut by_wd: HashMap<WatchDescriptor, String> = HashMap::new();
    let mut next_full = Instant::now() + interval;
    let mut next_sync = Instant::now();
    let mut synced: Option<u64> = None;
    loop {
        let Some(s) = svc.upgrade() else { return };
        if Instant::now() >= next_sync {
            // Only when a domain changed state since the last look (or one was busy then).
            let generation = s.generation.load(std::sync::atomic::Ordering::Relaxed);
            if synced != Some(generation) {
                let complete = sync(&s, ino, started, &mut watches, &mut by_wd);
                synced = complete.then_some(generation);
            }
            next_sync = Instant::now() + SYNC_EVERY;
        }
        let wait = next_full
            .min(next_sync)
            .saturating_duration_since(Instant::now());
        // Poll the notifiers (without holding the service, so it can be dropped meanwhile).
        let fired = {
            let names: Vec<&String> = watches
                .iter()
                .filter(|(_, w)| w.oom.is_some())
                .map(|(n, _)| n)
                .collect();
            let mut fds = Vec::with_capacity(names.len() + 1);
            fds.push(PollFd::new(ino.as_fd(), PollFlags::POLLIN));
            for n in &names {
                if let Some((efd, _)) = &watches[*n].oom {
                    fds.push(PollFd::new(efd.as_fd(), PollFlags::POLLIN));
                }
            }
            drop(s);
            let ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
            match nix::poll::poll(
                &mut fds,
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(0) | Err(_) => Vec::new(),
                Ok(_) => {
                    let mut fired: Vec<String> = Vec::new();
                    let ready = |p: &PollFd| p.revents().is_some_and(|r| !r.is_empty());
                    if ready(&fds[0]) {
                        while let Ok(evs) = ino.read_events() {
                            if evs.is_empty() {
                                break;
                            }
                            for ev in evs {
                                if let Some(n) = by_wd.get(&ev.wd) {
                                    fired.push(n.clone());
                                }
                            }
                        }
                    }
                    for (i, n) in names.iter().enumerate() {
                        if ready(&fds[i + 1]) {
                            if let Some((efd, _)) = &watches[*n].oom {
                                let _ = efd.read();
                            }
                            fired.push((*n).clone());
                        }
                    }
                    fired
                }
            }
        };
        let Some(s) = svc.upgrade() else { return };
        let full = Instant::now() >= next_full;
        if full {
            next_full = Instant::now() + interval;
            let names: Vec<String> = watches.keys().cloned().collect();
            for n in names {
                check(&s, &n, &mut watches);
            }
        } else {
            let mut fired = fired;
            fired.sort();
            fired.dedup();
            for n in fired {
                check(&s, &n, &mut watches);
            }
        }
    }
}

/// Watches new live domains and drops the ones that are gone. False when a domain was busy
/// and could not be looked at (so the next pass tries again).
fn sync(
    s: &Service,
    ino: &Inotify,
    started: u64,
    watches: &mut HashMap<String, Watch>,
    by_wd: &mut HashMap<WatchDescriptor, String>,
) -> bool {
    let (live, mut complete) = s.monitored_domains();
    let keep: std::collections::HashSet<&str> = live.iter().map(|(n, _)| n.as_str()).collect();
    let gone: Vec<String> = watches
        .keys()
        .filter(|n| !keep.contains(n.as_str()))
        .cloned()
        .collect();
    for n in gone {
        if let Some(w) = watches.remove(&n) {
            for wd in w.wds {
                by_wd.remove(&wd);
                let _ = ino.rm_watch(wd);
            }
        }
    }
    for (name, created_at) in live {
        if watches.contains_key(&name) {
            continue;
        }
        // A domain created since the monitor started is compared with zero, so a limit hit
        // before its first check still counts; an adopted one starts from its counters now.
        let last = if created_at >= started {
            Counters::default()
        } else {
            match s.monitor_usage(&name) {
                Some((u, _)) => Counters::of(&u),
                None => {
                    complete = false;
                    continue;
                }
            }
        };
        let mut w = Watch {
            last,
            oom: None,
            wds: Vec::new(),
            retry: None,
        };
        for src in s.backend_event_sources(&name) {
            match src {
                EventSource::OomControl(dir) => match register_oom(&dir) {
                    Ok(pair) => w.oom = Some(pair),
                    Err(e) => {
                        tracing::debug!(domain = %name, error = %e, "no OOM notifier; polling")
                    }
                },
                EventSource::Modified(file) => match ino.add_watch(&file, AddWatchFlags::IN_MODIFY)
                {
                    Ok(wd) => {
                        by_wd.insert(wd, name.clone());
                        w.wds.push(wd);
                    }
                    Err(e) => {
                        tracing::debug!(domain = %name, file = %file.display(), error = %e, "not watched; polling")
                    }
                },
            }
        }
        watches.insert(name, w);
    }
    complete
}

fn check(s: &Service, name: &str, watches: &mut HashMap<String, Watch>) {
    let Some(w) = watches.get_mut(name) else {
        return;
    };
    let Some((u, (state, policy))) = s.monitor_usage(name) else {
        return;
    };
    let now = Counters::of(&u);
    let events = events_between(&w.last, &now, policy.cpu_throttled_ratio());
    w.last = now;
    // A frozen domain is not frozen again; killing still applies.
    let in_state = |action| match (state, action) {
        (DomainState::Frozen, dms_policies::LimitAction::Freeze) => {
            dms_policies::LimitAction::Notify
        }
        _ => action,
    };
    if let Some((kind, action)) = w.retry.take() {
        if !s.limit_action(name, kind, in_state(action)) {
            w.retry = Some((kind, action));
        }
    }
    for (kind, count) in events {
        let action = in_state(policy.action(kind));
        let applied = s.limit_event(LimitEvent {
            domain: name.to_string(),
            kind,
            count,
            action,
            detail: detail(kind, count),
        });
        // A kill outranks a freeze still waiting to be retried.
        if !applied
            && w.retry
                .is_none_or(|(_, a)| a != dms_policies::LimitAction::Kill)
        {
            w.retry = Some((kind, action));
        }
    }
}

fn detail(kind: LimitKind, count: u64) -> String {
    match kind {
        LimitKind::OomKill => format!("{count} process(es) killed by the OOM killer"),
        LimitKind::MemoryLimit => format!("memory usage hit the limit {count} time(s)"),
        LimitKind::PidsLimit => format!("{count} fork(s) refused by the pids limit"),
        LimitKind::CpuThrottled => "CPU throttled above the policy's ratio".to_string(),
        LimitKind::NetworkDrops => format!("{count} packet(s) dropped"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_from_counter_deltas() {
        let a = Counters::default();
        let b = Counters {
            oom_kills: 2,
            pids_limit_hits: 1,
            cpu_periods: 10,
            cpu_throttled_periods: 6,
            ..Counters::default()
        };
        let ev = events_between(&a, &b, 0.5);
        assert_eq!(
            ev,
            vec![
                (LimitKind::OomKill, 2),
                (LimitKind::PidsLimit, 1),
                (LimitKind::CpuThrottled, 1)
            ]
        );
        // Below the ratio, and no change: nothing.
        assert!(events_between(&a, &b, 0.7)
            .iter()
            .all(|(k, _)| *k != LimitKind::CpuThrottled));
        assert!(events_between(&b, &b, 0.5).is_empty());
        // A counter going backwards (a re-created group) is not an event.
        assert!(events_between(&b, &a, 0.5).is_empty());
    }
}
