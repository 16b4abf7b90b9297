//! The SuperLink process as `/proc` shows it: CPU time (all threads, user + system) and
//! resident memory, sampled around the measurement window.

use std::io;
use std::path::PathBuf;

/// Reads `/proc/PID/stat` and `/proc/PID/status` of one process.
#[derive(Clone, Debug)]
pub struct ServerProbe {
    pid: u32,
    ticks_per_second: u64,
}

/// Memory of the process, in KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the most it was ever resident.
    pub peak_kib: u64,
}

impl ServerProbe {
    /// A probe of process `pid`.
    pub fn new(pid: u32) -> Self {
        // Linux reports /proc CPU times in USER_HZ ticks, 100 on every common architecture.
        let ticks_per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .and_then(|ticks| u64::try_from(ticks).ok())
            .filter(|ticks| *ticks > 0)
            .unwrap_or(100);
        Self {
            pid,
            ticks_per_second,
        }
    }

    /// CPU time the process has used so far (utime + stime), in microseconds.
    ///
    /// # Errors
    ///
    /// When the process is gone or the file does not parse.
    pub fn cpu_micros(&self) -> io::Result<u64> {
        let path = self.path("stat");
        let stat = std::fs::read_to_string(&path)?;
        let ticks = parse_cpu_ticks(&stat).ok_or_else(|| malformed(&path))?;
        Ok(ticks.saturating_mul(1_000_000) / self.ticks_per_second)
    }

    /// Resident memory now and at its peak.
    ///
    /// # Errors
    ///
    /// When the process is gone or the file lacks `VmRSS`/`VmHWM`.
    pub fn memory(&self) -> io::Result<Memory> {
        let path = self.path("status");
        let status = std::fs::read_to_string(&path)?;
        parse_memory(&status).ok_or_else(|| malformed(&path))
    }

    fn path(&self, file: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/{file}", self.pid))
    }
}

fn malformed(path: &std::path::Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} does not parse", path.display()),
    )
}

/// utime + stime (fields 14 and 15 of `proc(5)` stat) in clock ticks. The command name
/// (field 2) is in parentheses and may hold spaces and parentheses itself, so the fields are
/// counted from after its last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts with field 3 (state): utime is the 12th field of `rest`, stime the 13th.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` and `VmHWM` from `/proc/PID/status` (lines like `VmRSS:     1234 kB`).
fn parse_memory(status: &str) -> Option<Memory> {
    let field = |name: &str| {
        status.lines().find_map(|line| {
            let value = line.strip_prefix(name)?.strip_prefix(':')?;
            value.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    Some(Memory {
        rss_kib: field("VmRSS")?,
        peak_kib: field("VmHWM")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (flower (super) link) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    250 75 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn memory_lines_parse() {
        let status = "Name:\tpython\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n";
        assert_eq!(
            parse_memory(status),
            Some(Memory {
                rss_kib: 102_400,
                peak_kib: 204_800
            })
        );
        assert_eq!(parse_memory("Name:\tx\n"), None);
    }

    #[test]
    fn this_process_can_be_probed() {
        let probe = ServerProbe::new(std::process::id());
        probe.cpu_micros().unwrap();
        let memory = probe.memory().unwrap();
        assert!(memory.rss_kib > 0 && memory.peak_kib >= memory.rss_kib);
    }
}
