//! The fault suite's figures: each test appends one line to a report file that `.ci/run` prints after
//! the tests, so that a passing run still shows what it measured (libtest hides a passing test's output).
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;

/// Where the lines go: `HOOKD_FAULT_REPORT` if set, else `fault-report.txt` in Cargo's temp dir for
/// integration tests (`target/tmp`).
pub fn path() -> PathBuf {
    std::env::var_os("HOOKD_FAULT_REPORT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fault-report.txt"))
}

/// Records one fault's figures as `fault: key=value key=value …`, on stderr and in the report file.
pub fn report(fault: &str, figures: &[(&str, String)]) {
    let line = std::iter::once(format!("{fault}:"))
        .chain(figures.iter().map(|(k, v)| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(" ");
    eprintln!("{line}");
    // A report that cannot be written is not a failed fault: the assertions are the test.
    if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path()) {
        let _ = writeln!(file, "{line}");
    }
}

/// Whether a test that needs `what` (root, a Debian package) must run here: in CI (`CI` set) it must,
/// and a missing prerequisite fails the test; on a developer's machine it is skipped with a message.
/// Returns `true` when the test should go on.
pub fn required(available: bool, what: &str) -> bool {
    if available {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "the fault suite needs {what} in CI (.ci/run installs it)");
    eprintln!("skipped: this fault test needs {what}");
    false
}

/// Whether this process runs as root (needed to mount a small filesystem).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // `/proc/self` belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}
