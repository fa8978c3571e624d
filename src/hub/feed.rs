//! The public feeds (market, news, alerts) and which one an event kind belongs to.

use crate::market::EventKind;

/// The public feeds, each with its own sequence and replay window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feed {
    Market,
    News,
    Alerts,
}

impl Feed {
    pub const ALL: [Feed; 3] = [Feed::Market, Feed::News, Feed::Alerts];

    pub(super) fn index(self) -> usize {
        match self {
            Feed::Market => 0,
            Feed::News => 1,
            Feed::Alerts => 2,
        }
    }

    pub fn of(kind: EventKind) -> Feed {
        match kind {
            EventKind::Trade | EventKind::Quote | EventKind::Bar | EventKind::Status => {
                Feed::Market
            }
            EventKind::News => Feed::News,
            EventKind::Alert => Feed::Alerts,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Feed::Market => "market",
            Feed::News => "news",
            Feed::Alerts => "alerts",
        }
    }
}
