//! Watch state: turns successive snapshots of a service's passing instances into `changed`/`healthy`/`unhealthy` events.

use crate::event::EventCode;

/// One passing instance as a watch compares them: which instance it is
/// (as ContainerPilot compares them, a replaced instance at the same
/// address and port is a change), where it is and how it is tagged.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub id: String,
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
    pub fn update(&mut self, passing: Vec<Endpoint>) -> Vec<EventCode> {
        let (set, events) = self.compare(passing);
        self.last = Some(set);
        events
    }

    /// What [`update`](Self::update) would publish, without recording the
    /// snapshot: the caller records it (with [`record`](Self::record)) only
    /// once the handlers' instances file holds it, so a handler never runs
    /// on the previous list.
    pub fn compare(&self, mut passing: Vec<Endpoint>) -> (Vec<Endpoint>, Vec<EventCode>) {
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
        (passing, events)
    }

    /// Records a snapshot returned by [`compare`](Self::compare).
    pub fn record(&mut self, set: Vec<Endpoint>) {
        self.last = Some(set);
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
            id: format!("i-{port}"),
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
        // A replaced instance at the same address and port is a change.
        let replaced = Endpoint {
            id: "i-1-new".into(),
            ..ep(1, &[])
        };
        assert_eq!(fresh.update(vec![replaced]), vec![Changed, Healthy]);
    }

    #[test]
    fn compare_does_not_record() {
        let mut w = WatchState::default();
        let (set, events) = w.compare(vec![ep(1, &[])]);
        assert_eq!(events, vec![EventCode::Changed, EventCode::Healthy]);
        assert_eq!(
            w.current(),
            None,
            "nothing recorded until the caller says so"
        );
        let (_, again) = w.compare(vec![ep(1, &[])]);
        assert_eq!(again, events, "an unrecorded change is reported again");
        w.record(set);
        assert_eq!(w.compare(vec![ep(1, &[])]).1, vec![]);
    }
}
