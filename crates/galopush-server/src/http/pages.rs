//! The browser pages served from the binary itself (SPEC §13): the operator console at
//! `/console/` on the business API, and with `web.demo = true` the demo web terminal at
//! `/demo/` on the public listener, with the browser SDK beside it. Their files are in `web/` at
//! the repository's root (`web/common/` holds what both pages load) and are built in with
//! `include_str!`: there is nothing to build first and nothing is read from disk at run time.
//!
//! Who may fetch them: the console's files are served without the API token, because a browser
//! navigating to a page cannot send an `Authorization` header, and they hold no data — the page
//! asks for the token and sends it with each call it makes to the API, whose routes keep
//! requiring it. The demo's files are as public as the listener they are on, which is why they
//! are off by default.
//!
//! Each answer carries `Cache-Control: no-cache` and an `ETag` of its content, so a browser
//! asks again each time and gets `304 Not Modified` until the binary changes; and a
//! Content-Security-Policy that lets the page run only its own files and talk only to its own
//! origin (the demo also to the comets' WebSockets, which are on other ports).

use axum::Router as Routes;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
    /// FNV-1a of the body, for the `ETag`.
    hash: u64,
}

/// 64-bit FNV-1a, evaluated at compile time for each file.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

macro_rules! asset {
    ($name:literal, $type:expr, $file:literal) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_str!($file),
            hash: fnv1a(include_str!($file).as_bytes()),
        }
    };
}

/// A page: its files (the first is its `index.html`) and its Content-Security-Policy.
struct Page {
    assets: &'static [Asset],
    csp: &'static str,
}

static CONSOLE: Page = Page {
    assets: &[
        asset!("index.html", HTML, "../../../../web/console/index.html"),
        asset!("console.js", JS, "../../../../web/console/console.js"),
        asset!("api.js", JS, "../../../../web/console/api.js"),
        asset!("chart.js", JS, "../../../../web/console/chart.js"),
        asset!("console.css", CSS, "../../../../web/console/console.css"),
        asset!("base.css", CSS, "../../../../web/common/base.css"),
    ],
    csp: "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
          connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
};

static DEMO: Page = Page {
    assets: &[
        asset!("index.html", HTML, "../../../../web/demo/index.html"),
        asset!("demo.js", JS, "../../../../web/demo/demo.js"),
        asset!("demo.css", CSS, "../../../../web/demo/demo.css"),
        asset!("base.css", CSS, "../../../../web/common/base.css"),
        asset!("galopush.js", JS, "../../../../web/sdk/galopush.js"),
    ],
    csp: "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
          connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; \
          frame-ancestors 'none'",
};

/// The console's routes: `/console/` and its files; `/console` redirects there.
pub fn console<S: Clone + Send + Sync + 'static>() -> Routes<S> {
    page_routes("/console", &CONSOLE)
}

/// The demo terminal's routes: `/demo/`, its files and the SDK; `/demo` redirects there.
pub fn demo<S: Clone + Send + Sync + 'static>() -> Routes<S> {
    page_routes("/demo", &DEMO)
}

fn page_routes<S: Clone + Send + Sync + 'static>(
    at: &'static str,
    page: &'static Page,
) -> Routes<S> {
    Routes::new()
        .route(
            at,
            get(move || async move { Redirect::permanent(&format!("{at}/")) }),
        )
        .route(
            &format!("{at}/"),
            get(move |headers: HeaderMap| async move { serve(page, "index.html", &headers) }),
        )
        .route(
            &format!("{at}/{{file}}"),
            get(
                move |Path(file): Path<String>, headers: HeaderMap| async move {
                    serve(page, &file, &headers)
                },
            ),
        )
}

/// One of the page's files, `304` when the browser has it already, `404` for any other name.
fn serve(page: &Page, name: &str, headers: &HeaderMap) -> Response {
    let Some(asset) = page.assets.iter().find(|a| a.name == name) else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    let etag = format!("\"{:016x}\"", asset.hash);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let h = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, etag);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(page.csp),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_has_a_type_and_content_and_an_index() {
        for page in [&CONSOLE, &DEMO] {
            assert_eq!(page.assets[0].name, "index.html");
            for a in page.assets {
                assert!(!a.body.is_empty(), "{} is empty", a.name);
                let ext = a.name.rsplit_once('.').map_or("", |(_, e)| e);
                let expected = match ext {
                    "html" => HTML,
                    "js" => JS,
                    "css" => CSS,
                    other => panic!("{}: no content type for .{other}", a.name),
                };
                assert_eq!(a.content_type, expected, "{}", a.name);
            }
        }
    }

    #[test]
    fn every_file_of_web_console_web_demo_and_web_common_is_served() {
        let web = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web");
        let pages: [(&str, &[&Page]); 3] = [
            ("console", &[&CONSOLE]),
            ("demo", &[&DEMO]),
            ("common", &[&CONSOLE, &DEMO]),
        ];
        for (dir, pages) in pages {
            let on_disk = std::fs::read_dir(web.join(dir)).expect("web/ folder");
            for entry in on_disk {
                let name = entry.expect("entry").file_name();
                let name = name.to_string_lossy();
                for page in pages {
                    assert!(
                        page.assets.iter().any(|a| a.name == name),
                        "web/{dir}/{name} is not built into the binary (add it to pages.rs)"
                    );
                }
            }
        }
    }

    #[test]
    fn the_etag_follows_the_content() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(CONSOLE.assets[0].hash, DEMO.assets[0].hash);
    }
}
