//! The budget of request-body bytes in flight, with a reserve only small bodies may use.
//!
//! A request reserves its `Content-Length` before its body is read (a chunked body reserves
//! each chunk as it arrives) and holds the reservation until the request ends, whatever the
//! outcome: the [`BodyPermit`] releases it on drop, also when the client hangs up and the
//! handler is dropped. Bodies are what a hostile client can make the ingress hold in memory
//! (a wrong signature is only known once the whole body is read), so this bounds memory
//! under slow-upload floods independently of the number of connections.

use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The shared budget. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    /// Bytes any body may use (`body_budget_bytes - small_body_reserve_bytes`).
    shared: Arc<Semaphore>,
    /// Bytes only bodies of at most `small_body_bytes` may use.
    reserve: Arc<Semaphore>,
    small_body_bytes: usize,
    in_flight_bytes: Gauge,
}

/// Bytes a request holds; released when dropped.
#[derive(Debug)]
pub struct BodyPermit {
    shared: Option<OwnedSemaphorePermit>,
    reserve: Option<OwnedSemaphorePermit>,
    bytes: usize,
    in_flight_bytes: Gauge,
}

impl BodyBudget {
    /// `total` bytes of which `reserve` are kept for bodies of at most `small_body_bytes`.
    /// `total` must fit in a `u32` and exceed `reserve` (the config validates both).
    pub fn new(
        total: usize,
        reserve: usize,
        small_body_bytes: usize,
        in_flight_bytes: Gauge,
    ) -> Self {
        Self {
            shared: Arc::new(Semaphore::new(total.saturating_sub(reserve))),
            reserve: Arc::new(Semaphore::new(reserve)),
            small_body_bytes,
            in_flight_bytes,
        }
    }

    /// A permit holding nothing yet.
    pub fn empty(&self) -> BodyPermit {
        BodyPermit {
            shared: None,
            reserve: None,
            bytes: 0,
            in_flight_bytes: self.in_flight_bytes.clone(),
        }
    }

    /// Grows `permit` by `more` bytes. `false` (and `permit` unchanged) when the budget
    /// cannot cover it.
    ///
    /// A body that stays small takes from the reserve first, then from the shared part. A
    /// body that grows past `small_body_bytes` must hold all its bytes in the shared part: what
    /// it held in the reserve is moved out, so large bodies never occupy the reserve.
    pub fn try_grow(&self, permit: &mut BodyPermit, more: usize) -> bool {
        let total = permit.bytes.saturating_add(more);
        let acquired = if total <= self.small_body_bytes {
            take(&self.reserve, more)
                .map(|p| (None, Some(p)))
                .or_else(|| take(&self.shared, more).map(|p| (Some(p), None)))
        } else {
            let held_in_reserve = permit.reserve.as_ref().map_or(0, |p| p.num_permits());
            // Move the reserve's share out: take it (plus `more`) from the shared part.
            take(&self.shared, more.saturating_add(held_in_reserve)).map(|p| {
                permit.reserve = None;
                (Some(p), None)
            })
        };
        let Some((shared, reserve)) = acquired else {
            return false;
        };
        merge(&mut permit.shared, shared);
        merge(&mut permit.reserve, reserve);
        permit.bytes = total;
        self.in_flight_bytes.inc_by(more as i64);
        true
    }

    /// A permit for `bytes`, or `None` when the budget cannot cover it now.
    pub fn try_reserve(&self, bytes: usize) -> Option<BodyPermit> {
        let mut permit = self.empty();
        self.try_grow(&mut permit, bytes).then_some(permit)
    }

    /// Bytes currently free: (shared part, reserve).
    pub fn available(&self) -> (usize, usize) {
        (
            self.shared.available_permits(),
            self.reserve.available_permits(),
        )
    }
}

impl BodyPermit {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for BodyPermit {
    fn drop(&mut self) {
        // The semaphore permits release themselves; only the gauge needs the count.
        self.in_flight_bytes.dec_by(self.bytes as i64);
    }
}

fn take(semaphore: &Arc<Semaphore>, bytes: usize) -> Option<OwnedSemaphorePermit> {
    let bytes = u32::try_from(bytes).ok()?;
    Arc::clone(semaphore).try_acquire_many_owned(bytes).ok()
}

fn merge(into: &mut Option<OwnedSemaphorePermit>, more: Option<OwnedSemaphorePermit>) {
    match (into.as_mut(), more) {
        (Some(held), Some(more)) => held.merge(more),
        (None, Some(more)) => *into = Some(more),
        (_, None) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget() -> (BodyBudget, Gauge) {
        let gauge = Gauge::default();
        // 100 shared + 20 reserved, small bodies up to 10.
        (BodyBudget::new(120, 20, 10, gauge.clone()), gauge)
    }

    #[test]
    fn large_bodies_only_use_the_shared_part() {
        let (budget, gauge) = budget();
        let a = budget.try_reserve(60).expect("fits");
        assert!(budget.try_reserve(60).is_none(), "only 40 shared left");
        assert_eq!(budget.available(), (40, 20));
        assert_eq!(gauge.get(), 60);
        drop(a);
        assert_eq!(budget.available(), (100, 20));
        assert_eq!(gauge.get(), 0);
        assert!(budget.try_reserve(100).is_some());
    }

    #[test]
    fn small_bodies_use_the_reserve_when_large_ones_hold_the_shared_part() {
        let (budget, _) = budget();
        let _large = budget.try_reserve(100).expect("fits");
        let small: Vec<_> = (0..2)
            .map(|_| budget.try_reserve(10).expect("reserve"))
            .collect();
        assert!(budget.try_reserve(1).is_none(), "everything held");
        drop(small);
        assert!(budget.try_reserve(10).is_some());
    }

    #[test]
    fn small_bodies_take_the_reserve_first_then_the_shared_part() {
        let (budget, _) = budget();
        let _a = budget.try_reserve(10).unwrap();
        let _b = budget.try_reserve(10).unwrap();
        assert_eq!(budget.available(), (100, 0));
        let _c = budget.try_reserve(10).unwrap();
        assert_eq!(budget.available(), (90, 0));
    }

    #[test]
    fn a_growing_body_leaves_the_reserve_when_it_stops_being_small() {
        let (budget, gauge) = budget();
        let mut permit = budget.empty();
        assert!(budget.try_grow(&mut permit, 8));
        assert_eq!(budget.available(), (100, 12));
        assert!(budget.try_grow(&mut permit, 7), "15 > 10: moves to shared");
        assert_eq!(budget.available(), (85, 20));
        assert_eq!(permit.bytes(), 15);
        assert_eq!(gauge.get(), 15);
        assert!(!budget.try_grow(&mut permit, 86), "over the shared part");
        assert_eq!(permit.bytes(), 15, "a refused growth changes nothing");
        drop(permit);
        assert_eq!(budget.available(), (100, 20));
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn a_growing_body_that_cannot_leave_the_reserve_is_refused() {
        let (budget, _) = budget();
        let _large = budget.try_reserve(95).unwrap();
        let mut permit = budget.empty();
        assert!(budget.try_grow(&mut permit, 8));
        assert!(!budget.try_grow(&mut permit, 3), "needs 11 shared, 5 left");
        assert_eq!(budget.available(), (5, 12));
    }

    #[test]
    fn empty_bodies_always_fit() {
        let (budget, _) = budget();
        let _all = budget.try_reserve(100).unwrap();
        let _rest = budget.try_reserve(10).unwrap();
        let _rest2 = budget.try_reserve(10).unwrap();
        assert!(budget.try_reserve(0).is_some());
    }
}
