//! The realistic market case (`--mode market`): a universe of symbols (`S000`, `S001`, …), each
//! subscriber following a few random ones (a share of them everything, `*`), trades published
//! in batches through the publish API with a skewed symbol mix, as at a busy market open.
//! Optionally every subscription asks for `max_rate` (at most N updates per symbol per second).
//!
//! A trade's id `i` is its send time in nanoseconds with the symbol's index in the low
//! [`SYMBOL_BITS`] bits, so the subscriber side needs no JSON parsing to know which symbol a
//! delivery belongs to, and the latency error is under a microsecond. Loss is counted per
//! symbol a subscriber follows against what the server accepted for that symbol; with
//! `max_rate` fewer deliveries are the point (conflation), so what must hold instead is that
//! the newest trade of every followed symbol arrives (none is left stale).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::client::now_ns;
use crate::http::Url;
use crate::publish::PostConnection;
use crate::stats::SubscriberResult;

/// Low bits of a trade id that carry the symbol's index.
pub(crate) const SYMBOL_BITS: u32 = 10;
/// Largest universe the id encoding allows.
pub(crate) const MAX_SYMBOLS: usize = 1 << SYMBOL_BITS;
const SYMBOL_MASK: u64 = (1 << SYMBOL_BITS) - 1;

/// The index of the symbol a trade id belongs to.
pub(crate) fn symbol_of(id: u64) -> usize {
    (id & SYMBOL_MASK) as usize
}

/// The name of symbol `index` in the universe.
pub(crate) fn symbol_name(index: usize) -> String {
    format!("S{index:03}")
}

/// The comma-separated universe, for `TICKGATE__MARKET__SYMBOLS`.
pub(crate) fn universe_list(symbols: usize) -> String {
    (0..symbols).map(symbol_name).collect::<Vec<_>>().join(",")
}

/// SplitMix64: small, seedable and good enough to pick symbols.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_f64() * n as f64) as usize % n.max(1)
    }
}

/// What one subscriber follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Follow {
    All,
    /// Distinct symbol indexes, ascending.
    Symbols(Vec<usize>),
}

impl Follow {
    pub(crate) fn contains(&self, symbol: usize) -> bool {
        match self {
            Follow::All => true,
            Follow::Symbols(symbols) => symbols.binary_search(&symbol).is_ok(),
        }
    }
}

/// The shape of a market run, shared by every subscriber and the publisher.
#[derive(Debug, Clone)]
pub(crate) struct MarketPlan {
    pub(crate) symbols: usize,
    /// Symbols each ordinary subscriber follows.
    pub(crate) per_subscriber: usize,
    /// Share of subscribers that follow everything (`*`).
    pub(crate) all_fraction: f64,
    /// Zipf exponent of the publisher's symbol mix (0: uniform; 1: the busiest symbol gets
    /// about 15% of 500 symbols' trades, as index heavyweights do at the open).
    pub(crate) skew: f64,
    pub(crate) seed: u64,
    /// `max_rate` asked for on every subscription.
    pub(crate) max_rate: Option<u32>,
}

impl MarketPlan {
    /// What subscriber `index` follows: the same for the same seed, whatever the run order.
    /// Every `1 / all_fraction`-th subscriber follows everything.
    pub(crate) fn follow(&self, index: usize) -> Follow {
        if self.all_fraction > 0.0 {
            let every = (1.0 / self.all_fraction).round().max(1.0) as usize;
            if index % every == every - 1 {
                return Follow::All;
            }
        }
        let want = self.per_subscriber.min(self.symbols);
        let mut rng = Rng::new(self.seed ^ (index as u64).wrapping_mul(0xA24B_AED4_963E_E407));
        let mut chosen = Vec::with_capacity(want);
        while chosen.len() < want {
            let symbol = rng.below(self.symbols);
            if !chosen.contains(&symbol) {
                chosen.push(symbol);
            }
        }
        chosen.sort_unstable();
        Follow::Symbols(chosen)
    }

