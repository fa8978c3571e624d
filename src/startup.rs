//! Builds the application from settings and runs it: the store, the hub, the exchange, the
//! sources, the HTTP server on an already-bound listener, and graceful shutdown driven by one
//! cancellation token.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_service::{ServiceFactoryExt, map_config};
use actix_web::{App, web};
use tokio_util::sync::CancellationToken;

use crate::hub::{Hub, HubSettings};
use crate::ingest::SourceRegistry;
use crate::ingest::source::Publisher;
use crate::market::SymbolUniverse;
use crate::metrics::Metrics;
use crate::routes::ACCESS_LOG_TARGET;
use crate::settings::Settings;
use crate::state::AppState;

/// Connections each HTTP worker holds at most (see `start_http`).
const MAX_CONNECTIONS_PER_WORKER: usize = 1_000_000;

/// Accept queue length asked of the kernel (capped by `net.core.somaxconn`). Bursts of
/// thousands of new subscribers overflow the default of 128 and stall on SYN retries.
const LISTEN_BACKLOG: i32 = 65_535;

/// Re-issues `listen` with a longer accept queue; Linux updates the backlog of a socket that
/// is already listening.
fn widen_backlog(listener: TcpListener) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::from(listener);
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Request logging through `tracing` (one line per request at info level, target
/// `tickgate::http`). When the log filter drops those lines (e.g. `warn`) the logger is left
/// out of the stack: it would still render the request line, the status and a timestamp for
/// every request (and wrap every response body) only to throw them away: about 4.5k of the
/// 53k user-space instructions of opening an SSE stream (docs/benchmarks.md).
fn tracing_actix() -> actix_web::middleware::Condition<actix_web::middleware::Logger> {
    // The logger also reports failed responses at debug level under its own target.
    let enabled = tracing::enabled!(target: ACCESS_LOG_TARGET, tracing::Level::INFO)
        || tracing::enabled!(
            target: "actix_web::middleware::logger",
            tracing::Level::DEBUG
        );
    actix_web::middleware::Condition::new(
        enabled,
        actix_web::middleware::Logger::new("%r %s %Dms").log_target(ACCESS_LOG_TARGET),
    )
}

/// Starts the simulator (and the exchange's books) from where the market was when the previous
/// run stopped, the close of each symbol's newest stored bar, instead of the configured
/// `simulator.initial_prices`. A store that cannot be read leaves the configured prices.
fn continue_market(settings: &mut Settings, store: &crate::store::Store) {
    let symbols = settings.market.symbols.clone();
    match futures::executor::block_on(store.history.last_closes(symbols)) {
        Ok(closes) if !closes.is_empty() => {
            tracing::info!(
                symbols = closes.len(),
                "the market continues from the last stored prices"
            );
            for (symbol, close) in closes {
                if close.is_finite() && close > 0.0 {
                    settings.simulator.initial_prices.insert(symbol, close);
                }
            }
        }
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(%error, "could not read the last stored prices; the market starts from simulator.initial_prices");
        }
    }
}

/// A built, bound, not yet running gateway.
pub struct Application {
    port: u16,
    listener: TcpListener,
    state: AppState,
}

impl Application {
    /// Builds the state and binds `settings.server.bind` (port 0 picks a free port).
    pub fn build(settings: Settings) -> anyhow::Result<Application> {
        let address = settings.server.bind;
        let listener = TcpListener::bind(address).map_err(|error| {
            anyhow::anyhow!("could not listen on {address} (server.bind): {error}")
        })?;
        Application::build_with_listener(settings, listener)
    }

