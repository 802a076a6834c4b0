//! Every metric of the ops service, registered in one place.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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
    /// Parked messages nobody retried or dropped yet, at the last poll
    /// ([`crate::parked::waiting`]).
    pub parked_waiting: Gauge,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "prx_ci_ops_calls",
            "Ops API calls, by method and outcome",
            calls.clone(),
        );
        let parked_waiting = Gauge::default();
        registry.register(
            "prx_ci_ops_parked_waiting",
            "Parked messages (PRX_PARKED) not retried or dropped yet, at the last poll",
            parked_waiting.clone(),
        );
        Self {
            calls,
            parked_waiting,
        }
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