    fn names(follow: &Follow) -> Vec<String> {
        match follow {
            Follow::All => vec!["*".to_owned()],
            Follow::Symbols(symbols) => symbols.iter().map(|s| symbol_name(*s)).collect(),
        }
    }

    /// The SSE subscription of `follow` as query parameters (tickgate's market stream).
    pub(crate) fn sse_query(&self, follow: &Follow) -> String {
        let mut query = format!("symbols={}&types=trades", Self::names(follow).join(","));
        if let Some(rate) = self.max_rate {
            query.push_str(&format!("&max_rate={rate}"));
        }
        query
    }

    /// The WebSocket subscribe action of `follow` (tickgate's protocol).
    pub(crate) fn ws_message(&self, follow: &Follow) -> String {
        let mut action = serde_json::json!({
            "action": "subscribe",
            "trades": Self::names(follow),
        });
        if let (Some(rate), Some(object)) = (self.max_rate, action.as_object_mut()) {
            object.insert("max_rate".into(), rate.into());
        }
        action.to_string()
    }
}

/// Picks symbols with Zipf weights: `P(k) ∝ 1 / (k + 1)^skew`.
#[derive(Debug, Clone)]
pub(crate) struct SymbolMix {
    cumulative: Vec<f64>,
}

impl SymbolMix {
    pub(crate) fn new(symbols: usize, skew: f64) -> SymbolMix {
        let mut total = 0.0;
        let cumulative = (0..symbols.max(1))
            .map(|k| {
                total += 1.0 / ((k + 1) as f64).powf(skew);
                total
            })
            .collect::<Vec<_>>();
        SymbolMix {
            cumulative: cumulative.iter().map(|c| c / total).collect(),
        }
    }

    pub(crate) fn pick(&self, rng: &mut Rng) -> usize {
        let x = rng.next_f64();
        self.cumulative
            .partition_point(|c| *c <= x)
            .min(self.cumulative.len() - 1)
    }
}

/// What the batch publisher did, per symbol.
#[derive(Debug, Clone, Default)]
pub(crate) struct MarketPublished {
    /// Trades the server accepted, per symbol.
    pub(crate) accepted: Vec<u64>,
    /// The id of the last accepted trade per symbol (0: none).
    pub(crate) last_id: Vec<u64>,
    pub(crate) posts: u64,
    pub(crate) failed: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) elapsed: Duration,
}

impl MarketPublished {
    pub(crate) fn total_accepted(&self) -> u64 {
        self.accepted.iter().sum()
    }

    /// Deliveries `follow` should get without `max_rate`.
    pub(crate) fn expected(&self, follow: &Follow) -> u64 {
        match follow {
            Follow::All => self.total_accepted(),
            Follow::Symbols(symbols) => symbols
                .iter()
                .map(|s| self.accepted.get(*s).copied().unwrap_or(0))
                .sum(),
        }
    }
}

/// Publishes `rate` trades per second in POSTs of `batch` trades over one keep-alive
/// connection. A POST that comes back late is followed at once by the ones it held up, so the
/// average rate holds while the server keeps up and the shortfall shows when it does not.
pub(crate) struct BatchPublisher {
    connection: PostConnection,
    plan: MarketPlan,
    mix: SymbolMix,
    rng: Rng,
    /// The last id used per symbol: ids of one symbol strictly rise.
    last_id: Vec<u64>,
    sequence: u64,
}

impl BatchPublisher {
    pub(crate) fn new(
        url: Url,
        address: SocketAddr,
        token: Option<String>,
        plan: MarketPlan,
    ) -> BatchPublisher {
        BatchPublisher {
            connection: PostConnection::new(url, address, token),
            mix: SymbolMix::new(plan.symbols, plan.skew),
            rng: Rng::new(plan.seed.wrapping_add(1)),
            last_id: vec![0; plan.symbols],
            plan,
            sequence: 0,
        }
    }

