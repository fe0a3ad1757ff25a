//! CPU time from `/proc`: a process's (every thread's) utime + stime, and a process tree's,
//! for the benchmarks that report server CPU per request.

use std::collections::HashMap;

use anyhow::Context;

/// CPU seconds (user + system, all threads) that process `pid` has used.
pub fn process_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    parse_stat(&text)
        .map(|(_, _, ticks)| ticks as f64 / clock_ticks_per_second() as f64)
        .with_context(|| format!("no utime/stime in {path}: {text:?}"))
}

/// `(pid, ppid, utime + stime in clock ticks)` from one `/proc/<pid>/stat` line. The command
/// name, in parentheses, may itself hold spaces and parentheses: the fields are counted from
/// the last `)`.
pub fn parse_stat(line: &str) -> Option<(u32, u32, u64)> {
    let (head, tail) = line.rsplit_once(')')?;
    let pid = head.split_once('(')?.0.trim().parse().ok()?;
    let fields: Vec<&str> = tail.split_whitespace().collect();
    // After the name: state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
    // cmajflt utime stime ...
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((pid, ppid, utime + stime))
}

/// The clock ticks of `root` and all its descendants among `procs` (`(pid, ppid, ticks)`).
pub fn tree_ticks(procs: &[(u32, u32, u64)], root: u32) -> u64 {
    let mut children: HashMap<u32, Vec<(u32, u64)>> = HashMap::new();
    let mut total = 0;
    for &(pid, ppid, ticks) in procs {
        if pid == root {
            total += ticks;
        } else {
            children.entry(ppid).or_default().push((pid, ticks));
        }
    }
    let mut stack = vec![root];
    while let Some(parent) = stack.pop() {
        for &(pid, ticks) in children.get(&parent).map_or(&[][..], Vec::as_slice) {
            total += ticks;
            stack.push(pid);
        }
    }
    total
}

/// CPU ticks the process tree under `root` has used so far (its live processes; children
/// that already exited are not counted).
pub fn process_tree_ticks(root: u32) -> u64 {
    let procs: Vec<(u32, u32, u64)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|line| parse_stat(&line))
        .collect();
    tree_ticks(&procs, root)
}

/// Clock ticks a second (`getconf CLK_TCK`; 100 on Linux when that fails).
pub fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn stat_fields_count_from_the_last_parenthesis() {
        // A command name with a space and a parenthesis of its own.
        let line = "4242 (tritonserver (x) y) S 4000 4242 4242 0 -1 4194560 100 0 0 0 \
                    1234 56 7 8 20 0 12 0 1000 100000 500";
        assert_eq!(parse_stat(line), Some((4242, 4000, 1290)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (init) S 0"), None);
    }

    #[test]
    fn tree_ticks_sum_the_root_and_its_descendants_only() {
        let procs = [
            (10, 1, 100),  // the server
            (11, 10, 20),  // a worker
            (12, 11, 3),   // the worker's child
            (13, 1, 1000), // an unrelated process
            (14, 13, 5),   // and its child
        ];
        assert_eq!(tree_ticks(&procs, 10), 123);
        assert_eq!(tree_ticks(&procs, 11), 23);
        assert_eq!(tree_ticks(&procs, 99), 0);
    }

    #[test]
    fn cpu_ticks_are_fields_14_and_15_even_with_odd_command_names() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
                    1234 56 0 0 20 0 9 0 100 1000 200";
        assert_eq!(parse_stat(stat).map(|(_, _, ticks)| ticks), Some(1234 + 56));
        assert_eq!(parse_stat("4242 (x) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn this_process_cpu_time_grows_with_work() {
        let me = std::process::id();
        let before = process_cpu_seconds(me).expect("cpu time");
        let started = Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let used = process_cpu_seconds(me).expect("cpu time") - before;
        assert!(used >= 0.1, "300 ms of spinning counted {used} s");
    }
}
