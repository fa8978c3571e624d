//! The server boundary of WebSocket connections: actix-http's HTTP/1 dispatcher hands every
//! request that asks for `Upgrade: websocket` to [`UpgradeFactory`]'s service, with the
//! socket and whatever the dispatcher had read past the request. The service runs the
//! request through the application (the routes in `transport::ws`, with every middleware),
//! so the handshake checks and error responses are the routes' own. A route that accepts
//! answers 101 with the prepared connection attached ([`Upgraded`]); the service writes the
//! 101 and runs the connection on the socket itself ([`Driver`]). Anything else is written
//! as an ordinary response, after which the connection closes.
//!
//! Why: behind an actix-web response an upgraded connection kept actix-http's request
//! payload channel (every client frame went through it), the dispatcher's 8 KiB read and
//! write buffers and its shutdown waiter, for as long as it lived (issue 17: idle WebSocket
//! memory at or below SSE's). Here the dispatcher's state is dropped at the upgrade, and an
//! idle connection holds its body, a shared socket handle, and no buffer at all.
//!
//! Invariants kept here: an upgrade request reaches a route only if its path is one of the
//! WebSocket routes (any other path is refused with 400 `bad_request`, docs/websocket.md);
//! nothing is read from the socket for the connection until its 101 is prepared, and what
//! the dispatcher had read already goes to the decoder first; a body's chunk is written in
//! full before the body is polled again, so a peer that stops reading stops its connection
//! (the hub's bounded queue decides, as before); after the last frame the socket is shut for
//! writing and drained until the peer closes, for at most [`CLOSE_LINGER`], so the close
//! frame is not lost to a reset.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_codec::{Encoder, Framed};
use actix_http::body::{BodySize, BoxBody, MessageBody};
use actix_http::h1::{Codec, Message};
use actix_http::{ConnectionType, Request, Response, StatusCode};
use actix_service::{Service, ServiceFactory};
use actix_web::dev::ServiceResponse;
use actix_web::{HttpMessage, ResponseError};
use bytes::{Buf, Bytes, BytesMut};
use futures::SinkExt;
use futures::future::LocalBoxFuture;
use tokio::net::TcpStream;

use super::connection::Connection;
use super::wire::WsBody;
use crate::error::{ApiError, ErrorCode};

/// Longest the socket stays open after the last frame, waiting for the peer to close.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Marks a request that came through the upgrade hook: only such a request has a socket to
/// take over (`transport::ws::handshake` refuses the others).
pub(super) struct ThroughHook;

/// The connection a WebSocket route prepared, carried to the upgrade service on its 101
/// response (a response extension).
pub(super) struct Upgraded(pub(super) Box<WsBody<Connection>>);

/// Builds the upgrade service of each worker around its own instance of the application.
pub struct UpgradeFactory<F> {
    app: F,
}

impl<F> UpgradeFactory<F> {
    /// `app`: the same application the HTTP service runs (a second instance per worker).
    pub fn new(app: F) -> UpgradeFactory<F> {
        UpgradeFactory { app }
    }
}

impl<F, B> ServiceFactory<(Request, Framed<TcpStream, Codec>)> for UpgradeFactory<F>
where
    F: ServiceFactory<
            Request,
            Config = (),
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
        >,
    F::Service: 'static,
    F::Future: 'static,
    B: MessageBody + 'static,
{
    type Response = ();
    type Error = Infallible;
    type Config = ();
    type Service = UpgradeService<F::Service>;
    type InitError = F::InitError;
    type Future = LocalBoxFuture<'static, Result<UpgradeService<F::Service>, F::InitError>>;

    fn new_service(&self, (): ()) -> Self::Future {
        let app = self.app.new_service(());
        Box::pin(async move {
            Ok(UpgradeService {
                app: Rc::new(app.await?),
            })
        })
    }
}

/// Answers one upgrade request and, when a route accepted it, runs the connection.
pub struct UpgradeService<S> {
    app: Rc<S>,
}

impl<S, B> Service<(Request, Framed<TcpStream, Codec>)> for UpgradeService<S>
where
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ();
    type Error = Infallible;
    type Future = UpgradeFuture;

    actix_service::always_ready!();

    fn call(&self, (request, framed): (Request, Framed<TcpStream, Codec>)) -> UpgradeFuture {
        UpgradeFuture::Answering(Box::pin(answer(Rc::clone(&self.app), request, framed)))
    }
}