    /// The next id of `symbol` sent at `sent_ns`.
    fn next_id(&mut self, symbol: usize, sent_ns: u64) -> u64 {
        let mut id = (sent_ns & !SYMBOL_MASK) | symbol as u64;
        if id <= self.last_id[symbol] {
            id = self.last_id[symbol] + (1 << SYMBOL_BITS);
        }
        self.last_id[symbol] = id;
        id
    }

    /// One batch body and the (symbol, id) of each of its trades.
    pub(crate) fn batch_body(&mut self, batch: usize) -> (String, Vec<(usize, u64)>) {
        let sent = now_ns();
        let mut body = String::with_capacity(batch * 150 + 2);
        let mut trades = Vec::with_capacity(batch);
        body.push('[');
        for k in 0..batch {
            let symbol = self.mix.pick(&mut self.rng);
            let id = self.next_id(symbol, sent);
            self.sequence += 1;
            if k > 0 {
                body.push(',');
            }
            body.push_str(&crate::publish::Publisher::body(
                &symbol_name(symbol),
                self.sequence,
                id,
            ));
            trades.push((symbol, id));
        }
        body.push(']');
        (body, trades)
    }

    pub(crate) async fn run(
        &mut self,
        rate: f64,
        batch: usize,
        duration: Duration,
    ) -> MarketPublished {
        let mut report = MarketPublished {
            accepted: vec![0; self.plan.symbols],
            last_id: vec![0; self.plan.symbols],
            ..MarketPublished::default()
        };
        let batch = batch.max(1);
        let posts = (rate * duration.as_secs_f64() / batch as f64).round() as u64;
        let period = Duration::from_secs_f64(batch as f64 / rate.max(0.001));
        let started = Instant::now();
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for _ in 0..posts {
            ticker.tick().await;
            let (body, trades) = self.batch_body(batch);
            report.posts += 1;
            match self.post(&body).await {
                Ok((rejected, reason)) => {
                    for (index, (symbol, id)) in trades.into_iter().enumerate() {
                        if rejected.binary_search(&index).is_err() {
                            report.accepted[symbol] += 1;
                            report.last_id[symbol] = report.last_id[symbol].max(id);
                        }
                    }
                    if !rejected.is_empty() {
                        report.failed += rejected.len() as u64;
                        report.first_error.get_or_insert_with(|| {
                            format!("{} trades refused, the first: {reason}", rejected.len())
                        });
                    }
                }
                Err(error) => {
                    report.failed += batch as u64;
                    report.first_error.get_or_insert(error);
                    self.connection.reset();
                }
            }
        }
        report.elapsed = started.elapsed();
        report
    }

    /// POSTs one batch; the indexes of refused trades, ascending, and the first refusal's
    /// message.
    async fn post(&mut self, body: &str) -> Result<(Vec<usize>, String), String> {
        let (status, reply) = self.connection.post(body).await?;
        refused_indexes(status, &reply)
    }
}

/// The refused items of a publish reply (`{"accepted":N,"rejected":[{"index":I,...}]}`)
/// and the first one's message; an error for a status that refused the whole request.
pub(crate) fn refused_indexes(status: u16, reply: &[u8]) -> Result<(Vec<usize>, String), String> {
    let text = || {
        String::from_utf8_lossy(reply)
            .chars()
            .take(300)
            .collect::<String>()
    };
    // 422 with a body: some items were refused (all of them, when none was accepted).
    if !(200..300).contains(&status) && status != 422 {
        return Err(format!("publish answered {status}: {}", text()));
    }
    let value: serde_json::Value = serde_json::from_slice(reply).map_err(|_| {
        format!(
            "publish answered {status} with a body that is not JSON: {}",
            text()
        )
    })?;
    let mut refused: Vec<usize> = value["rejected"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item["index"].as_u64())
                .map(|index| index as usize)
                .collect()
        })
        .unwrap_or_default();
    if status == 422 && refused.is_empty() {
        return Err(format!("publish answered 422: {}", text()));
    }
    refused.sort_unstable();
    let reason = value["rejected"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Ok((refused, reason))
}

