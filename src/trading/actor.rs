//! The exchange actor's loop: commands and market data applied to the [`Engine`] in arrival
//! order, the steps of the commands already queued stored together (with the store), then
//! announced and answered in order.
//!
//! On a cluster node a command may carry the id it has in the shared command stream; its reply
//! is then stored in the same batch as its effects (`store::CommandRecord`), so a command
//! delivered again after a failover is answered from the store instead of running twice.

use std::sync::Arc;

use chrono::Utc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::api::OrderError;
use super::command::TradingReply;
use super::engine::{Announcement, Engine, Outcome};
use super::exchange::{Command, Shared};
use super::intake::MarketInput;
use super::resume::{self, ResumePoint};
use crate::hub::Hub;
use crate::market::MarketSession;
use crate::store::CommandRecord;

pub(super) async fn run_actor(
    mut engine: Engine,
    mut commands: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    hub: Option<Arc<Hub>>,
    opening: Option<Vec<MarketInput>>,
    shutdown: CancellationToken,
) {
    if let Some(quotes) = opening {
        open_term(&mut engine, &shared, quotes).await;
    }
    let outlet = shared.outlet.get().cloned();
    let mut recovery = super::recovery::Recovery::new(hub, outlet);
    loop {
        // A failed write halts trading (see `persist`); from then on the store is probed with
        // backoff, and trading resumes by itself once a probe succeeds.
        recovery.observe(halted(&shared).is_some());
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = recovery.due() => {
                if let Some(persistence) = shared.persistence.get() {
                    recovery.attempt(persistence, &mut engine).await;
                }
            }
            command = commands.recv() => {
                let Some(command) = command else { return };
                // Market data that arrived first is applied first, so a command sees the
                // market as of the moment it was received.
                drain_market(&mut engine, &shared).await;
                // Commands already queued are handled together and stored in one transaction,
                // so concurrent users share one fsync instead of waiting for each other's.
                let mut steps = Vec::new();
                handle_command(&mut engine, &shared, command, &mut steps);
                while steps.len() < COMMANDS_PER_COMMIT
                    && let Ok(command) = commands.try_recv()
                {
                    handle_command(&mut engine, &shared, command, &mut steps);
                }
                settle(&engine, &shared, steps).await;
            }
            _ = shared.mailbox.notify.notified() => drain_market(&mut engine, &shared).await,
        }
    }
}

/// The error for state changes once a failed store write halted trading.
pub(super) fn halted(shared: &Shared) -> Option<OrderError> {
    let persistence = shared.persistence.get()?;
    persistence
        .is_halted()
        .then(super::persist::Persistence::halted_error)
}

/// Most commands handled before their steps are stored together.
const COMMANDS_PER_COMMIT: usize = 256;

/// A handled command waiting for its step to be stored: what it announces, how it replies.
struct Pending {
    out: Outcome,
    /// The command's id and reply, stored with its effects (cluster trading).
    record: Option<CommandRecord>,
    reply: Box<dyn FnOnce(Result<(), OrderError>) + Send>,
}

impl Pending {
    fn new(out: Outcome, reply: impl FnOnce(Result<(), OrderError>) + Send + 'static) -> Self {
        Pending {
            out,
            record: None,
            reply: Box::new(reply),
        }
    }

    /// A state change: its reply is recorded under the command's id when it has one.
    fn change(
        out: Outcome,
        record: Option<String>,
        result: Result<super::api::Order, OrderError>,
        reply: tokio::sync::oneshot::Sender<Result<super::api::Order, OrderError>>,
    ) -> Self {
        let record = record.map(|id| CommandRecord {
            id,
            reply: TradingReply::of_order(&result).encode(),
        });
        Pending {
            out,
            record,
            reply: Box::new(move |stored: Result<(), OrderError>| {
                let _ = reply.send(stored.and(result));
            }),
        }
    }
}

/// Stores the steps in one transaction (with a store), then publishes each step's
/// announcements and sends its reply, in order. Nothing of steps that could not be stored is
/// announced, and the error replaces their replies.
async fn settle(engine: &Engine, shared: &Shared, steps: Vec<Pending>) {
    let stored = match shared.persistence.get() {
        Some(persistence) => {
            let outs: Vec<&Outcome> = steps.iter().map(|step| &step.out).collect();
            let records = steps
                .iter()
                .filter_map(|step| step.record.clone())
                .collect();
            persistence.store_steps(engine, &outs, records).await
        }
        None => Ok(()),
    };
    // A fenced exchange (its lease taken over) announces nothing, even what it stored before
    // it learnt of that: the new exchange owns every announcement from now on, and nodes
    // repair gaps from the store.
    let announce = shared
        .persistence
        .get()
        .is_none_or(|persistence| persistence.may_announce());
    // Each reply is sent after the announcements are published, so a caller that awaits the
    // reply and then reads its receivers finds every update the command caused.
    for step in steps {
        if stored.is_ok() && announce {
            shared.publish(step.out.announcements);
        }
        (step.reply)(stored.clone());
    }
}

