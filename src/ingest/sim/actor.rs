//! The simulator's actor: runs [`MarketSimulator`] against the real clock and publishes what
//! it produces through its [`SourceContext`], like every other source.

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::SimulatorSettings;
use crate::ingest::SourceHealth;
use crate::ingest::source::SourceContext;
use crate::market::{MarketEvent, SymbolUniverse};

use super::{MAX_CATCH_UP, MAX_WAKE_INTERVAL, MIN_WAKE_INTERVAL, MarketSimulator, SOURCE_NAME};

/// Publishes the simulator's events through its [`SourceContext`] and keeps the log quiet.
/// The checks are the hub's (content rules and, per symbol and kind, no time going
/// backwards), run once per event; a refused event is dropped and counted in
/// `tickgate_ingest_rejected_total` by the context, and a persistent problem is logged every
/// few seconds, not several times a second. Nothing panics.
pub struct PublishGuard {
    context: SourceContext,
    /// When a refusal was last logged, and how many were counted but not logged since.
    last_warning: Option<std::time::Instant>,
    unlogged_refusals: u64,
}

/// Shortest time between two refusal warnings of the simulator.
const WARNING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

impl PublishGuard {
    pub fn new(context: SourceContext) -> Self {
        PublishGuard {
            context,
            last_warning: None,
            unlogged_refusals: 0,
        }
    }

    /// Whether to log this refusal now; counts the ones it swallows.
    fn should_warn(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self
            .last_warning
            .is_some_and(|last| now.duration_since(last) < WARNING_INTERVAL)
        {
            self.unlogged_refusals += 1;
            return None;
        }
        self.last_warning = Some(now);
        Some(std::mem::take(&mut self.unlogged_refusals))
    }

    /// Publishes `event`; returns whether the hub accepted it.
    pub fn publish(&mut self, event: MarketEvent) -> bool {
        match self.context.publish(event) {
            Ok(()) => true,
            Err(error) => {
                if let Some(since) = self.should_warn() {
                    tracing::warn!(source = SOURCE_NAME, %error, refused_since_last_warning = since, "the hub refused a simulated event");
                }
                false
            }
        }
    }
}

/// Where a simulator continues when it takes over from another node's (cluster mode): the
/// last published trade price per symbol and the highest trade id, read from the feed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resume {
    pub prices: std::collections::BTreeMap<String, f64>,
    pub last_trade_id: u64,
}

impl Resume {
    /// From the latest values published (trades; quotes and bars are ignored).
    pub fn from_latest(latest: Vec<MarketEvent>) -> Resume {
        let mut resume = Resume::default();
        for event in latest {
            if let MarketEvent::Trade(trade) = event {
                resume.last_trade_id = resume.last_trade_id.max(trade.id);
                resume.prices.insert(trade.symbol, trade.price);
            }
        }
        resume
    }
}

/// Runs the simulator in real time until `shutdown` fires, publishing through `context`.
pub async fn run(
    settings: SimulatorSettings,
    symbols: Vec<String>,
    context: SourceContext,
    shutdown: CancellationToken,
) {
    run_resumed(settings, symbols, Resume::default(), context, shutdown).await;
}

/// [`run`], starting from `resume`'s prices (over the configured initial prices) and trade
/// ids.
pub async fn run_resumed(
    mut settings: SimulatorSettings,
    symbols: Vec<String>,
    resume: Resume,
    context: SourceContext,
    shutdown: CancellationToken,
) {
    let universe = SymbolUniverse::new(symbols.iter().cloned());
    if !resume.prices.is_empty() {
        tracing::info!(
            symbols = resume.prices.len(),
            last_trade_id = resume.last_trade_id,
            "simulator continues from the feed's last prices"
        );
    }
    settings.initial_prices.extend(resume.prices);
    let mut simulator = MarketSimulator::new(&settings, universe.names(), Utc::now());
    simulator.continue_trade_ids_after(resume.last_trade_id);
    context.report(SourceHealth::Up);
    let mut guard = PublishGuard::new(context);
    tracing::info!(
        symbols = symbols.len(),
        seed = settings.seed,
        trades_per_second = settings.trades_per_second,
        always_open = settings.always_open,
        "market simulator started"
    );
    loop {
        let now = Utc::now();
        if now - simulator.clock() > MAX_CATCH_UP {
            tracing::warn!(
                behind_ms = (now - simulator.clock()).num_milliseconds(),
                "the simulator fell behind the clock; skipping ahead"
            );
            for event in simulator.skip_to(now) {
                guard.publish(event);
            }
        }
        for event in simulator.advance(now) {
            guard.publish(event);
        }
        let wait = simulator
            .next_event_time()
            .and_then(|next| (next - Utc::now()).to_std().ok())
            .unwrap_or(MAX_WAKE_INTERVAL)
            .clamp(MIN_WAKE_INTERVAL, MAX_WAKE_INTERVAL);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
