//! Every metric of the ops service, registered in one place.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Labels of an ops call.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: String,
    /// `ok` or the gRPC code name.
    outcome: String,
}

/// Metrics of the ops service.
#[derive(Debug, Clone)]
pub struct Metrics {
    calls: Family<CallLabels, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "prx_ci_ops_calls",
            "Ops API calls, by method and outcome",
            calls.clone(),
        );
        Self { calls }
    }

    /// Counts one API call of `method` that ended with `outcome` (`ok` or a gRPC code name).
    pub fn call(&self, method: &str, outcome: String) {
        self.calls
            .get_or_create(&CallLabels {
                method: method.to_owned(),
                outcome,
            })
            .inc();
    }
}
