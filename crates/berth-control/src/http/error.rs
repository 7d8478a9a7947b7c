//! The one mapping from control-plane errors to HTTP responses.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_api::client::{STALE_EPOCH, WRONG_INSTANCE};
use berth_api::{ErrorBody, ErrorDetail};

use super::dto::lease_info;
use crate::error::Error;
use crate::volumes::VolumeErrorKind;

/// The most bytes of an error message the API returns (a few echoed inputs of
/// [`berth_core::ECHO_MAX`] each, and their context).
const MESSAGE_MAX: usize = 4 * berth_core::ECHO_MAX;

impl Error {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Error::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Error::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Error::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Error::LeaseHeld(_) => (StatusCode::CONFLICT, "lease_held"),
            Error::Fenced(_) => (StatusCode::CONFLICT, STALE_EPOCH),
            Error::WrongState(_) => (StatusCode::CONFLICT, "wrong_state"),
            Error::AtRisk(_) => (StatusCode::CONFLICT, "at_risk"),
            Error::WrongNonce(_) => (StatusCode::CONFLICT, "wrong_nonce"),
            Error::WrongInstance { .. } => (StatusCode::CONFLICT, WRONG_INSTANCE),
            Error::Draining { .. } => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
            Error::Busy { .. } => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            Error::Volume(v) => match v.kind {
                VolumeErrorKind::Temporary => (StatusCode::SERVICE_UNAVAILABLE, "substrate"),
                VolumeErrorKind::Permanent => (StatusCode::INTERNAL_SERVER_ERROR, "substrate"),
                VolumeErrorKind::Foreign => (StatusCode::CONFLICT, "volume_foreign"),
            },
            Error::Db(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Error::Migrate(_) | Error::Corrupt(_) | Error::Config(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!(event = "request_failed", code, error = %self);
        }
        let mut detail = ErrorDetail {
            code: code.to_string(),
            // A message may repeat what the client sent (a label, an owner); it is cut so an
            // error never echoes unbounded input.
            message: berth_core::bounded(&self.to_string(), MESSAGE_MAX),
            holder: None,
            current_epoch: None,
            presented_epoch: None,
            retry_after_secs: None,
            scope: None,
        };
        match &self {
            Error::LeaseHeld(held) => detail.holder = Some(lease_info(&held.holder, held.epoch, held.expires)),
            Error::Fenced(fenced) => {
                detail.current_epoch = fenced.current;
                detail.presented_epoch = Some(fenced.presented);
            }
            Error::Draining { scope, retry_after_secs } => {
                detail.scope = Some(scope.to_string());
                detail.retry_after_secs = Some(*retry_after_secs);
            }
            Error::Busy { retry_after_secs, .. } => detail.retry_after_secs = Some(*retry_after_secs),
            Error::Db(_) => detail.retry_after_secs = Some(1),
            _ => {}
        }
        let retry_after = detail.retry_after_secs;
        let mut resp = (status, Json(ErrorBody { error: detail })).into_response();
        if let Some(secs) = retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
