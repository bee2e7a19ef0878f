//! What the operating system tells about the two processes of a run: the bench's open-files
//! limit and CPU time, and the server's resident memory and CPU time from /proc.

use std::time::Duration;

use nix::sys::resource::{Resource, UsageWho, getrlimit, getrusage, setrlimit};
use nix::sys::time::TimeVal;
use nix::unistd::{SysconfVar, sysconf};

use crate::error::BenchError;

/// Raises the soft limit on open files to the hard limit when `needed` is above it, and
/// returns the limit in force; fails when even the hard limit is below `needed`.
pub(crate) fn raise_open_files(needed: u64) -> Result<u64, BenchError> {
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| BenchError::OpenFiles(e.to_string()))?;
    let limit = if soft < needed && soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            .map_err(|e| BenchError::OpenFiles(e.to_string()))?;
        hard
    } else {
        soft
    };
    if limit < needed {
        return Err(BenchError::OpenFiles(format!(
            "{needed} files needed, the limit is {limit} (hard {hard}); use fewer terminals"
        )));
    }
    Ok(limit)
}

/// CPU time a process has used, split as the kernel accounts it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct CpuTime {
    pub user: Duration,
    pub system: Duration,
}

impl CpuTime {
    pub fn total(self) -> Duration {
        self.user + self.system
    }

    /// The time used since `earlier`.
    pub fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

/// The bench's own CPU time (getrusage of the whole process, all threads).
pub(crate) fn own_cpu() -> CpuTime {
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(usage) => CpuTime {
            user: timeval(usage.user_time()),
            system: timeval(usage.system_time()),
        },
        Err(_) => CpuTime::default(),
    }
}

fn timeval(t: TimeVal) -> Duration {
    let micros = t.tv_sec() * 1_000_000 + t.tv_usec();
    Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}

/// The server's processes (one, or a cluster's router and comets), observed through /proc and
/// added up.
#[derive(Debug, Clone)]
pub(crate) struct ServerProcess {
    pub pids: Vec<u32>,
    ticks_per_second: u64,
}

impl ServerProcess {
    /// The processes `pids`, which must exist.
    pub fn new(pids: &[u32]) -> Result<ServerProcess, BenchError> {
        let process = ServerProcess {
            pids: pids.to_vec(),
            ticks_per_second: match sysconf(SysconfVar::CLK_TCK) {
                Ok(Some(ticks)) if ticks > 0 => ticks.unsigned_abs(),
                _ => 100,
            },
        };
        if let Some(&gone) = pids.iter().find(|&&pid| rss_kib_of(pid).is_none()) {
            return Err(BenchError::ServerPid(gone));
        }
        Ok(process)
    }

    /// Resident memory in KiB (`VmRSS` of /proc/PID/status), of all the processes.
    pub fn rss_kib(&self) -> Option<u64> {
        self.pids.iter().map(|&pid| rss_kib_of(pid)).sum()
    }

    /// Open file descriptors (entries of /proc/PID/fd), of all the processes.
    pub fn open_files(&self) -> Option<u64> {
        self.pids
            .iter()
            .map(|pid| Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64))
            .sum()
    }

    /// CPU time used so far (`utime` and `stime` of /proc/PID/stat), of all the processes.
    pub fn cpu(&self) -> Option<CpuTime> {
        let tick = |t: u64| Duration::from_secs_f64(t as f64 / self.ticks_per_second as f64);
        self.pids.iter().try_fold(
            CpuTime {
                user: Duration::ZERO,
                system: Duration::ZERO,
            },
            |total, &pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let (user, system) = parse_stat_times(&stat)?;
                Some(CpuTime {
                    user: total.user + tick(user),
                    system: total.system + tick(system),
                })
            },
        )
    }
}

/// The bench's own resident memory in KiB.
pub(crate) fn own_rss_kib() -> Option<u64> {
    rss_kib_of(std::process::id())
}

fn rss_kib_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// `utime` and `stime` (fields 14 and 15) of a /proc/PID/stat line; the command name in
/// field 2 may hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat_times(stat: &str) -> Option<(u64, u64)> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user = fields.next()?.parse().ok()?;
    let system = fields.next()?.parse().ok()?;
    Some((user, system))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\tgalopush\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(12345));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn reads_stat_times() {
        let stat = "4242 (gal (o) push) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 3 0";
        assert_eq!(parse_stat_times(stat), Some((250, 31)));
    }

    #[test]
    fn observes_itself() {
        let me = ServerProcess::new(&[std::process::id()]).expect("this process exists");
        let rss = me.rss_kib().expect("VmRSS");
        assert!(rss > 0);
        assert!(me.cpu().is_some());
        let twice = ServerProcess::new(&[std::process::id(); 2]).expect("this process exists");
        assert!(
            twice.rss_kib().is_some_and(|kib| kib >= rss * 3 / 2),
            "the processes' memory is added up"
        );
        let start = std::time::Instant::now();
        while own_cpu().total() == Duration::ZERO {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "no CPU time ever counted"
            );
        }
    }
}
