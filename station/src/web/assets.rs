//! The style sheet and the one script (refreshing the status, keeping the scan box focused),
//! compiled into the binary.

use axum::http::header;
use axum::response::IntoResponse;

/// `GET /static/station.css`
pub async fn css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../../templates/static/station.css"),
    )
}

/// `GET /static/station.js`
pub async fn js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../../templates/static/station.js"),
    )
}
