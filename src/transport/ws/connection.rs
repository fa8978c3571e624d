//! The connection's loop (everything but market data: client frames, trading events,
//! timers, shutdown), as a hand-written future held inline in the connection's body. Market data
//! and the pings that ride on hub wake-ups are served by the body itself (`wire::FastPath`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use crate::auth::{AuthError, Identity};
use crate::metrics::Transport;

use super::session::{Output, WsSession, close_codes, is_order_action};
use super::wire::{
    ConnectionLoop, Inbound, InboundLimits, Incoming, Wire, put_binary, put_close, put_pong,
    put_text,
};
use super::{Dialect, put_wire_frame};

/// The inbound limits once a session has authenticated: messages over
/// `ws.max_message_bytes` are dropped as they stream in, up to the frame limit.
pub(super) fn authenticated_limits(settings: &crate::settings::Settings) -> InboundLimits {
    InboundLimits {
        keep: settings.ws.max_message_bytes,
        hard: settings.ws.max_frame_bytes,
        fragment_timeout: settings.ws.fragment_timeout,
    }
}

/// Client messages one connection handles before it lets the worker serve others.
const MESSAGES_PER_TURN: u32 = 16;

/// Counts the connection as closed however it ends: a returned loop, or a body dropped by
/// the driver because the peer went away.
pub(super) struct ClosedGuard(pub(super) Arc<crate::metrics::Metrics>);

impl Drop for ClosedGuard {
    fn drop(&mut self) {
        self.0.connection_closed(Transport::WebSocket);
    }
}

/// What a handling or a wait that runs as a future of its own takes along and gives back:
/// the session, and the decoder (a wait on the trading streams reads the socket too).
struct Core {
    session: WsSession,
    inbound: Inbound,
}

