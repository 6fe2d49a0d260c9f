//! Raw requests to one node, for tests about bytes, statuses and headers: bodies sent as
//! given (malformed ones too), answers kept as they came ([`Reply`], [`RawReply`]), redirects
//! not followed. The calls whose answers tests read are in `api`, through `keel_api`.

use reqwest::Url;
use reqwest::blocking::RequestBuilder;
use serde_json::Value;

use crate::{NodeId, Response, TestCluster};

/// A raw HTTP answer with a binary body, e.g. a database backup.
#[derive(Clone, Debug)]
pub struct RawReply {
    /// The HTTP status code.
    pub status: u16,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The `Content-Encoding` header, if any.
    pub content_encoding: Option<String>,
    /// The body, as received (never decompressed).
    pub body: Vec<u8>,
}

impl RawReply {
    /// The body as text (lossily decoded), for failure messages and text formats.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw HTTP answer, for tests about status codes and headers.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The HTTP status code.
    pub status: u16,
    /// The `Location` header, if any (redirects are never followed).
    pub location: Option<String>,
    /// The body, as text.
    pub body: String,
}

impl Reply {
    /// Parses the body as JSON; panics with the body if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|error| {
            panic!("answer (status {}) is not JSON ({error}): {}", self.status, self.body)
        })
    }

    /// Parses the body as `T` (one of `keel_api`'s wire types); panics with the body if it is
    /// not one.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_str(&self.body).unwrap_or_else(|error| {
            let name = std::any::type_name::<T>();
            panic!("answer (status {}) is not a {name} ({error}): {}", self.status, self.body)
        })
    }

    /// Parses the body as a database answer; panics with the body if it is not one.
    pub fn answer(&self) -> Response {
        let answer = serde_json::from_str(&self.body).unwrap_or_else(|error| {
            panic!(
                "answer (status {}) is not a database answer ({error}): {}",
                self.status, self.body
            )
        });
        Response(answer)
    }
}

impl TestCluster {
    // ---- Client ----------------------------------------------------------------------------

    /// `http://<node id's HTTP address><path_and_query>`.
    pub fn url(&self, id: NodeId, path_and_query: &str) -> Url {
        let url = format!("http://{}{path_and_query}", self.node(id).http_addr);
        Url::parse(&url).unwrap_or_else(|error| panic!("bad URL {url}: {error}"))
    }

    /// Sends a request and collects the answer; `Err` on a transport error.
    fn send(request: RequestBuilder) -> Result<Reply, reqwest::Error> {
        let response = request.send()?;
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
        let body = response.text()?;
        Ok(Reply { status, location, body })
    }

    /// `GET path_and_query` on node `id`; panics on a transport error.
    pub fn get(&self, id: NodeId, path_and_query: &str) -> Reply {
        let url = self.url(id, path_and_query);
        Self::send(self.clients.raw.get(url.clone()))
            .unwrap_or_else(|error| panic!("GET {url}: {error}"))
    }

    /// The value of the unlabelled metric `name` in node `id`'s `/metrics`; panics if absent.
    pub fn metric(&self, id: NodeId, name: &str) -> f64 {
        let text = self.get(id, "/metrics").body;
        let line = text.lines().find(|l| l.split_whitespace().next() == Some(name));
        let value = line.and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok());
        value.unwrap_or_else(|| panic!("no {name} in node {id}'s metrics:\n{text}"))
    }

    /// Sends a request and collects the answer with its body as bytes; `Err` on a transport
    /// error.
    fn send_raw(request: RequestBuilder) -> Result<RawReply, reqwest::Error> {
        let response = request.send()?;
        let header = |name| {
            response.headers().get(name).map(|value: &reqwest::header::HeaderValue| {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            })
        };
        let status = response.status().as_u16();
        let content_type = header(reqwest::header::CONTENT_TYPE);
        let content_encoding = header(reqwest::header::CONTENT_ENCODING);
        let body = response.bytes()?.to_vec();
        Ok(RawReply { status, content_type, content_encoding, body })
    }

    /// `GET path_and_query` on node `id`, keeping the body as bytes (e.g. `/db/backup`); panics
    /// on a transport error.
    pub fn get_raw(&self, id: NodeId, path_and_query: &str) -> RawReply {
        let url = self.url(id, path_and_query);
        Self::send_raw(self.clients.raw.get(url.clone()))
            .unwrap_or_else(|error| panic!("GET {url}: {error}"))
    }

    /// `POST path_and_query` on node `id` with `body` as is and the given `Content-Type` (e.g.
    /// `/db/load`); panics on a transport error.
    pub fn post_raw(
        &self,
        id: NodeId,
        path_and_query: &str,
        content_type: &str,
        body: impl Into<Vec<u8>>,
    ) -> RawReply {
        let url = self.url(id, path_and_query);
        let request = self
            .clients
            .raw
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body.into());
        Self::send_raw(request).unwrap_or_else(|error| panic!("POST {url}: {error}"))
    }

    /// `POST path_and_query` on node `id` with a JSON body (sent as is, so it may be invalid);
    /// panics on a transport error.
    pub fn post(&self, id: NodeId, path_and_query: &str, body: impl Into<String>) -> Reply {
        self.post_url(self.url(id, path_and_query).as_str(), body)
    }

    /// `POST url` with a JSON body, e.g. to follow a redirect; panics on a transport error.
    pub fn post_url(&self, url: &str, body: impl Into<String>) -> Reply {
        let request = self
            .clients
            .raw
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.into());
        Self::send(request).unwrap_or_else(|error| panic!("POST {url}: {error}"))
    }

    /// `DELETE path_and_query` on node `id` with a JSON body (sent as is, e.g. rqlite's
    /// `/remove`); panics on a transport error.
    pub fn delete(&self, id: NodeId, path_and_query: &str, body: impl Into<String>) -> Reply {
        let url = self.url(id, path_and_query);
        let request = self
            .clients
            .raw
            .delete(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.into());
        Self::send(request).unwrap_or_else(|error| panic!("DELETE {url}: {error}"))
    }

    /// `GET /db/query?<params>&q=<sql>` on node `id`, e.g. with params
    /// `"level=none&min_lsn=7&timeout=300ms"` (sent as is, so presence-only flags such as
    /// `freshness_strict` work); the raw answer whatever its status, or `Err` with a description
    /// on a transport error. For tests about read parameters and for readers that expect some
    /// requests to fail.
    pub fn try_query_with(&self, id: NodeId, sql: &str, params: &str) -> Result<Reply, String> {
        let mut url = self.url(id, "/db/query");
        url.query_pairs_mut().append_pair("q", sql);
        if !params.is_empty() {
            let q = url.query().unwrap_or_default().to_string();
            url.set_query(Some(&format!("{params}&{q}")));
        }
        Self::send(self.clients.raw.get(url.clone())).map_err(|error| format!("GET {url}: {error}"))
    }

    /// Like [`TestCluster::try_query_with`], panicking on a transport error.
    pub fn query_with(&self, id: NodeId, sql: &str, params: &str) -> Reply {
        self.try_query_with(id, sql, params).unwrap_or_else(|error| panic!("{error}"))
    }
}