/// The market figures of a run's report.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct MarketFigures {
    pub(crate) universe: usize,
    pub(crate) follow: usize,
    pub(crate) all_fraction: f64,
    pub(crate) batch: usize,
    pub(crate) skew: f64,
    pub(crate) max_rate: Option<u32>,
    pub(crate) posts: u64,
    /// Accepted trades per second over the publishing time (below `rate` when the server
    /// held the publisher up).
    pub(crate) published_per_second: f64,
    /// Deliveries the reading subscribers would get without `max_rate`.
    pub(crate) expected_deliveries: u64,
    /// Deliveries missing on followed symbols: loss, or with `max_rate` conflation.
    pub(crate) missing: u64,
    /// (subscriber, symbol) pairs whose newest trade never arrived.
    pub(crate) stale: u64,
    /// Deliveries of symbols a subscriber did not follow.
    pub(crate) unwanted: u64,
}

/// Loss and staleness of a market run over the subscribers that kept reading.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct MarketSummary {
    /// Deliveries the subscribers would get without `max_rate`.
    pub(crate) expected: u64,
    /// Deliveries missing on followed symbols (with `max_rate`: conflated by design).
    pub(crate) missing: u64,
    /// Deliveries beyond what was published for a symbol.
    pub(crate) duplicated: u64,
    /// Deliveries of symbols the subscriber did not follow.
    pub(crate) unwanted: u64,
    /// (subscriber, followed symbol) pairs whose newest trade never arrived.
    pub(crate) stale: u64,
    pub(crate) subscribers_with_loss: usize,
}

