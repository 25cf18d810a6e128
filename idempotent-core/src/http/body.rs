//! The bodies the layer hands to the inner service and back to the client.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// Either a stream (with bytes already read from it, sent first) or bytes in memory, with
    /// the trailers that follow them (gRPC's status): what both of the layer's bodies are.
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Stream { prefix: Option<Bytes>, #[pin] body: B },
        Full { bytes: Option<Bytes>, trailers: Option<HeaderMap> },
    }
}

impl<B> Kind<B> {
    fn stream(prefix: Bytes, body: B) -> Self {
        Kind::Stream {
            prefix: (!prefix.is_empty()).then_some(prefix),
            body,
        }
    }

    fn full(bytes: Bytes, trailers: Option<HeaderMap>) -> Self {
        Kind::Full {
            bytes: (!bytes.is_empty()).then_some(bytes),
            trailers,
        }
    }
}

impl<B: Body<Data = Bytes>> Kind<B> {
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project() {
            KindProj::Stream { prefix, body } => match prefix.take() {
                Some(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                None => body.poll_frame(cx),
            },
            KindProj::Full { bytes, trailers } => Poll::Ready(match bytes.take() {
                Some(bytes) => Some(Ok(Frame::data(bytes))),
                None => trailers
                    .take()
                    .map(|trailers| Ok(Frame::trailers(trailers))),
            }),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Kind::Stream { prefix, body } => prefix.is_none() && body.is_end_stream(),
            Kind::Full { bytes, trailers } => bytes.is_none() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Kind::Stream { prefix, body } => {
                let extra = prefix.as_ref().map_or(0, |b| b.len() as u64);
                let inner = body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower().saturating_add(extra));
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper.saturating_add(extra));
                }
                hint
            }
            Kind::Full { bytes, .. } => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// The two public bodies are one `Kind` each; their `Body` impls only forward to it.
macro_rules! forward_body {
    ($($body:ident),*) => {$(
        impl<B: Body<Data = Bytes>> Body for $body<B> {
            type Data = Bytes;
            type Error = B::Error;

            fn poll_frame(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
                self.project().kind.poll_frame(cx)
            }

            fn is_end_stream(&self) -> bool {
                self.kind.is_end_stream()
            }

            fn size_hint(&self) -> SizeHint {
                self.kind.size_hint()
            }
        }
    )*};
}

forward_body!(RequestBody, ResponseBody);

pin_project! {
    /// The request body the inner service receives: the client's stream, untouched, for
    /// requests the layer lets through, or the bytes it read to fingerprint the request.
    ///
    /// It implements [`http_body::Body`], so axum's router and handlers take it like any body.
    #[derive(Debug)]
    pub struct RequestBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

impl<B> RequestBody<B> {
    pub(crate) fn stream(body: B) -> Self {
        RequestBody {
            kind: Kind::stream(Bytes::new(), body),
        }
    }

    pub(crate) fn buffered(bytes: Bytes) -> Self {
        RequestBody {
            kind: Kind::full(bytes, None),
        }
    }
}

pin_project! {
    /// The response body the layer returns: the inner service's stream, untouched (responses
    /// it does not store, requests it lets through), or bytes (stored responses, replays and
    /// the layer's own problem responses).
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn stream(body: B) -> Self {
        Self::prefixed(Bytes::new(), body)
    }

    /// `prefix`: what the layer already read of `body` before deciding not to store it.
    pub(crate) fn prefixed(prefix: Bytes, body: B) -> Self {
        ResponseBody {
            kind: Kind::stream(prefix, body),
        }
    }

    /// `bytes`, then `trailers` when there are any.
    pub(crate) fn full_with(bytes: Bytes, trailers: Option<HeaderMap>) -> Self {
        ResponseBody {
            kind: Kind::full(bytes, trailers.filter(|t| !t.is_empty())),
        }
    }
}

/// Reads a response body up to `limit` bytes.
pub(crate) enum Collected<B: Body> {
    /// The whole body, and its trailers (empty when it had none).
    Whole(Bytes, HeaderMap),
    /// Over the limit: what was read, and the rest of the stream.
    OverLimit(Bytes, B),
    /// The body failed.
    Failed(B::Error),
}

pub(crate) async fn collect_up_to<B>(mut body: B, limit: usize) -> Collected<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    use http_body_util::BodyExt as _;

    // Most handlers answer with one frame: keep it without copying.
    let mut first: Option<Bytes> = None;
    let mut more: Option<bytes::BytesMut> = None;
    let mut len = 0usize;
    let mut trailers = HeaderMap::new();
    loop {
        if len > limit {
            let read = join(first, more);
            return Collected::OverLimit(read, body);
        }
        let frame = match body.frame().await {
            None => return Collected::Whole(join(first, more), trailers),
            Some(Err(error)) => return Collected::Failed(error),
            Some(Ok(frame)) => frame,
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(more) = frame.into_trailers() {
                    trailers.extend(more);
                }
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        len = len.saturating_add(data.len());
        match (&mut first, &mut more) {
            (None, _) => first = Some(data),
            (Some(head), None) => {
                let mut joined = bytes::BytesMut::with_capacity(head.len() + data.len());
                joined.extend_from_slice(head);
                joined.extend_from_slice(&data);
                more = Some(joined);
            }
            (Some(_), Some(joined)) => joined.extend_from_slice(&data),
        }
    }
}

fn join(first: Option<Bytes>, more: Option<bytes::BytesMut>) -> Bytes {
    match (first, more) {
        (_, Some(joined)) => joined.freeze(),
        (Some(head), None) => head,
        (None, None) => Bytes::new(),
    }
}