    /// Builds the state on `listener`. The exchange starts here, so it follows the market
    /// from the first event (see `trading::exchange::start` for a build outside a runtime).
    pub fn build_with_listener(
        settings: Settings,
        listener: TcpListener,
    ) -> anyhow::Result<Application> {
        let port = listener.local_addr()?.port();
        let mut settings = settings;
        if settings.server.receive_buffer_bytes > 0 {
            // Accepted connections inherit it. actix-http reads whatever the kernel holds for
            // a connection (up to 128 KiB) before the application sees any of it, and after
            // answering a request it did not read in full it reads and discards for up to a
            // second; this is what bounds that per connection (docs/deployment.md).
            socket2::SockRef::from(&listener)
                .set_recv_buffer_size(settings.server.receive_buffer_bytes)?;
        }
        let metrics = Arc::new(Metrics::default());
        let universe = SymbolUniverse::new(settings.market.symbols.iter().cloned());
        let opened = if settings.store.enabled {
            Some(crate::store::Store::open_with_metrics(
                &settings.store,
                Some(Arc::clone(&metrics)),
            )?)
        } else {
            None
        };
        let epoch = match &opened {
            Some(opened) => opened.feed_start.epoch,
            None => chrono::Utc::now().timestamp_millis().max(1) as u64,
        };
        let hub = Arc::new(Hub::new(
            universe,
            HubSettings::from(&settings.hub),
            Arc::clone(&metrics),
            epoch,
        ));
        if let Some(opened) = &opened {
            opened.feed_start.apply(&hub);
            continue_market(&mut settings, &opened.store);
        }
        // Before the exchange starts, so a bad [auth] section leaves nothing running.
        let auth = Arc::new(crate::auth::AuthService::new(&settings.auth)?);
        if let Some(opened) = &opened {
            opened.store.sync_users_at_start(
                settings
                    .auth
                    .users
                    .iter()
                    .map(|user| crate::store::UserRecord {
                        username: user.username.clone(),
                        password_hash: user.password_hash.clone(),
                    })
                    .collect(),
            )?;
        }
        let api_keys = Arc::new(crate::auth::api_keys::ApiKeys::load(
            &settings.auth,
            Some(&settings.store),
            opened
                .as_ref()
                .map(|opened| Arc::clone(&opened.store.api_keys)),
        )?);
        let shutdown = CancellationToken::new();
        // Cluster mode: the node joins before anything follows the hub, so the exchange and
        // the bar writer see the shared log from its first synchronisation.
        let cluster = if settings.cluster.enabled() {
            let config = crate::cluster::ClusterConfig::from_settings(
                &settings.cluster,
                settings.hub.replay_window,
            );
            tokio::runtime::Handle::try_current().map_err(|_| {
                anyhow::anyhow!("cluster mode needs the application built inside a tokio runtime")
            })?;
            let node = crate::cluster::ClusterNode::new(config, Arc::clone(&metrics))?;
            tracing::info!(node = node.node_id(), "joining the cluster");
            node.start(
                Arc::new(crate::cluster::HubSink::new(Arc::clone(&hub))),
                shutdown.clone(),
            );
            Some(node)
        } else {
            None
        };
        let trading: Arc<dyn crate::trading::api::TradingApi> = match (&cluster, &opened) {
            // Cluster trading: one exchange for all nodes, on whichever holds its lease, with
            // its state in the shared store; every node reaches it over Redis.
            (Some(node), Some(opened)) => {
                let status_hub = Arc::clone(&hub);
                let status: crate::cluster::trading::TradingStatus =
                    Arc::new(move |code: &'static str, message: &str| {
                        status_hub.notify_status(code, message);
                    });
                Arc::new(crate::cluster::trading::start(
                    node,
                    &settings.trading,
                    &settings.simulator.initial_prices,
                    Arc::clone(&hub),
                    Arc::clone(&opened.store.trading),
                    status,
                    shutdown.clone(),
                ))
            }
            _ => Arc::new(crate::trading::exchange::start(
                &settings.trading,
                &settings.simulator.initial_prices,
                Arc::clone(&hub),
                opened
                    .as_ref()
                    .map(|opened| Arc::clone(&opened.store.trading)),
                shutdown.clone(),
            )?),
        };
        let sources = SourceRegistry::new(Arc::clone(&metrics));
        let hub_sink: Arc<dyn crate::hub::EventSink> = hub.clone();
        let mut publisher = Publisher::new(hub_sink, sources.clone(), Arc::clone(&metrics));
        if let Some(node) = &cluster {
            publisher = publisher.with_cluster(node.clone(), hub.universe().clone());
        }
        let ws_sessions = Arc::new(crate::transport::ws::session::SessionShared {
            hub: Arc::clone(&hub),
            auth: Arc::clone(&auth),
            api_keys: Arc::clone(&api_keys),
            trading: Arc::clone(&trading),
            metrics: Arc::clone(&metrics),
            limits: crate::transport::ws::session::SessionLimits::from_settings(&settings),
        });
        let state = AppState {
            ws_sessions,
            auth,
            api_keys,
            settings: Arc::new(settings),
            hub,
            sources,
            publisher,
            metrics,
            shutdown,
            trading,
            store: opened.map(|opened| opened.store),
            cluster,
        };
        Ok(Application {
            port,
            listener,
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The token that stops the application when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.shutdown.clone()
    }

    /// Runs until the shutdown token fires, then lets connections finish within the grace
    /// period and returns.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let state = self.state.clone();
        tokio::spawn(Arc::clone(&state.hub).run_heartbeats(state.shutdown.clone()));
        tokio::spawn(
            Arc::clone(&state.hub)
                .run_keepalive(state.settings.ws.ping_interval, state.shutdown.clone()),
        );
        crate::ingest::spawn_sources(
            &state.settings.simulator,
            &state.settings.sources,
            &state.publisher,
            state.universe(),
            &state.shutdown,
        );
        let store_tasks = state
            .store
            .as_ref()
            .map(|store| store.spawn_background(&state.hub, state.shutdown.clone()));
        let server = self.start_http()?;
        let handle = server.handle();
        let hub = Arc::clone(&state.hub);
        let grace = state.settings.server.shutdown_grace;
        let shutdown = state.shutdown.clone();
        let stopper = tokio::spawn(async move {
            shutdown.cancelled().await;
            // Sources hear the same token and stop; sealing the hub refuses whatever is still
            // in flight (a publish API request, a source's last tick), so the head each stream
            // is told to resume from is the feed's last event.
            hub.shut_down();
            tracing::info!("shutting down: publishing stopped, telling clients to reconnect");
            // Give open streams a moment to flush their final message before stopping.
            tokio::time::sleep(Duration::from_millis(100).min(grace)).await;
            handle.stop(true).await;
        });
        server.await?;
        stopper.abort();
        if let Some(tasks) = store_tasks {
            tasks.finish(&state.hub).await;
        }
        // Before the process ends: another node takes the sources over at once instead of
        // waiting for the leases to expire.
        if let Some(node) = &state.cluster {
            node.release_leases().await;
        }
        Ok(())
    }