/// The first step of a cluster exchange's term. The rebuilt books start from the opening
/// prices (market-following events are not stored), so the market's latest quotes move them
/// first, filling what they cross like any quote (stored before it is announced); then every
/// book goes out as a snapshot, before anything else this exchange announces. The quotes' own
/// book deltas are left out: they would reach the nodes' copies of the former exchange's
/// books, and the snapshots hold their result.
async fn open_term(engine: &mut Engine, shared: &Shared, quotes: Vec<MarketInput>) {
    let mut out = Outcome::default();
    apply_market(engine, quotes, &mut out);
    out.announcements
        .retain(|announcement| !matches!(announcement, Announcement::Book { .. }));
    settle(engine, shared, vec![Pending::new(out, |_| {})]).await;
    // Even if that step could not be stored (trading is halted then): the books are this
    // exchange's either way, and the nodes must not keep following the former one's.
    let announce = shared
        .persistence
        .get()
        .is_none_or(|persistence| persistence.may_announce());
    if announce {
        shared.publish(engine.book_snapshots(Utc::now()));
    }
}

async fn drain_market(engine: &mut Engine, shared: &Shared) {
    let pending = shared.mailbox.take();
    if pending.is_empty() || halted(shared).is_some() {
        return;
    }
    let mut out = Outcome::default();
    apply_market(engine, pending, &mut out);
    settle(engine, shared, vec![Pending::new(out, |_| {})]).await;
}

/// Applies market inputs to the engine in order.
fn apply_market(
    engine: &mut Engine,
    inputs: impl IntoIterator<Item = MarketInput>,
    out: &mut Outcome,
) {
    for input in inputs {
        let now = Utc::now();
        match input {
            MarketInput::Trade {
                symbol,
                price,
                size,
            } => engine.on_trade(&symbol, price, size, now, out),
            MarketInput::Quote {
                symbol,
                bid,
                ask,
                bid_size,
                ask_size,
            } => engine.on_quote(&symbol, bid, ask, (bid_size, ask_size), now, out),
            MarketInput::Status { code } => {
                if code == MarketSession::Closed.status_code() {
                    engine.close_session(now, out);
                }
            }
        }
    }
}

/// Applies one command to the engine; its reply waits in `steps` until the step is stored.
fn handle_command(
    engine: &mut Engine,
    shared: &Shared,
    command: Command,
    steps: &mut Vec<Pending>,
) {
    let now = Utc::now();
    let mut out = Outcome::default();
    match command {
        Command::Submit {
            user,
            request,
            record,
            reply,
        } => {
            let result = match halted(shared) {
                Some(error) => Err(error),
                None => engine.submit(&user, &request, now, &mut out),
            };
            steps.push(Pending::change(out, record, result, reply));
        }
        Command::Cancel {
            user,
            target,
            record,
            reply,
        } => {
            let result = match halted(shared) {
                Some(error) => Err(error),
                None => engine.cancel(&user, &target, now, &mut out),
            };
            steps.push(Pending::change(out, record, result, reply));
        }
        Command::Replace {
            user,
            target,
            patch,
            record,
            reply,
        } => {
            let result = match halted(shared) {
                Some(error) => Err(error),
                None => engine.replace(&user, &target, &patch, now, &mut out),
            };
            steps.push(Pending::change(out, record, result, reply));
        }
        // Answers wait behind the steps before them too, so what they show is stored.
        Command::Portfolio { user, reply } => {
            let portfolio = engine.portfolio(&user, now);
            steps.push(Pending::new(out, move |_| {
                let _ = reply.send(portfolio);
            }));
        }
        Command::Orders { user, query, reply } => {
            let orders = engine.orders(&user, query);
            steps.push(Pending::new(out, move |_| {
                let _ = reply.send(orders);
            }));
        }
        Command::Resume { user, since, reply } => {
            let point = ResumePoint::take(engine, &user, since, now);
            steps.push(Pending::new(out, move |_| {
                let _ = reply.send(point);
            }));
        }
        Command::OrderByClientId {
            user,
            client_order_id,
            reply,
        } => {
            let answer = resume::kept_order(engine, &user, &client_order_id);
            steps.push(Pending::new(out, move |_| {
                let _ = reply.send(answer);
            }));
        }
        Command::CloseSession { reply } => {
            if halted(shared).is_none() {
                engine.close_session(now, &mut out);
            }
            steps.push(Pending::new(out, move |_| {
                let _ = reply.send(());
            }));
        }
        Command::AnnounceBooks { reply } => {
            out.announcements.extend(engine.book_snapshots(now));
            steps.push(Pending::new(out, move |_| {
                let _ = reply.send(());
            }));
        }
        Command::Sync { reply } => {
            steps.push(Pending::new(out, move |_| {
                let _ = reply.send(());
            }));
        }
    }
}
