//! Subscription matching: which of a tenant's endpoints an event goes to.
//!
//! An endpoint with event types gets only those types; with channels, only events sharing one of them
//! (an endpoint without channels gets every event of its types, with or without channels).

use crate::model::EndpointRecord;

/// The part of an endpoint that decides what it receives, prepared for fast matching.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Sorted; empty means every type.
    event_types: Vec<String>,
    /// Sorted; empty means every channel.
    channels: Vec<String>,
}

impl Subscription {
    pub fn new(ep: &EndpointRecord) -> Subscription {
        Subscription::from_lists(ep.event_types.clone(), ep.channels.clone())
    }

    fn from_lists(mut event_types: Vec<String>, mut channels: Vec<String>) -> Subscription {
        event_types.sort_unstable();
        event_types.dedup();
        channels.sort_unstable();
        channels.dedup();
        Subscription { event_types, channels }
    }

    /// Does an event of this type, on these channels, go to the endpoint?
    pub fn matches(&self, event_type: &str, channels: &[String]) -> bool {
        let type_ok = self.event_types.is_empty()
            || self.event_types.binary_search_by(|t| t.as_str().cmp(event_type)).is_ok();
        let channel_ok =
            self.channels.is_empty() || channels.iter().any(|c| self.channels.binary_search(c).is_ok());
        type_ok && channel_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(types: &[&str], channels: &[&str]) -> Subscription {
        Subscription::from_lists(ch(types), ch(channels))
    }

    fn ch(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_empty_subscription_gets_everything() {
        assert!(sub(&[], &[]).matches("a.b", &[]));
        assert!(sub(&[], &[]).matches("a.b", &ch(&["client_1"])));
    }

    #[test]
    fn event_types_restrict_by_exact_name() {
        let s = sub(&["ticket.created"], &[]);
        assert!(s.matches("ticket.created", &[]));
        assert!(!s.matches("ticket.updated", &[]));
        assert!(!s.matches("ticket", &[]));
    }

    #[test]
    fn channels_need_one_shared_channel() {
        let s = sub(&[], &["client_1", "agent_2"]);
        assert!(s.matches("x", &ch(&["agent_2"])));
        assert!(s.matches("x", &ch(&["other", "client_1"])));
        assert!(!s.matches("x", &ch(&["client_3"])));
        assert!(!s.matches("x", &[]), "an event without channels does not reach a channel-bound endpoint");
    }
}
