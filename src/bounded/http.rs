//! Reading an HTTP answer from a server switchyard does not control (Prometheus, an analysis
//! webhook, a hook endpoint) with a size cap: a 300 MB answer once raised the resident set
//! from 23 MB to 373 MB for good. Past the cap reading stops and the connection is dropped.

use bytes::Bytes;
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};

/// The most of an answer that is read: far above any instant query or verdict.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the answer is larger than {limit} bytes, the most switchyard reads")]
    TooLarge { limit: usize },
    #[error("reading the answer failed: {0}")]
    Read(String),
}

/// The whole body, or `TooLarge` as soon as it passes `limit` bytes (also when its
/// declared length already does, before anything is read).
pub async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, BodyError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(BodyError::TooLarge { limit }),
        Err(e) => Err(BodyError::Read(e.to_string())),
    }
}
