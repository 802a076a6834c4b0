//! CPU time of a process from its `/proc/<pid>/stat` line (pure): what each service spent per
//! push, to tell what limits the rate.

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
pub const TICKS_PER_SECOND: u64 = 100;

/// User plus system CPU time, in clock ticks, of a `/proc/<pid>/stat` line.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces: count after its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_plus_system_ticks() {
        let stat = "4242 (prx-ci ingress) S 1 4242 4242 0 -1 4194560 2017 0 0 0 731 102 0 0 20 0 9 0 123 0 0";
        assert_eq!(cpu_ticks(stat), Some(833));
        assert_eq!(cpu_ticks("garbage"), None);
    }
}
