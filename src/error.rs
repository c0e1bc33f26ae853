//! The errors switchyard itself answers with. Each has a stable code, sent in the
//! `x-switchyard-error` response header so clients and logs can tell a proxy failure from an
//! application's own error page.

use http::StatusCode;

pub const ERROR_HEADER: &str = "x-switchyard-error";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    NoRoute,
    NoHealthyTarget,
    UpstreamConnect,
    UpstreamReset,
    UpstreamTimeout,
    UpstreamProtocol,
    /// The client's request body broke off while it was being passed on.
    ClientBody,
    /// The client sent none of its request body for `timeouts.client_body`.
    ClientTimeout,
    /// The request body is larger than `limits.max_body_bytes`.
    BodyTooLarge,
    /// The route's host or path rewrite made no valid host or path of this request.
    BadRewrite,
    /// The connection was verified under client certificate settings its listener no
    /// longer has (or none): the client must come back through the present handshake.
    ClientCertificateSettingsChanged,
}

impl ProxyError {
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoHealthyTarget => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamConnect
            | ProxyError::UpstreamReset
            | ProxyError::UpstreamProtocol => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ClientBody => StatusCode::BAD_REQUEST,
            ProxyError::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BadRewrite => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::ClientCertificateSettingsChanged => StatusCode::MISDIRECTED_REQUEST,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::NoHealthyTarget => "no_healthy_target",
            ProxyError::UpstreamConnect => "upstream_connect_failed",
            ProxyError::UpstreamReset => "upstream_reset",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::UpstreamProtocol => "upstream_protocol_error",
            ProxyError::ClientBody => "client_body_error",
            ProxyError::ClientTimeout => "client_body_timeout",
            ProxyError::BodyTooLarge => "request_body_too_large",
            ProxyError::BadRewrite => "route_rewrite_invalid",
            ProxyError::ClientCertificateSettingsChanged => "client_certificate_settings_changed",
        }
    }
}
