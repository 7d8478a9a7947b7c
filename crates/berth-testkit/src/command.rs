//! The one way tests build a `berth` command: no `BERTH_*` variable of the test's own
//! environment reaches the child, so a developer's shell (or another test's settings) cannot
//! change what a test runs.

use std::ffi::OsStr;
use std::process::Command;

/// A command running the `berth` binary at `bin` with every `BERTH_*` variable of this process
/// removed from its environment. Tests add back exactly the ones they mean to pass.
pub fn berth_command(bin: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new(bin);
    for (name, _) in std::env::vars_os() {
        if name.as_encoded_bytes().starts_with(b"BERTH_") {
            c.env_remove(name);
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_berth_variable_reaches_the_child() {
        std::env::set_var("BERTH_TESTKIT_PROBE", "leaked");
        let out = berth_command("env").output().expect("run env");
        std::env::remove_var("BERTH_TESTKIT_PROBE");
        let env = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success());
        assert!(!env.contains("BERTH_"), "a BERTH_ variable reached the child: {env}");
        assert!(env.contains("PATH="), "the rest of the environment is kept: {env}");
    }
}