/// Boxed work the connection is in the middle of. The future owns the [`Core`] while it
/// runs and hands it back with its result, so nothing borrows the connection across a poll.
enum Pending {
    /// A session action, or the handling of a wake-up; market data waits meanwhile
    /// (`Wire::busy`), so a reply precedes the data it starts (not during an order action:
    /// see `on_message`).
    Step(Pin<Box<dyn Future<Output = (Core, Vec<Output>)>>>, StepKind),
    /// A wait on the trading streams (their receivers have no poll form), the socket and
    /// shutdown, as one `select`.
    Wait(Pin<Box<dyn Future<Output = (Core, Event)>>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepKind {
    Wake,
    /// A client message: the inbound limits may rise after it (authentication).
    Message,
}

/// Everything but market data: client frames, trading events, timers, shutdown. Market data
/// and the pings that ride on hub wake-ups are served by the body (`wire::FastPath`).
///
/// The connection's loop, written as a `Future` by hand and held inline in the response
/// body ([`WsBody`]), so an idle connection's whole loop state is this struct (its size is
/// pinned in the tests): no `async` state machine keeping the session, the select's
/// futures and the await slots of every branch side by side. While idle it polls the
/// session ([`WsSession::poll_wait`]), the decoder and the shutdown waiter in place; what
/// takes time (an action, a wake-up's handling, a wait on the trading streams) runs as one
/// boxed future that owns the session while it runs ([`Pending`]).
pub(super) struct Connection {
    /// `None` only while a [`Pending`] future owns it.
    core: Option<Core>,
    pending: Option<Pending>,
    dialect: Dialect,
    /// The settings, for the inbound limits once the session has authenticated (a pointer
    /// rather than the limits themselves).
    settings: Arc<crate::settings::Settings>,
    /// Read when the loop is polled, not waited on: the hub wakes every WebSocket's queue
    /// when the server stops (`Hub::shut_down`), which polls the loop, so an idle connection
    /// holds no waiter of its own (issue 17: idle WebSocket memory).
    shutdown: tokio_util::sync::CancellationToken,
    /// The close to send once the loop ends; the loop ends when this is set.
    /// Boxed: set once, at the end.
    close: Option<Box<(u16, String)>>,
    /// The loop has ended (the close, if any, is in the outbox).
    ended: bool,
    /// Client messages handled since the loop last gave the worker back.
    handled: u32,
    _closed: ClosedGuard,
}

/// What the connection's loop woke up for.
enum Event {
    Wake(super::session::Wake),
    /// A client message, or `None` once the peer has gone.
    Message(Option<Incoming>),
    Shutdown,
}

impl Connection {
    pub(super) fn new(
        session: WsSession,
        inbound: Inbound,
        dialect: Dialect,
        settings: Arc<crate::settings::Settings>,
        shutdown: tokio_util::sync::CancellationToken,
        closed: ClosedGuard,
    ) -> Connection {
        Connection {
            core: Some(Core { session, inbound }),
            pending: None,
            dialect,
            settings,
            shutdown,
            close: None,
            ended: false,
            handled: 0,
            _closed: closed,
        }
    }

    /// Frames the outputs; returns the close to send if the session ended. No await: the
    /// frames wait in the outbox until the driver takes them, and a peer that stops
    /// reading stops this loop too (see `WsBody`), leaving the hub's bounded queue to decide.
    fn write(
        &self,
        wire: &Wire,
        outputs: impl IntoIterator<Item = Output>,
    ) -> Option<(u16, String)> {
        let mut outbox = wire.outbox.borrow_mut();
        for output in outputs {
            match (output, self.dialect) {
                (Output::Frame(text), Dialect::Native) => put_text(&mut outbox, &text),
                (Output::Frame(text), Dialect::AlpacaData(dialect)) => {
                    put_wire_frame(&mut outbox, dialect.outbound(&text));
                }
                (Output::Frame(text), Dialect::AlpacaTrading(dialect)) => {
                    for frame in dialect.outbound(&text) {
                        put_wire_frame(&mut outbox, frame);
                    }
                }
                (Output::Binary(bytes), _) => put_binary(&mut outbox, &bytes),
                (Output::Close { code, reason }, _) => return Some((code, reason)),
            }
        }
        None
    }

    /// A client message, through the dialect: the session's action text, or the reply to a
    /// message the dialect refused.
    fn inbound<'a>(
        &self,
        wire: &Wire,
        message: &'a [u8],
        binary: bool,
    ) -> Result<std::borrow::Cow<'a, str>, Vec<Output>> {
        let refused = |code: u32, message: &str| {
            let object = serde_json::json!([{"T": "error", "code": code, "msg": message}]);
            vec![Output::Frame(object.to_string().into())]
        };
        match self.dialect {
            // Text frames are UTF-8 (checked by the wire); binary ones never get here.
            Dialect::Native | Dialect::AlpacaData(_) if !binary => {
                Ok(String::from_utf8_lossy(message))
            }
            Dialect::Native => Err(Vec::new()),
            Dialect::AlpacaData(dialect) => dialect
                .inbound_binary(message)
                .map(std::borrow::Cow::Owned)
                .map_err(|r| refused(r.code, &r.message)),
            Dialect::AlpacaTrading(dialect) => dialect
                .inbound(message)
                .map(std::borrow::Cow::Owned)
                .map_err(|r| {
                    let mut outbox = wire.outbox.borrow_mut();
                    put_wire_frame(&mut outbox, dialect.refused(&r));
                    Vec::new()
                }),
        }
    }