/// The upgrade, as the dispatcher holds it (inline, in place of its own state): the answer
/// to the request while the application handles it, then the connection.
pub enum UpgradeFuture {
    Answering(LocalBoxFuture<'static, Option<Driver>>),
    Running(Driver),
    Done,
}

impl Future for UpgradeFuture {
    type Output = Result<(), Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match this {
                UpgradeFuture::Answering(answer) => match answer.as_mut().poll(cx) {
                    Poll::Ready(Some(driver)) => *this = UpgradeFuture::Running(driver),
                    Poll::Ready(None) => *this = UpgradeFuture::Done,
                    Poll::Pending => return Poll::Pending,
                },
                UpgradeFuture::Running(driver) => {
                    std::task::ready!(driver.poll(cx));
                    *this = UpgradeFuture::Done;
                }
                UpgradeFuture::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// Runs the upgrade request through the application; the driver when a route accepted it,
/// else `None` once the route's answer is written and the socket closed.
async fn answer<S, B>(
    app: Rc<S>,
    request: Request,
    mut framed: Framed<TcpStream, Codec>,
) -> Option<Driver>
where
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    let path = request.path().to_owned();
    if !super::is_stream_path(&path) {
        let error = ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "{} does not take a WebSocket upgrade: the streams are at {}, {} and {} \
                 (send other requests without Upgrade: websocket)",
                crate::routes::params::echo(&path),
                super::NATIVE_PATH,
                super::ALPACA_TRADING_PATH,
                super::ALPACA_DATA_PATHS.join(", "),
            ),
        );
        tracing::info!(
            target: crate::routes::ACCESS_LOG_TARGET,
            "{} {} {:?} {} (an upgrade to a path without a WebSocket)",
            request.method(),
            path,
            request.version(),
            error.status().as_u16(),
        );
        let response: Response<BoxBody> = error.error_response().into();
        respond(framed, response).await;
        return None;
    }
    request.extensions_mut().insert(ThroughHook);
    let mut response: Response<BoxBody> = match app.call(request).await {
        Ok(response) => Response::from(response).map_into_boxed_body(),
        Err(error) => error.error_response().into(),
    };
    let upgraded = response.extensions_mut().remove::<Upgraded>();
    let upgraded = match upgraded {
        Some(upgraded) if response.status() == StatusCode::SWITCHING_PROTOCOLS => upgraded,
        // A refusal (or, were a route to answer 101 without a connection, that answer).
        _ => {
            respond(framed, response).await;
            return None;
        }
    };
    let (head, _body) = response.into_parts();
    let mut out = BytesMut::new();
    if let Err(error) = framed
        .codec_mut()
        .encode(Message::Item((head, BodySize::None)), &mut out)
    {
        tracing::debug!(%error, "websocket handshake response not encoded");
        return None;
    }
    let parts = framed.into_parts();
    // The dispatcher's read buffer is 8 KiB or more: keep only what it holds, if anything
    // (a client may send its first message without waiting for the 101).
    let buffered = if parts.read_buf.is_empty() {
        BytesMut::new()
    } else {
        BytesMut::from(&parts.read_buf[..])
    };
    Some(Driver::new(parts.io, upgraded.0, buffered, out.freeze()))
}

/// Writes a whole response (head and body) and closes the connection: an upgrade request
/// that was not accepted gets its answer and nothing after it.
async fn respond(mut framed: Framed<TcpStream, Codec>, response: Response<BoxBody>) {
    let (mut head, body) = response.into_parts();
    let body = actix_http::body::to_bytes(body).await.unwrap_or_default();
    head.head_mut().set_connection_type(ConnectionType::Close);
    let written = async {
        framed
            .feed(Message::Item((head, BodySize::Sized(body.len() as u64))))
            .await?;
        if !body.is_empty() {
            framed.feed(Message::Chunk(Some(body))).await?;
        }
        framed.send(Message::Chunk(None)).await
    };
    if written.await.is_err() {
        return;
    }
    let socket = framed.into_parts().io;
    let mut linger = Linger::new(&socket);
    std::future::poll_fn(|cx| linger.poll(cx, &socket)).await;
}

/// One accepted WebSocket connection on its socket: writes what the body hands out (the 101
/// first), while the body's decoder reads the same socket.
pub struct Driver {
    socket: Rc<TcpStream>,
    /// `None` once the body has ended (its last frames are in `unsent` or written).
    body: Option<Box<WsBody<Connection>>>,
    /// Taken from the body, not yet written.
    unsent: Bytes,
    /// After the last frame: the wait for the peer's close.
    linger: Option<Linger>,
}

impl Driver {
    fn new(
        socket: TcpStream,
        mut body: Box<WsBody<Connection>>,
        buffered: BytesMut,
        response: Bytes,
    ) -> Driver {
        let socket = Rc::new(socket);
        let attached = body
            .run_mut()
            .is_some_and(|run| run.attach(Rc::clone(&socket), buffered));
        if !attached {
            // The connection ended while it was being prepared (a refused credential closes
            // at once): its closing frames are in the body, which still runs to write them.
            tracing::debug!("websocket connection ended before its socket was attached");
        }
        Driver {
            socket,
            body: Some(body),
            unsent: response,
            linger: None,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            while !self.unsent.is_empty() {
                match self.socket.poll_write_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
                match self.socket.try_write(&self.unsent) {
                    Ok(0) => return Poll::Ready(()),
                    Ok(written) => self.unsent.advance(written),
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                    // The peer has gone: dropping the body drops the session.
                    Err(_) => return Poll::Ready(()),
                }
            }
            if let Some(linger) = self.linger.as_mut() {
                return linger.poll(cx, &self.socket);
            }
            let Some(body) = self.body.as_mut() else {
                self.linger = Some(Linger::new(&self.socket));
                continue;
            };
            match Pin::new(&mut **body).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => self.unsent = chunk,
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => self.body = None,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The end of a connection: the socket is shut for writing, then read and discarded until
/// the peer closes or [`CLOSE_LINGER`] has passed. Closing with unread input would reset the
/// connection, and a reset can destroy the close frame before the peer reads it.
struct Linger {
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Linger {
    fn new(socket: &TcpStream) -> Linger {
        if let Err(error) = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Write) {
            tracing::debug!(%error, "websocket socket not shut for writing");
        }
        Linger {
            deadline: Box::pin(tokio::time::sleep(CLOSE_LINGER)),
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>, socket: &TcpStream) -> Poll<()> {
        let mut scratch = [0u8; 512];
        loop {
            // Checked on every round, so a peer that keeps sending cannot hold this here.
            if self.deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            match socket.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => match socket.try_read(&mut scratch) {
                    Ok(0) => return Poll::Ready(()),
                    Ok(_) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return Poll::Ready(()),
                },
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
