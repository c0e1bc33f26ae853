//! The answers switchyard gives itself: its errors, fixed responses and redirects.

use bytes::Bytes;
use http::header;
use http::Response;
use http_body_util::{Either, Full};

use super::headers::{request_host, split_port};
use super::{ConnInfo, ResponseBody};
use crate::config::{FixedResponse, Redirect};
use crate::error::{ProxyError, ERROR_HEADER};

pub fn error(e: ProxyError, detail: impl std::fmt::Display) -> Response<ResponseBody> {
    let body = format!(
        "switchyard: {}: {detail}\n",
        e.status().canonical_reason().unwrap_or("")
    );
    Response::builder()
        .status(e.status())
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(ERROR_HEADER, e.code())
        .body(Either::Right(Full::new(Bytes::from(body))))
        .expect("valid error response")
}

pub(super) fn fixed(f: &FixedResponse) -> Response<ResponseBody> {
    Response::builder()
        .status(f.status)
        .header(header::CONTENT_TYPE, f.content_type.as_str())
        .body(Either::Right(Full::new(Bytes::from(f.body.clone()))))
        .unwrap_or_else(|_| error(ProxyError::NoRoute, "bad fixed response"))
}

pub(super) fn redirect(
    r: &Redirect,
    req: &http::request::Parts,
    conn: &ConnInfo,
) -> Response<ResponseBody> {
    let (orig_host, orig_port) = split_port(request_host(req).unwrap_or(""));
    let orig_scheme = if conn.tls { "https" } else { "http" };
    let orig_path = req.uri.path();
    let orig_query = req.uri.query().unwrap_or("");
    // ALB's placeholders: #{host}, #{path}, #{port}, #{query}, #{protocol}.
    let fill = |s: &str| {
        s.replace("#{host}", orig_host)
            .replace("#{path}", orig_path)
            .replace("#{port}", orig_port.unwrap_or(""))
            .replace("#{query}", orig_query)
            .replace("#{protocol}", orig_scheme)
    };
    let scheme = r.scheme.as_deref().unwrap_or(orig_scheme);
    let host = r
        .host
        .as_deref()
        .map_or_else(|| orig_host.to_string(), fill);
    let port = match (r.port, &r.host, &r.scheme) {
        (Some(p), _, _) => Some(p.to_string()),
        // A new host or scheme drops the original port, as it would not fit.
        (None, None, None) => orig_port.map(str::to_string),
        _ => None,
    };
    let path = r
        .path
        .as_deref()
        .map_or_else(|| orig_path.to_string(), fill);
    let query = r
        .query
        .as_deref()
        .map_or_else(|| orig_query.to_string(), fill);
    let default_port = (scheme == "https" && port.as_deref() == Some("443"))
        || (scheme == "http" && port.as_deref() == Some("80"));
    let mut location = format!("{scheme}://{host}");
    if let Some(p) = port.filter(|_| !default_port) {
        location.push(':');
        location.push_str(&p);
    }
    location.push_str(&path);
    if !query.is_empty() {
        location.push('?');
        location.push_str(&query);
    }
    Response::builder()
        .status(r.status)
        .header(header::LOCATION, location)
        .body(Either::Right(Full::new(Bytes::new())))
        .unwrap_or_else(|_| error(ProxyError::NoRoute, "redirect target is not a valid URL"))
}