    /// Greets the client and applies the upgrade's credential, before the loop first runs,
    /// so the credential is not kept for the connection's life. Sets the close to send if
    /// the session ended already.
    pub(super) fn start(&mut self, wire: &Wire, credential: Option<Result<Identity, AuthError>>) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let start = core.session.start(credential);
        if core.session.user().is_some() {
            core.inbound
                .set_limits(authenticated_limits(&self.settings));
        }
        self.close = self.write(wire, start).map(Box::new);
    }

    /// Gives the decoder the upgraded socket (see `upgrade::Driver`); `false` if the loop
    /// has already ended or is inside an action (never, before its first poll).
    pub(super) fn attach(
        &mut self,
        socket: std::rc::Rc<tokio::net::TcpStream>,
        buffered: bytes::BytesMut,
    ) -> bool {
        match self.core.as_mut() {
            Some(core) if self.pending.is_none() => {
                core.inbound.attach(socket, buffered);
                true
            }
            _ => false,
        }
    }

    /// Runs `step` as the pending work, owning the core until it is done. With
    /// `hold_market`, the session's market data waits meanwhile (`Wire::busy`).
    fn run_step<F>(
        &mut self,
        wire: &Wire,
        mut core: Core,
        kind: StepKind,
        hold_market: bool,
        step: F,
    ) where
        F: for<'s> FnOnce(&'s mut WsSession) -> Pin<Box<dyn Future<Output = Vec<Output>> + 's>>
            + 'static,
    {
        wire.busy.set(hold_market);
        let future = async move {
            let outputs = step(&mut core.session).await;
            (core, outputs)
        };
        self.pending = Some(Pending::Step(Box::pin(future), kind));
    }

    /// Acts on an event; the core is back in place (nothing is pending).
    fn handle(&mut self, wire: &Wire, event: Event) {
        let Some(mut core) = self.core.take() else {
            return;
        };
        let outputs = match event {
            Event::Wake(wake) => {
                return self.run_step(wire, core, StepKind::Wake, true, move |session| {
                    Box::pin(session.on_wake(wake))
                });
            }
            Event::Message(None) => {
                // The peer has gone: no close frame.
                self.core = Some(core);
                self.ended = true;
                return;
            }
            Event::Message(Some(message)) => {
                self.handled += 1;
                // std's clock: tokio's (built with test-util) costs a runtime lookup.
                wire.last_heard.set(Instant::now());
                match message {
                    Incoming::Text(text) => {
                        return self.on_message(wire, core, text.into_bytes(), false);
                    }
                    Incoming::Binary(bytes) => return self.on_message(wire, core, bytes, true),
                    Incoming::Ping(payload) => {
                        put_pong(&mut wire.outbox.borrow_mut(), &payload);
                        Vec::new()
                    }
                    Incoming::Pong => Vec::new(),
                    Incoming::Close => {
                        self.close = Some(Box::new((close_codes::NORMAL, "bye".to_owned())));
                        Vec::new()
                    }
                    Incoming::TooLarge(len) => core.session.on_oversize(len),
                    Incoming::Overflow(limit) => core.session.on_frame_overflow(limit),
                    Incoming::FragmentTimeout => core.session.on_fragment_timeout(),
                    Incoming::Invalid(error) => {
                        tracing::debug!(%error, "websocket protocol error");
                        self.close = Some(Box::new((close_codes::PROTOCOL, error)));
                        Vec::new()
                    }
                }
            }
            Event::Shutdown => core.session.on_shutdown(),
        };
        self.core = Some(core);
        if let Some(close) = self.write(wire, outputs) {
            self.close = Some(Box::new(close));
        }
    }

    /// A client text or binary message: synchronous answers at once, an action as a step.
    fn on_message(&mut self, wire: &Wire, mut core: Core, message: bytes::Bytes, binary: bool) {
        if binary && matches!(self.dialect, Dialect::Native) {
            let outputs = core.session.on_binary();
            self.core = Some(core);
            self.close = self.write(wire, outputs).map(Box::new);
            return;
        }
        match self.inbound(wire, &message, binary) {
            Ok(text) => {
                // An order, a cancel or a replace waits for the exchange, which takes a
                // failover's seconds when one is under way: market data and the trading
                // statuses in the same queue go on meanwhile. Its trade updates still follow
                // its `order_ack` (they come through the loop, which this step occupies),
                // and no next client message is read before it is answered. Any other
                // action holds market data: its reply precedes the data it starts or stops.
                let hold_market =
                    !(matches!(self.dialect, Dialect::Native) && is_order_action(text.as_bytes()));
                // Owned by the step; a client message is small and its handling (a parse, an
                // order) costs far more than this copy.
                let text = text.into_owned();
                self.run_step(wire, core, StepKind::Message, hold_market, move |session| {
                    Box::pin(async move { session.on_text(&text).await })
                });
            }
            // A message the dialect refused still draws from the action budget, so a flood
            // of them gets no reply per message either.
            Err(reply) => {
                let outputs = core.session.over_rate(None).unwrap_or(reply);
                self.core = Some(core);
                self.close = self.write(wire, outputs).map(Box::new);
            }
        }
    }

    /// A step has finished: its outputs go out, and after a client message the inbound
    /// limits become the full ones once the session has authenticated.
    fn finish_step(&mut self, wire: &Wire, mut core: Core, kind: StepKind, outputs: Vec<Output>) {
        wire.busy.set(false);
        if kind == StepKind::Message
            && core.session.user().is_some()
            && core.inbound.limits() != authenticated_limits(&self.settings)
        {
            core.inbound
                .set_limits(authenticated_limits(&self.settings));
        }
        self.core = Some(core);
        self.close = self.write(wire, outputs).map(Box::new);
    }

    /// The next event of an idle connection, polled in place: the session first (the hub's
    /// queue when the loop serves it, then its deadlines), then the socket, then shutdown,
    /// the order the loop always checked them in. Shutdown registers no waker: the token is
    /// cancelled before `Hub::shut_down` pushes a keep-alive tick into every WebSocket's
    /// queue, and the fast path polls the loop for that tick.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        let Some(core) = self.core.as_mut() else {
            return Poll::Pending;
        };
        if let Poll::Ready(wake) = core.session.poll_wait(cx) {
            return Poll::Ready(Event::Wake(wake));
        }
        if let Poll::Ready(message) = core.inbound.poll_recv(cx) {
            return Poll::Ready(Event::Message(message));
        }
        if self.shutdown.is_cancelled() {
            return Poll::Ready(Event::Shutdown);
        }
        Poll::Pending
    }

    /// A wait that needs futures of its own (a trading stream is open): one boxed `select`
    /// over the session, the socket and shutdown, owning the core until one of them fires.
    fn wait_on_streams(&mut self, mut core: Core) {
        let shutdown = self.shutdown.clone();
        let wait = async move {
            let event = tokio::select! {
                biased;
                wake = core.session.wait() => Event::Wake(wake),
                message = core.inbound.recv() => Event::Message(message),
                () = shutdown.cancelled() => Event::Shutdown,
            };
            (core, event)
        };
        self.pending = Some(Pending::Wait(Box::pin(wait)));
    }

    /// The loop has ended: the session leaves the hub before the close goes out.
    fn end(&mut self, wire: &Wire) {
        self.ended = true;
        self.pending = None;
        self.core = None;
        if let Some(close) = self.close.take() {
            let (code, reason) = *close;
            put_close(&mut wire.outbox.borrow_mut(), code, &reason);
        }
    }
}

