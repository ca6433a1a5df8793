//! The activity map page (`/`), served from the binary: `web/index.html`, `web/style.css` and
//! `web/dist/app.js` (the page's code bundled with sigma.js and graphology by
//! `scripts/web-build`, from the npm lockfile in `web/`) are embedded at build time, so the page
//! needs nothing outside the machine and the binary nothing beyond crates.io to build.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX: &str = include_str!("../web/index.html");
const STYLE: &str = include_str!("../web/style.css");
const APP: &str = include_str!("../web/dist/app.js");

/// `/` (and `/index.html`), `/style.css` and `/app.js`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    let asset = |content_type: &'static str, body: &'static str| {
        // Revalidated on every load: a new binary serves a new page at once.
        move || async move {
            ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
        }
    };
    axum::Router::new()
        .route("/", get(asset("text/html; charset=utf-8", INDEX)))
        .route("/index.html", get(asset("text/html; charset=utf-8", INDEX)))
        .route("/style.css", get(asset("text/css; charset=utf-8", STYLE)))
        .route("/app.js", get(asset("text/javascript; charset=utf-8", APP)))
}
