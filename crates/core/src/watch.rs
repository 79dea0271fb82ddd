//! Watch state: turns successive snapshots of a service's passing instances into `changed`/`healthy`/`unhealthy` events.

use crate::event::EventCode;

/// One passing instance as a watch compares them: where it is and how it is tagged.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
}

#[derive(Debug, Default, Clone)]
pub struct WatchState {
    last: Option<Vec<Endpoint>>,
}

impl WatchState {
    /// Records a snapshot; returns the events to publish, in order. The
    /// first snapshot always reports the current state; later ones report
    /// only a change of the set.
    pub fn update(&mut self, mut passing: Vec<Endpoint>) -> Vec<EventCode> {
        passing.sort();
        passing.dedup();
        let health = if passing.is_empty() {
            EventCode::Unhealthy
        } else {
            EventCode::Healthy
        };
        let events = match &self.last {
            None if passing.is_empty() => vec![health],
            None => vec![EventCode::Changed, health],
            Some(prev) if *prev == passing => Vec::new(),
            Some(_) => vec![EventCode::Changed, health],
        };
        self.last = Some(passing);
        events
    }

    pub fn current(&self) -> Option<&[Endpoint]> {
        self.last.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16, tags: &[&str]) -> Endpoint {
        Endpoint {
            address: "10.0.0.1".into(),
            port,
            tags: tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn changes_and_health() {
        use EventCode::*;
        let mut w = WatchState::default();
        assert_eq!(
            w.update(vec![]),
            vec![Unhealthy],
            "first state reported even when empty"
        );
        assert_eq!(w.update(vec![]), vec![]);
        assert_eq!(w.update(vec![ep(1, &[])]), vec![Changed, Healthy]);
        assert_eq!(w.update(vec![ep(1, &[])]), vec![]);
        assert_eq!(
            w.update(vec![ep(2, &[]), ep(1, &[])]),
            vec![Changed, Healthy]
        );
        assert_eq!(
            w.update(vec![ep(1, &[]), ep(2, &[])]),
            vec![],
            "order does not matter"
        );
        assert_eq!(
            w.update(vec![ep(1, &["x"]), ep(2, &[])]),
            vec![Changed, Healthy],
            "tags count"
        );
        assert_eq!(w.update(vec![]), vec![Changed, Unhealthy]);
        let mut fresh = WatchState::default();
        assert_eq!(fresh.update(vec![ep(1, &[])]), vec![Changed, Healthy]);
    }
}