impl ConnectionLoop for Connection {
    fn poll_loop(&mut self, cx: &mut Context<'_>, wire: &Wire) -> Poll<()> {
        let this = self;
        loop {
            if this.ended || (this.close.is_some() && this.pending.is_none()) {
                if this.core.is_some() || this.close.is_some() {
                    this.end(wire);
                }
                return Poll::Ready(());
            }
            match this.pending.as_mut() {
                Some(Pending::Step(step, kind)) => {
                    let kind = *kind;
                    let Poll::Ready((core, outputs)) = step.as_mut().poll(cx) else {
                        return Poll::Pending;
                    };
                    this.pending = None;
                    this.finish_step(wire, core, kind, outputs);
                    continue;
                }
                Some(Pending::Wait(wait)) => {
                    let Poll::Ready((core, event)) = wait.as_mut().poll(cx) else {
                        return Poll::Pending;
                    };
                    this.pending = None;
                    this.core = Some(core);
                    this.handle(wire, event);
                    continue;
                }
                None => {}
            }
            // Fairness: a client that keeps its socket full (a flood of small messages) would
            // otherwise keep this loop, and the worker thread it shares with other
            // connections, busy for as long as bytes keep arriving.
            if this.handled >= MESSAGES_PER_TURN {
                this.handled = 0;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if let Some(core) = this.core.take_if(|core| core.session.waits_on_streams()) {
                this.wait_on_streams(core);
                continue;
            }
            let Poll::Ready(event) = this.poll_event(cx) else {
                return Poll::Pending;
            };
            this.handle(wire, event);
        }
    }
}