/// Compares what each reading subscriber got per symbol with what was published.
pub(crate) fn summarize_market(
    results: &[SubscriberResult],
    plan: &MarketPlan,
    published: &MarketPublished,
) -> MarketSummary {
    let mut summary = MarketSummary::default();
    for result in results.iter().filter(|r| !r.slow) {
        let follow = plan.follow(result.index);
        summary.expected += published.expected(&follow);
        let mut lost_here = false;
        for symbol in 0..plan.symbols {
            let got = result
                .per_symbol
                .get(symbol)
                .map_or(0, |s| u64::from(s.count));
            let last = result.per_symbol.get(symbol).map_or(0, |s| s.last_id);
            if !follow.contains(symbol) {
                summary.unwanted += got;
                continue;
            }
            let sent = published.accepted[symbol];
            summary.missing += sent.saturating_sub(got);
            summary.duplicated += got.saturating_sub(sent);
            if published.last_id[symbol] != 0 && last != published.last_id[symbol] {
                summary.stale += 1;
                lost_here = true;
            }
            if plan.max_rate.is_none() && got < sent {
                lost_here = true;
            }
        }
        summary.subscribers_with_loss += usize::from(lost_here);
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::SymbolSeen;

    fn plan(max_rate: Option<u32>) -> MarketPlan {
        MarketPlan {
            symbols: 500,
            per_subscriber: 20,
            all_fraction: 0.05,
            skew: 1.0,
            seed: 7,
            max_rate,
        }
    }

    #[test]
    fn every_twentieth_subscriber_follows_everything_and_the_rest_twenty_distinct_symbols() {
        let plan = plan(None);
        let follows: Vec<Follow> = (0..1000).map(|i| plan.follow(i)).collect();
        let all = follows.iter().filter(|f| **f == Follow::All).count();
        assert_eq!(all, 50);
        for follow in &follows {
            if let Follow::Symbols(symbols) = follow {
                assert_eq!(symbols.len(), 20);
                assert!(symbols.windows(2).all(|w| w[0] < w[1]), "distinct, sorted");
                assert!(symbols.iter().all(|s| *s < 500));
            }
        }
        assert_eq!(plan.follow(3), plan.follow(3), "deterministic per index");
        assert_ne!(plan.follow(3), plan.follow(4));
        // Over a thousand subscribers nearly every symbol has a follower.
        let followed: std::collections::BTreeSet<usize> = follows
            .iter()
            .filter_map(|f| match f {
                Follow::Symbols(s) => Some(s.clone()),
                Follow::All => None,
            })
            .flatten()
            .collect();
        assert!(followed.len() > 480, "{}", followed.len());
    }

    #[test]
    fn subscriptions_name_the_symbols_and_ask_for_max_rate_only_when_set() {
        let follow = Follow::Symbols(vec![1, 42]);
        assert_eq!(
            plan(None).sse_query(&follow),
            "symbols=S001,S042&types=trades"
        );
        assert_eq!(
            plan(Some(5)).sse_query(&Follow::All),
            "symbols=*&types=trades&max_rate=5"
        );
        let message: serde_json::Value =
            serde_json::from_str(&plan(Some(5)).ws_message(&follow)).expect("JSON");
        assert_eq!(
            message,
            serde_json::json!({"action":"subscribe","trades":["S001","S042"],"max_rate":5})
        );
        let plain: serde_json::Value =
            serde_json::from_str(&plan(None).ws_message(&Follow::All)).expect("JSON");
        assert_eq!(
            plain,
            serde_json::json!({"action":"subscribe","trades":["*"]})
        );
    }

    #[test]
    fn the_symbol_mix_is_skewed_toward_the_first_symbols_and_covers_the_universe() {
        let mix = SymbolMix::new(500, 1.0);
        let mut rng = Rng::new(1);
        let mut counts = vec![0u32; 500];
        for _ in 0..200_000 {
            counts[mix.pick(&mut rng)] += 1;
        }
        // Zipf(1) over 500: the first symbol has 1/H(500) ≈ 14.7% of the draws.
        let first = f64::from(counts[0]) / 200_000.0;
        assert!((0.13..0.165).contains(&first), "{first}");
        assert!(counts[0] > counts[10] && counts[10] > counts[400]);
        assert!(counts.iter().filter(|c| **c > 0).count() > 490);
        let uniform = SymbolMix::new(4, 0.0);
        let mut seen = [0u32; 4];
        for _ in 0..40_000 {
            seen[uniform.pick(&mut rng)] += 1;
        }
        assert!(seen.iter().all(|c| (9_000..11_000).contains(c)), "{seen:?}");
    }

    #[test]
    fn batch_trades_parse_as_tickgate_trades_and_their_ids_name_their_symbol() {
        let url = Url::parse("http://127.0.0.1:1/v1/publish").expect("url");
        let mut publisher =
            BatchPublisher::new(url, "127.0.0.1:1".parse().expect("addr"), None, plan(None));
        let (body, trades) = publisher.batch_body(300);
        let items: Vec<tickgate::market::MarketEvent> =
            serde_json::from_str(&body).expect("an array of tickgate trades");
        assert_eq!(items.len(), 300);
        let mut ids = Vec::new();
        crate::sse::scan_trade_ids(body.as_bytes(), |id| ids.push(id));
        assert_eq!(ids.len(), 300);
        for ((symbol, id), scanned) in trades.iter().zip(&ids) {
            assert_eq!(id, scanned);
            assert_eq!(symbol_of(*id), *symbol);
        }
        // Within a batch (one send time) a symbol's ids still rise strictly.
        for symbol in 0..500 {
            let of: Vec<u64> = trades
                .iter()
                .filter(|(s, _)| *s == symbol)
                .map(|(_, id)| *id)
                .collect();
            assert!(
                of.windows(2).all(|w| w[0] < w[1]),
                "symbol {symbol}: {of:?}"
            );
        }
        // The id stays within a microsecond of the send time.
        let now = now_ns();
        assert!(ids.iter().all(|id| now.abs_diff(*id) < 1_000_000_000));
    }

    #[test]
    fn refused_items_are_read_from_the_reply_and_whole_refusals_are_errors() {
        assert_eq!(
            refused_indexes(200, br#"{"accepted":3,"rejected":[]}"#),
            Ok((vec![], String::new()))
        );
        assert_eq!(
            refused_indexes(
                200,
                br#"{"accepted":1,"rejected":[{"index":2,"message":"late"},{"index":0}]}"#
            ),
            Ok((vec![0, 2], "late".to_owned()))
        );
        assert!(refused_indexes(401, b"{}").is_err());
        assert!(refused_indexes(422, br#"{"accepted":0,"rejected":[]}"#).is_err());
        assert!(refused_indexes(200, b"not json").is_err());
    }

    fn seen(pairs: &[(usize, u32, u64)]) -> Vec<SymbolSeen> {
        let mut per_symbol = vec![SymbolSeen::default(); 4];
        for &(symbol, count, last_id) in pairs {
            per_symbol[symbol] = SymbolSeen { count, last_id };
        }
        per_symbol
    }

    #[test]
    fn loss_is_counted_per_followed_symbol_and_staleness_by_the_newest_trade() {
        let plan = MarketPlan {
            symbols: 4,
            per_subscriber: 2,
            all_fraction: 0.0,
            skew: 0.0,
            seed: 1,
            max_rate: None,
        };
        let follow = plan.follow(0);
        let Follow::Symbols(symbols) = &follow else {
            panic!("no subscriber follows everything at all_fraction 0");
        };
        let (a, b) = (symbols[0], symbols[1]);
        let other = (0..4)
            .find(|s| !follow.contains(*s))
            .expect("an unfollowed symbol");
        let published = MarketPublished {
            accepted: vec![10; 4],
            last_id: (0..4).map(|s| 1000 + s as u64).collect(),
            ..MarketPublished::default()
        };
        let complete = SubscriberResult {
            index: 0,
            per_symbol: seen(&[(a, 10, 1000 + a as u64), (b, 10, 1000 + b as u64)]),
            ..SubscriberResult::default()
        };
        let summary = summarize_market(std::slice::from_ref(&complete), &plan, &published);
        assert_eq!(summary.expected, 20);
        assert_eq!(
            (summary.missing, summary.stale, summary.unwanted),
            (0, 0, 0)
        );
        assert_eq!(summary.subscribers_with_loss, 0);

        // Three trades of `b` missing, its newest among them, and one unfollowed delivery.
        let lossy = SubscriberResult {
            index: 0,
            per_symbol: seen(&[(a, 10, 1000 + a as u64), (b, 7, 5), (other, 1, 9)]),
            ..SubscriberResult::default()
        };
        let summary = summarize_market(std::slice::from_ref(&lossy), &plan, &published);
        assert_eq!(
            (summary.missing, summary.stale, summary.unwanted),
            (3, 1, 1)
        );
        assert_eq!(summary.subscribers_with_loss, 1);

        // Throttled: fewer deliveries are fine as long as the newest trade arrived.
        let throttled = MarketPlan {
            max_rate: Some(2),
            ..plan.clone()
        };
        let conflated = SubscriberResult {
            index: 0,
            per_symbol: seen(&[(a, 2, 1000 + a as u64), (b, 3, 1000 + b as u64)]),
            ..SubscriberResult::default()
        };
        let summary = summarize_market(&[conflated], &throttled, &published);
        assert_eq!((summary.missing, summary.stale), (15, 0));
        assert_eq!(summary.subscribers_with_loss, 0);
        let summary = summarize_market(&[lossy], &throttled, &published);
        assert_eq!(summary.subscribers_with_loss, 1, "a stale symbol is loss");
    }
}