    /// Builds and starts the HTTP server (synchronously, so the returned future is `Send`).
    ///
    /// Built from actix-server and actix-http rather than actix-web's `HttpServer`, with the
    /// same settings `HttpServer` would apply, for one thing it does not expose: actix-http's
    /// upgrade hook, through which WebSocket upgrades reach `transport::ws::UpgradeFactory`
    /// with their socket instead of running as a response body over the HTTP/1 dispatcher
    /// (docs/ARCHITECTURE.md, "The server boundary").
    fn start_http(self) -> anyhow::Result<actix_web::dev::Server> {
        let state = self.state;
        let settings = Arc::clone(&state.settings);
        let listener = widen_backlog(self.listener)?;
        let address = listener.local_addr()?;
        let stalled = settings.server.stalled_peer_timeout;
        // The application, once for ordinary requests and once for upgrades in each worker.
        // tickgate reads neither the configured host nor the local address from the
        // application's config (no `connection_info`, no `url_for`), so the default will do.
        let application = move || {
            let data = state.clone();
            let app = App::new()
                .wrap(crate::routes::json_errors())
                .wrap(crate::routes::cors(&data))
                .wrap(tracing_actix())
                .app_data(web::Data::new(data.clone()))
                .configure(|cfg| crate::routes::configure(cfg, &data, crate::transport::configure));
            map_config(app, |()| actix_web::dev::AppConfig::default())
        };
        let mut server = actix_server::Server::build()
            .disable_signals()
            .shutdown_timeout(settings.server.shutdown_grace.as_secs().max(1))
            // Streams are long-lived, so actix's default of 25,600 connections per worker
            // would cap a one-core gateway far below what it can hold; the file-descriptor
            // limit is the real bound.
            .max_concurrent_connections(MAX_CONNECTIONS_PER_WORKER);
        if settings.server.workers > 0 {
            server = server.workers(settings.server.workers);
        }
        // Tells each connection's dispatcher that a graceful stop began, so idle keep-alive
        // connections close at once (what `HttpServer` wires up).
        let graceful = server.graceful_shutdown_signal();
        let server = server.listen("tickgate-http", listener, move || {
            let graceful = graceful.clone();
            let mut http = actix_http::HttpService::build()
                .graceful_shutdown_signal(move || {
                    let graceful = graceful.clone();
                    async move { graceful.notified().await }
                })
                .keep_alive(actix_http::KeepAlive::default())
                .client_request_timeout(Duration::from_secs(10))
                .client_disconnect_timeout(Duration::from_secs(1))
                .h1_allow_half_closed(true)
                .local_addr(address)
                // Every write is a complete message that should leave at once: with Nagle's
                // algorithm a small write waits while an earlier one is unacknowledged, and a
                // client that delays its ACKs turns that into tens of milliseconds.
                .tcp_nodelay(true);
            if !stalled.is_zero() {
                // A stream's body is not polled while its socket is full, so nothing in the
                // process notices a peer that stopped reading; the kernel does, and this
                // bounds how long such a connection (its descriptor and buffers) lives.
                http = http.on_connect_ext(move |stream: &actix_web::rt::net::TcpStream, _| {
                    if let Err(error) =
                        socket2::SockRef::from(stream).set_tcp_user_timeout(Some(stalled))
                    {
                        tracing::debug!(%error, "TCP_USER_TIMEOUT not set");
                    }
                });
            }
            let upgrades = crate::transport::ws::UpgradeFactory::new(application());
            let requests = application().map_err(|error: actix_web::Error| error.error_response());
            http.upgrade(upgrades).finish(requests).tcp()
        })?;
        Ok(server.run())
    }
}
