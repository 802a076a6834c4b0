//! Test-only fault points: steps at which the dispatcher process aborts itself, so a test can
//! crash the real binary at an exact place (as `kill -9` would, with no unwinding, no ack and
//! no KV write). Off by default; set only through the process environment ([`FAULT_ENV`]),
//! never through configuration files (it is no field of any configuration section).

/// The environment variable naming the fault point, e.g. `PRX_CI_FAULT=dispatcher.after_start`.
/// Test-only: never set it in production.
pub const FAULT_ENV: &str = "PRX_CI_FAULT";

/// Where the dispatcher aborts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FaultPoint {
    /// Nowhere (the default).
    #[default]
    Off,
    /// `dispatcher.after_start`: right after the backend answered `StartBuild`, before the
    /// started build is recorded or announced.
    AfterStart,
}

impl FaultPoint {
    /// The fault point a value of [`FAULT_ENV`] names; unset or empty is [`FaultPoint::Off`]. An
    /// unknown name is refused (a typo must not silently test nothing).
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value.map(str::trim) {
            None | Some("") => Ok(Self::Off),
            Some("dispatcher.after_start") => Ok(Self::AfterStart),
            Some(other) => Err(format!(
                "{FAULT_ENV}={other:?} names no dispatcher fault point (known: \
                 dispatcher.after_start)"
            )),
        }
    }

    /// The fault point of this process's environment.
    pub fn from_env() -> anyhow::Result<Self> {
        let value = std::env::var(FAULT_ENV).ok();
        Self::parse(value.as_deref()).map_err(|reason| anyhow::anyhow!(reason))
    }

    /// Aborts the process when `point` is the configured fault point.
    pub fn reached(self, point: FaultPoint) {
        if self != Self::Off && self == point {
            eprintln!("{FAULT_ENV}: aborting at fault point {point:?} (test-only)");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_unless_named_exactly() {
        assert_eq!(FaultPoint::parse(None), Ok(FaultPoint::Off));
        assert_eq!(FaultPoint::parse(Some(" ")), Ok(FaultPoint::Off));
        assert_eq!(
            FaultPoint::parse(Some("dispatcher.after_start")),
            Ok(FaultPoint::AfterStart)
        );
        let err = FaultPoint::parse(Some("dispatcher.after_strat")).unwrap_err();
        assert!(err.contains("names no dispatcher fault point"), "{err}");
        // Off never aborts, whatever is reached.
        FaultPoint::Off.reached(FaultPoint::AfterStart);
        FaultPoint::AfterStart.reached(FaultPoint::Off);
    }
}
