//! What a subscription wants: a symbol set (a bitmap sized to the highest id asked for) and a
//! mask of event kinds. Statuses are always delivered on the market feed; untagged news goes
//! to everyone.

use super::entry::Entry;
use crate::market::{EventKind, SymbolId, SymbolUniverse};

/// Which symbols a subscription wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SymbolFilter {
    All,
    Some(Box<[u64]>),
}

impl SymbolFilter {
    pub fn from_ids(ids: impl IntoIterator<Item = SymbolId>) -> SymbolFilter {
        // Sized to the highest id asked for, not to MAX_SYMBOLS: every subscription holds one
        // of these, and a 512-byte bitmap per connection was a tenth of its memory.
        let mut bits: Vec<u64> = Vec::new();
        for id in ids {
            let word = usize::from(id) / 64;
            if word >= bits.len() {
                // Exact, so `into_boxed_slice` below has nothing to shrink (no reallocation).
                bits.reserve_exact(word + 1 - bits.len());
                bits.resize(word + 1, 0);
            }
            bits[word] |= 1 << (id % 64);
        }
        SymbolFilter::Some(bits.into_boxed_slice())
    }

    pub fn contains(&self, id: SymbolId) -> bool {
        match self {
            SymbolFilter::All => true,
            SymbolFilter::Some(bits) => bits
                .get(usize::from(id) / 64)
                .is_some_and(|word| word & (1 << (id % 64)) != 0),
        }
    }

    pub fn ids(&self, universe: &SymbolUniverse) -> Vec<SymbolId> {
        (0..universe.len() as SymbolId)
            .filter(|id| self.contains(*id))
            .collect()
    }
}

/// What a subscriber receives from a feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub symbols: SymbolFilter,
    /// Bit mask of [`EventKind::bit`]; statuses are always delivered on the market feed.
    pub kinds: u8,
}

impl Filter {
    pub fn everything() -> Filter {
        Filter {
            symbols: SymbolFilter::All,
            kinds: u8::MAX,
        }
    }

    pub fn matches(&self, entry: &Entry) -> bool {
        if entry.kind != EventKind::Status && self.kinds & entry.kind.bit() == 0 {
            return false;
        }
        match (&self.symbols, entry.symbol) {
            (SymbolFilter::All, _) => true,
            (filter, Some(id)) => filter.contains(id),
            (filter, None) => {
                // News with no tags goes to everyone; tagged news to subscribers of any tag.
                entry.tagged.is_empty() || entry.tagged.iter().any(|id| filter.contains(*id))
            }
        }
    }
}
