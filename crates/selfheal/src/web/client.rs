//! Who sent a request: [`ClientKey`] (how the layer tells clients apart)
//! and the [`Client`] it captures from each request.
//!
//! Apart from the layer because the request context keeps a captured
//! client to charge failures to, and the layer only chooses the key.

use axum::http::{HeaderValue, Request};

use crate::health::ClientId;

/// How [`HealLayer`](super::HealLayer) tells a request's client apart, so that failures
/// caused by one client (its input) do not move the monitor's status or fire
/// alerts: see [`ClientId`](crate::health::ClientId).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientKey {
    /// The TCP peer's IP address (an IPv6 address's /64), from axum's `ConnectInfo<SocketAddr>`
    /// (serve with `into_make_service_with_connect_info::<SocketAddr>()`).
    /// Without it, requests have no client and every failure counts. The
    /// default.
    PeerAddress,
    /// The last value of this header, as set by a reverse proxy you trust
    /// (`x-real-ip`, or the last hop of `x-forwarded-for`): behind a load
    /// balancer every peer address is the balancer's. Falls back to the
    /// peer address when the header is absent.
    Header(axum::http::HeaderName),
    /// No client: every failure counts for the status (the behaviour before
    /// client keys).
    None,
}

impl ClientKey {
    /// What the request says about its client, kept as it is (an address,
    /// a header value's bytes): hashed into a [`ClientId`] only when the
    /// request fails, so a request that succeeds pays an extension lookup
    /// and nothing else.
    pub(super) fn capture<B>(&self, req: &Request<B>) -> Client {
        self.capture_parts(req.headers(), req.extensions())
    }

    /// [`capture`](Self::capture) from a request's headers and extensions.
    pub(super) fn capture_parts(
        &self,
        headers: &axum::http::HeaderMap,
        extensions: &axum::http::Extensions,
    ) -> Client {
        let peer = || {
            extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|info| info.0.ip())
        };
        match self {
            Self::PeerAddress => Client::Peer(peer()),
            Self::Header(name) => match headers.get_all(name).iter().next_back() {
                Some(value) => Client::Forwarded(value.clone()),
                None => Client::Peer(peer()),
            },
            Self::None => Client::Peer(None),
        }
    }
}

/// A request's client as captured by [`ClientKey::capture`].
#[derive(Clone, Debug)]
pub(crate) enum Client {
    Peer(Option<std::net::IpAddr>),
    Forwarded(HeaderValue),
}

impl Client {
    /// The client's id (on the failure path only).
    pub(crate) fn id(&self) -> Option<ClientId> {
        match self {
            Self::Peer(ip) => ip.map(|ip| ClientId::of(network(ip))),
            Self::Forwarded(value) => {
                let value = value.as_bytes();
                // x-forwarded-for: the last hop is the one our proxy added.
                let last = value.rsplit(|b| *b == b',').next().unwrap_or(value);
                let last = last.trim_ascii();
                Some(
                    match std::str::from_utf8(last)
                        .ok()
                        .and_then(|s| s.parse::<std::net::IpAddr>().ok())
                    {
                        Some(ip) => ClientId::of(network(ip)),
                        None => ClientId::of(last),
                    },
                )
            }
        }
    }
}

/// The network a client address stands for: an IPv4 address itself, an
/// IPv6 address's /64 (one subscriber's prefix: an attacker holds a whole
/// /64 and can draw a new address for every request).
fn network(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V4(v4) => std::net::IpAddr::V4(v4),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                std::net::IpAddr::V6(prefix.into())
            }
        },
    }
}
