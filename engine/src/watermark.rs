//! Tracks the minimum watermark over several inputs.

use crate::message::Watermark;

/// The watermark of an operator with several inputs: the minimum over the inputs' watermarks,
/// ignoring idle inputs. Until every input has reported, there is no watermark.
#[derive(Debug, Clone)]
pub struct WatermarkTracker {
    inputs: Vec<Option<Watermark>>,
    current: Option<Watermark>,
}

impl WatermarkTracker {
    /// A tracker over `n` inputs.
    pub fn new(n: usize) -> Self {
        Self { inputs: vec![None; n], current: None }
    }

    /// Records input `i`'s watermark; returns the combined watermark if it advanced.
    pub fn update(&mut self, i: usize, wm: Watermark) -> Option<Watermark> {
        if let Some(slot) = self.inputs.get_mut(i) {
            *slot = Some(wm);
        }
        if self.inputs.iter().any(Option::is_none) {
            return None;
        }
        let active = self.inputs.iter().flatten().filter_map(|w| match w {
            Watermark::EventTime(t) => Some(*t),
            Watermark::Idle => None,
        });
        let combined = match active.min() {
            Some(t) => Watermark::EventTime(t),
            None => Watermark::Idle,
        };
        let advanced = match (self.current, combined) {
            (None, _) => true,
            (Some(Watermark::EventTime(a)), Watermark::EventTime(b)) => b > a,
            (Some(Watermark::Idle), Watermark::EventTime(_)) => true,
            (Some(Watermark::EventTime(_)), Watermark::Idle) | (Some(Watermark::Idle), Watermark::Idle) => false,
        };
        if advanced {
            // Event time never goes backwards, even when an idle input comes back behind.
            if let (Some(Watermark::EventTime(a)), Watermark::EventTime(b)) = (self.current, combined) {
                if b < a {
                    return None;
                }
            }
            self.current = Some(combined);
            Some(combined)
        } else {
            None
        }
    }

    /// The current combined watermark.
    pub fn current(&self) -> Option<Watermark> {
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_over_inputs_ignoring_idle() {
        let mut t = WatermarkTracker::new(2);
        assert_eq!(t.update(0, Watermark::EventTime(10)), None);
        assert_eq!(t.update(1, Watermark::EventTime(5)), Some(Watermark::EventTime(5)));
        assert_eq!(t.update(1, Watermark::EventTime(7)), Some(Watermark::EventTime(7)));
        assert_eq!(t.update(0, Watermark::EventTime(20)), None, "min is still input 1");
        assert_eq!(t.update(1, Watermark::Idle), Some(Watermark::EventTime(20)));
        assert_eq!(t.update(0, Watermark::Idle), None);
        assert_eq!(t.current(), Some(Watermark::EventTime(20)));
        assert_eq!(t.update(1, Watermark::EventTime(3)), None, "never goes backwards");
    }
}
