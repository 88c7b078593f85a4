//! Tracks the minimum watermark over several inputs.

use crate::message::Watermark;

/// The watermark of an operator with several inputs: the minimum over the inputs that are not
/// idle. An idle input (caught up, nothing to read) does not hold the others back; when every
/// input is idle, everything available has been read and the watermark is the largest event
/// time any input reached. Until every input has reported once, there is no watermark. The
/// combined watermark never goes backwards.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WatermarkTracker {
    /// Per input: last event time reported, and whether it is idle now.
    inputs: Vec<Option<(Option<i64>, bool)>>,
    current: Option<i64>,
}

impl WatermarkTracker {
    /// A tracker over `n` inputs.
    pub fn new(n: usize) -> Self {
        Self { inputs: vec![None; n], current: None }
    }

    /// Records input `i`'s watermark; returns the combined watermark if it advanced.
    pub fn update(&mut self, i: usize, wm: Watermark) -> Option<Watermark> {
        if let Some(slot) = self.inputs.get_mut(i) {
            let last = slot.and_then(|(t, _)| t);
            *slot = Some(match wm {
                Watermark::EventTime(t) => (Some(last.map_or(t, |l| l.max(t))), false),
                Watermark::Idle => (last, true),
            });
        }
        if self.inputs.iter().any(Option::is_none) {
            return None;
        }
        let states = self.inputs.iter().flatten();
        let active_min = states.clone().filter(|(_, idle)| !idle).map(|(t, _)| t.unwrap_or(i64::MIN)).min();
        let combined = match active_min {
            Some(t) => t,
            None => states.filter_map(|(t, _)| *t).max()?,
        };
        if combined == i64::MIN || self.current.is_some_and(|c| combined <= c) {
            return None;
        }
        self.current = Some(combined);
        Some(Watermark::EventTime(combined))
    }

    /// How far the combined watermark may follow input `i` alone: the minimum over the other
    /// inputs that are not idle (`i64::MAX` if all of them are), or `i64::MIN` while some input
    /// has not reported yet (no watermark at all).
    pub fn bound_for(&self, i: usize) -> i64 {
        let mut bound = i64::MAX;
        for (j, slot) in self.inputs.iter().enumerate() {
            if j == i {
                continue;
            }
            match slot {
                None => return i64::MIN,
                Some((_, true)) => {}
                Some((t, false)) => bound = bound.min(t.unwrap_or(i64::MIN)),
            }
        }
        bound
    }

    /// After a restart: every input counts as active again (keeping its last event time) until
    /// it reports otherwise. An input idle at the checkpoint may have new data now; until it
    /// has read it, it must hold the watermark back, or its records would count as late.
    pub fn resume(&mut self) {
        for (_, idle) in self.inputs.iter_mut().flatten() {
            *idle = false;
        }
    }

    /// The current combined watermark.
    pub fn current(&self) -> Option<Watermark> {
        self.current.map(Watermark::EventTime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_over_active_inputs() {
        let mut t = WatermarkTracker::new(2);
        assert_eq!(t.update(0, Watermark::EventTime(10)), None, "input 1 has not reported");
        assert_eq!(t.update(1, Watermark::EventTime(5)), Some(Watermark::EventTime(5)));
        assert_eq!(t.update(1, Watermark::EventTime(7)), Some(Watermark::EventTime(7)));
        assert_eq!(t.update(0, Watermark::EventTime(20)), None, "min is still input 1");
        assert_eq!(t.update(1, Watermark::Idle), Some(Watermark::EventTime(20)), "idle input 1 no longer holds back");
        assert_eq!(t.update(1, Watermark::EventTime(3)), None, "never goes backwards");
        assert_eq!(t.current(), Some(Watermark::EventTime(20)));
    }

    #[test]
    fn resumed_inputs_hold_back_until_they_report() {
        let mut t = WatermarkTracker::new(2);
        t.update(0, Watermark::EventTime(100));
        t.update(1, Watermark::EventTime(50));
        t.update(1, Watermark::Idle);
        assert_eq!(t.current(), Some(Watermark::EventTime(100)));
        let mut restored: WatermarkTracker = serde_json::from_value(serde_json::to_value(&t).unwrap()).unwrap();
        restored.resume();
        assert_eq!(restored.update(0, Watermark::EventTime(500)), None, "input 1 may have new data at 50..");
        assert_eq!(restored.update(1, Watermark::EventTime(300)), Some(Watermark::EventTime(300)));
    }

    #[test]
    fn bound_is_the_minimum_over_other_active_inputs() {
        let mut t = WatermarkTracker::new(3);
        t.update(0, Watermark::EventTime(10));
        assert_eq!(t.bound_for(0), i64::MIN, "inputs 1 and 2 have not reported");
        t.update(1, Watermark::EventTime(30));
        t.update(2, Watermark::EventTime(20));
        assert_eq!(t.bound_for(0), 20);
        t.update(2, Watermark::Idle);
        assert_eq!(t.bound_for(0), 30);
        t.update(1, Watermark::Idle);
        assert_eq!(t.bound_for(0), i64::MAX, "every other input is idle");
    }

    #[test]
    fn all_idle_means_everything_was_read() {
        let mut t = WatermarkTracker::new(2);
        t.update(0, Watermark::EventTime(61_000));
        assert_eq!(t.update(1, Watermark::EventTime(2_000)), Some(Watermark::EventTime(2_000)));
        assert_eq!(t.update(0, Watermark::Idle), None, "input 1 is still active at 2000");
        assert_eq!(t.update(1, Watermark::Idle), Some(Watermark::EventTime(61_000)));
        let mut never = WatermarkTracker::new(1);
        assert_eq!(never.update(0, Watermark::Idle), None, "no event time seen yet");
    }
}
