//! The pages, scripts and images, embedded in the binary (read from disk in debug builds).

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;

/// `web/`: the dashboard, pipeline view, shop, and `clickpulse.js`.
#[derive(RustEmbed)]
#[folder = "../../web/"]
struct Web;

/// `data/images/`: product pictures and offer popups.
#[derive(RustEmbed)]
#[folder = "../../data/images/"]
struct Images;

fn serve<E: RustEmbed>(path: &str) -> Response {
    match E::get(path) {
        Some(file) => {
            let mime = file.metadata.mimetype().to_owned();
            let mut response = file.data.into_owned().into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_str(&mime)
                    .unwrap_or(HeaderValue::from_static("application/octet-stream")),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        }
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

/// Whether the server has a popup picture for the shop's own offer named `offer`, and its URL.
pub fn offer_image(offer: &str) -> Option<String> {
    let path = format!("offers/{offer}.png");
    Images::get(&path).map(|_| format!("/images/{path}"))
}

/// The picture of catalogue product `id`, if the server has one.
pub fn product_image(id: &str) -> Option<String> {
    let path = format!("products/{id}.png");
    Images::get(&path).map(|_| format!("/images/{path}"))
}

/// Every picture the server serves, as `/images/...` paths (what a pattern's offer may show).
pub fn image_paths() -> Vec<String> {
    Images::iter().map(|p| format!("/images/{p}")).collect()
}

pub(crate) async fn dashboard() -> Response {
    serve::<Web>("index.html")
}

pub(crate) async fn pipeline() -> Response {
    serve::<Web>("pipeline.html")
}

pub(crate) async fn shop() -> Response {
    serve::<Web>("shop.html")
}

pub(crate) async fn shop_product(Path(_id): Path<String>) -> Response {
    serve::<Web>("shop.html")
}

pub(crate) async fn snippet() -> Response {
    serve::<Web>("clickpulse.js")
}

pub(crate) async fn asset(Path(path): Path<String>) -> Response {
    serve::<Web>(&format!("assets/{path}"))
}

pub(crate) async fn vendor(Path(path): Path<String>) -> Response {
    serve::<Web>(&format!("vendor/{path}"))
}

pub(crate) async fn image(Path(path): Path<String>) -> Response {
    serve::<Images>(&path)
}
