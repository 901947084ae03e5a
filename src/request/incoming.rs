//! The request model every transport builds: [`Incoming`], what the one decision
//! (`pipeline`) looks at, whichever parser read the request.

use http::header::HeaderValue;

use super::client::ClientAddr;
use crate::static_files::Conditions;

/// A request as every transport hands it to the decision: checked, its path normalised.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'r> {
    pub method: &'r str,
    /// Normalised ([`crate::request::path::normalise`]): what routes, what the backend gets.
    pub path: &'r str,
    pub query: Option<&'r str>,
    /// The target as it came (a redirect to HTTPS keeps it as the client wrote it).
    pub target: &'r str,
    pub fields: Fields<'r>,
    pub conditions: Conditions<'r>,
    /// The one host the request names (`Host`, or HTTP/2's `:authority`), as sent.
    pub host: Option<&'r [u8]>,
    /// Who sent it (the real client behind trusted proxies).
    pub client: &'r ClientAddr,
    /// It came over TLS.
    pub tls: bool,
    /// It came on a listener that sends clients to HTTPS (`tls.redirect_listen`).
    pub redirect_listener: bool,
    /// A real upgrade request (HTTP/1.1: `Upgrade` named by `Connection`).
    pub upgrade: bool,
    /// A body follows the head.
    pub has_body: bool,
    pub request_id: &'r str,
}

/// The request's header fields, however the transport holds them.
#[derive(Debug, Clone, Copy)]
pub enum Fields<'r> {
    /// The HTTP/1 parser's view of the head.
    Lines(&'r [httparse::Header<'r>]),
    /// A header map (HTTP/2, or a request Pingora read).
    Map(&'r http::HeaderMap),
}

impl Default for Fields<'_> {
    fn default() -> Self {
        Fields::Lines(&[])
    }
}

impl<'r> Fields<'r> {
    /// Every field as `(name, value)`, in order.
    pub fn iter(&self) -> FieldIter<'r> {
        match *self {
            Fields::Lines(h) => FieldIter::Lines(h.iter()),
            Fields::Map(m) => FieldIter::Map(m.iter()),
        }
    }

    /// Every value of `name` (lower case), in order.
    pub fn all(&self, name: &'static str) -> impl Iterator<Item = &'r [u8]> + 'r {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    pub fn first(&self, name: &'static str) -> Option<&'r [u8]> {
        self.all(name).next()
    }

    pub fn text(&self, name: &'static str) -> Option<&'r str> {
        self.first(name).and_then(|v| std::str::from_utf8(v).ok())
    }
}

pub enum FieldIter<'r> {
    Lines(std::slice::Iter<'r, httparse::Header<'r>>),
    Map(http::header::Iter<'r, HeaderValue>),
}

impl<'r> Iterator for FieldIter<'r> {
    type Item = (&'r str, &'r [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            FieldIter::Lines(i) => i.next().map(|h| (h.name, h.value)),
            FieldIter::Map(i) => i.next().map(|(k, v)| (k.as_str(), v.as_bytes())),
        }
    }
}
