//! The pattern endpoints (list, hot-swap, delete, the transition log) and the directory
//! watcher: the two ways the active patterns change, serialised by one lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use clickpulse_engine::funnel::{FunnelRegistry, FunnelSet};
use clickpulse_engine::pattern::{
    Catalogue, PatternDir, PatternErrors, PatternRegistry, Profile, TransitionLog, dir_fingerprint,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{AppError, AppState, require_admin};

/// What the pattern endpoints work on.
#[derive(Clone)]
pub struct PatternAdmin {
    /// The active patterns, shared with the detection stage.
    pub registry: PatternRegistry,
    /// Where pattern files live.
    pub dir: PatternDir,
    /// Recent transitions, written by the detection stage.
    pub log: Arc<Mutex<TransitionLog>>,
    /// The last reload error of the directory watcher, if the directory is currently invalid.
    pub last_error: Arc<Mutex<Option<String>>>,
    /// What a pattern may name (categories, products, the shop's offers, pictures): a PUT
    /// naming anything else is rejected, as `clickpulse patterns check` would. `None`: values
    /// are not checked.
    pub catalogue: Option<Arc<Catalogue>>,
}

/// Serializes every change of the pattern files and of the active set in this process: a
/// change's file write (or delete), the reload of the directory and the registry swap happen
/// under it as one step, and the directory watcher's reload takes it too. Without it two
/// concurrent PUTs could each compute the set without the other's file and the later swap
/// would drop a pattern that is on disk, and concurrent DELETEs of one name found the file
/// already gone and answered 400.
static WRITES: Mutex<()> = Mutex::new(());

impl PatternAdmin {
    /// Holds pattern changes off while the guard lives: for anything that writes the pattern
    /// files or swaps the active set outside these endpoints (the directory watcher).
    pub fn lock_writes() -> std::sync::MutexGuard<'static, ()> {
        WRITES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Calls `changed` after each change of `fingerprint`, polled four times a second until
/// `shutdown` (and 100 ms after the change, to let a writer finish). Polling works on every
/// filesystem and a second is well within what a marketer notices.
fn on_changes(fingerprint: impl Fn() -> String, shutdown: &AtomicBool, mut changed: impl FnMut()) {
    let mut seen = fingerprint();
    while !shutdown.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(250));
        if fingerprint() == seen {
            continue;
        }
        thread::sleep(Duration::from_millis(100));
        seen = fingerprint();
        changed();
    }
}

/// Watches the pattern directory: a valid change replaces the active patterns, an invalid one
/// is logged (and shown in `/api/patterns`) while the old patterns keep running.
pub fn watch_patterns(
    dir: &PatternDir,
    registry: &PatternRegistry,
    shutdown: &AtomicBool,
    last_error: &Mutex<Option<String>>,
) {
    on_changes(
        || dir.fingerprint(),
        shutdown,
        || {
            // The admin API's changes are made under this lock (file, reload, swap as one step):
            // a reload outside it could swap in a set read before a change, dropping an active
            // pattern until the next reload.
            let _writes = PatternAdmin::lock_writes();
            match dir.load() {
                Ok(set) if set == *registry.current() => {}
                Ok(set) => {
                    let names: Vec<String> = set
                        .patterns()
                        .iter()
                        .map(|p| format!("{}@{}", p.name, p.version))
                        .collect();
                    tracing::info!(patterns = ?names, "Patterns reloaded.");
                    registry.replace(set);
                    *last_error.lock().expect("last error lock") = None;
                }
                Err(errors) => {
                    tracing::warn!(%errors, "Pattern change rejected; the previous patterns keep running.");
                    *last_error.lock().expect("last error lock") = Some(errors.to_string());
                }
            }
        },
    );
}

/// Watches the funnel directory `dir`: a valid change replaces the funnels the dashboard counts
/// (from the events that arrive after it), an invalid one is logged while the old funnels keep
/// counting.
pub fn watch_funnels(dir: &std::path::Path, registry: &FunnelRegistry, shutdown: &AtomicBool) {
    on_changes(
        || dir_fingerprint(dir),
        shutdown,
        || match FunnelSet::load(dir) {
            Ok(set) if set == *registry.current() => {}
            Ok(set) => {
                let names: Vec<&str> = set.funnels().iter().map(|f| f.name.as_str()).collect();
                tracing::info!(funnels = ?names, "Funnels reloaded.");
                registry.replace(set);
            }
            Err(errors) => {
                tracing::warn!(%errors, "Funnel change rejected; the previous funnels keep counting.");
            }
        },
    );
}

fn admin(state: &AppState) -> Result<&PatternAdmin, AppError> {
    state.patterns.as_ref().ok_or_else(|| {
        AppError::NotFound("pattern detection does not run in this process".to_owned())
    })
}

/// `GET /api/patterns?gender=F&age=30`: with a shopper's chosen gender and age, each pattern
/// also says whether they are in its audience (`for_you`; `null` when that depends on more than
/// gender, age and the device class of the request's user agent).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    gender: Option<String>,
    age: Option<u32>,
}

pub(crate) async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    let admin = admin(&state)?;
    let set = admin.registry.current();
    let profile = match (&query.gender, query.age) {
        (None, None) => None,
        (gender, age) => {
            let gender = match gender.as_deref() {
                None => clickpulse_engine::Gender::U,
                Some(g) => g.parse().map_err(AppError::BadRequest)?,
            };
            let user_agent = headers
                .get(axum::http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            Some(Profile {
                gender,
                age,
                device: clickpulse_engine::enrich::device_of_user_agent(user_agent),
            })
        }
    };
    let patterns: Vec<Value> = set
        .patterns()
        .iter()
        .map(|p| {
            let mut v = json!({
                "name": p.name,
                "version": p.version,
                "description": p.description,
                "explanation": p.explain(),
                "in_plain_words": p.in_plain_words(),
                "offers": p.offers,
                "source": p.source,
                "states": p.states,
            });
            if let Some(profile) = &profile {
                v["for_you"] = json!(p.admits(profile));
            }
            v
        })
        .collect();
    Ok(Json(json!({
        // The folder's name, not where it is on the server's disk (this route is public).
        "dir": admin
            .dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        "patterns": patterns,
        "last_error": admin.last_error.lock().expect("last error lock").clone(),
    })))
}

fn rejected(errors: PatternErrors) -> AppError {
    AppError::BadRequest(format!(
        "pattern rejected; the active patterns keep running:\n{errors}"
    ))
}

pub(crate) async fn put(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<String, axum::extract::rejection::StringRejection>,
) -> Result<Json<Value>, AppError> {
    require_admin(&state, &headers)?;
    let body = body.map_err(|rejection| {
        crate::limits::body_error(
            rejection.status(),
            &rejection,
            crate::limits::MAX_BODY_BYTES,
        )
    })?;
    let admin = admin(&state)?.clone();
    let (set, version) = tokio::task::spawn_blocking(move || {
        let _writes = PatternAdmin::lock_writes();
        let set = match &admin.catalogue {
            Some(catalogue) => admin.dir.write_checked(&name, &body, catalogue)?,
            None => admin.dir.write(&name, &body)?,
        };
        let version = set
            .get(&name)
            .map(|p| p.version.clone())
            .unwrap_or_default();
        admin.registry.replace(set.clone());
        *admin.last_error.lock().expect("last error lock") = None;
        Ok::<_, PatternErrors>((set, version))
    })
    .await
    .map_err(|e| AppError::Internal(e.to_string()))?
    .map_err(rejected)?;
    tracing::info!(
        version,
        patterns = set.patterns().len(),
        "Pattern activated through the API."
    );
    Ok(Json(
        json!({"version": version, "active": set.patterns().iter().map(|p| &p.name).collect::<Vec<_>>()}),
    ))
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    require_admin(&state, &headers)?;
    let admin = admin(&state)?.clone();
    let set = tokio::task::spawn_blocking(move || {
        let _writes = PatternAdmin::lock_writes();
        // Checked under the lock: of concurrent DELETEs of one name, one deletes, the others
        // find it gone (404), as it happened.
        if admin.registry.current().get(&name).is_none() {
            return Err(AppError::NotFound(format!("no active pattern {name:?}")));
        }
        let set = admin.dir.delete(&name).map_err(rejected)?;
        admin.registry.replace(set.clone());
        Ok::<_, AppError>(set)
    })
    .await
    .map_err(|e| AppError::Internal(e.to_string()))??;
    Ok(Json(
        json!({"active": set.patterns().iter().map(|p| &p.name).collect::<Vec<_>>()}),
    ))
}

#[derive(Deserialize)]
pub(crate) struct LogQuery {
    visitor: Option<String>,
    limit: Option<usize>,
    /// See [`crate::privacy`]: the viewer token, and a visitor's own id and identity token.
    viewer: Option<String>,
    me: Option<String>,
    token: Option<String>,
}

/// The state-machine log. Visitors are pseudonymised for whoever may not see them
/// ([`crate::privacy`]); a visitor with its identity token sees its own steps in full, and a
/// filter names a visitor as the requester sees it (its pseudonym, or its id).
pub(crate) async fn log(
    State(state): State<AppState>,
    Query(q): Query<LogQuery>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, AppError> {
    use crate::privacy::Audience;
    let admin = admin(&state)?;
    let privacy = crate::privacy::of(&state);
    let audience = privacy.audience(
        &headers,
        q.viewer.as_deref(),
        q.me.as_deref(),
        q.token.as_deref(),
    );
    let limit = q.limit.unwrap_or(100).min(1_000);
    let visitor = q.visitor.as_deref().filter(|v| !v.is_empty());
    let records = {
        let log = admin.log.lock().expect("transition log lock");
        match (&audience, visitor) {
            (Audience::Viewer, v) => log.recent(v, limit),
            (Audience::Public { me: Some(me) }, Some(v)) if me == v => log.recent(Some(v), limit),
            (Audience::Public { .. }, Some(v)) => log
                .recent(None, usize::MAX)
                .into_iter()
                .filter(|r| privacy.names(&audience, v, &r.visitor))
                .take(limit)
                .collect(),
            (Audience::Public { .. }, None) => log.recent(None, limit),
        }
    };
    let records: Vec<Value> = records
        .into_iter()
        .map(|r| {
            let shown = privacy.visitor_for(&audience, &r.visitor);
            let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
            v["visitor"] = Value::from(shown);
            v
        })
        .collect();
    Ok(Json(json!({"visitor": visitor, "transitions": records})))
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use clickpulse_engine::metrics::PipelineMetrics;
    use clickpulse_engine::pattern::PatternSet;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    const PATTERN: &str =
        "name = \"shoes\"\n[offer]\ndefault = \"o\"\n[[step]]\nwhen = { category = \"shoes\" }\n";

    fn setup() -> (tempfile::TempDir, PatternAdmin, Router) {
        setup_with(None)
    }

    fn setup_with(catalogue: Option<Catalogue>) -> (tempfile::TempDir, PatternAdmin, Router) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = PatternDir::new(tmp.path()).unwrap();
        let admin = PatternAdmin {
            registry: PatternRegistry::new(PatternSet::default()),
            dir,
            log: Arc::new(Mutex::new(TransitionLog::default())),
            last_error: Arc::new(Mutex::new(None)),
            catalogue: catalogue.map(Arc::new),
        };
        let router = crate::app(AppState {
            patterns: Some(admin.clone()),
            admin_token: Some(Arc::from("secret")),
            ..AppState::new(
                Arc::new(PipelineMetrics::default()),
                "embedded",
                Arc::new(clickpulse_engine::topology::Topology::with_sources([])),
            )
        });
        (tmp, admin, router)
    }

    async fn send(
        router: &Router,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: &str,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        let response = router
            .clone()
            .oneshot(request.body(Body::from(body.to_owned())).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn put_needs_the_token_validates_and_activates() {
        let (tmp, admin, router) = setup();
        let (status, _) = send(&router, "PUT", "/api/patterns/shoes", None, PATTERN).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = send(
            &router,
            "PUT",
            "/api/patterns/shoes",
            Some("wrong"),
            PATTERN,
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        let (status, body) = send(
            &router,
            "PUT",
            "/api/patterns/shoes",
            Some("secret"),
            PATTERN,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(admin.registry.current().patterns().len(), 1);
        assert!(tmp.path().join("shoes.toml").exists());

        let broken = PATTERN.replace("category", "categry");
        let (status, body) = send(
            &router,
            "PUT",
            "/api/patterns/shoes",
            Some("secret"),
            &broken,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("step[0].when.categry"),
            "{body}"
        );
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("shoes.toml")).unwrap(),
            PATTERN,
            "old file kept"
        );

        let (status, body) = send(
            &router,
            "PUT",
            "/api/patterns/boots",
            Some("secret"),
            PATTERN,
        )
        .await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "the name in the file must match: {body}"
        );

        let (status, body) = send(&router, "GET", "/api/patterns", None, "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["patterns"][0]["name"], "shoes");
        assert!(
            body["patterns"][0]["explanation"]
                .as_str()
                .unwrap()
                .contains("category is shoes")
        );

        let (status, _) = send(&router, "DELETE", "/api/patterns/shoes", Some("secret"), "").await;
        assert_eq!(status, StatusCode::OK);
        assert!(admin.registry.current().is_empty());
    }

    /// A PUT checks values as `patterns check` does, with every error at once and its line.
    #[tokio::test]
    async fn put_checks_values_against_the_catalogue() {
        let catalogue = Catalogue {
            categories: vec!["clothing".into(), "shoes".into()],
            products: vec!["P1".into()],
            offers: vec!["o".into()],
            images: vec!["/images/offers/o.png".into()],
        };
        let (tmp, admin, router) = setup_with(Some(catalogue));
        let wrong = "name = \"shoes\"\n[offer]\ndefault = \"o\"\n[[step]]\n\
                     when = { category = \"shoez\", device = \"Mobil\" }\n";
        let (status, body) =
            send(&router, "PUT", "/api/patterns/shoes", Some("secret"), wrong).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains("shoes.toml:5:21: step[0].when.category"),
            "{error}"
        );
        assert!(error.contains("did you mean \"shoes\"?"), "{error}");
        assert!(error.contains("did you mean \"Mobile\"?"), "{error}");
        assert!(!tmp.path().join("shoes.toml").exists());
        assert!(admin.registry.current().is_empty());

        let (status, body) = send(
            &router,
            "PUT",
            "/api/patterns/shoes",
            Some("secret"),
            PATTERN,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    /// With a shopper's gender and age, each pattern says whether they are in its audience.
    #[tokio::test]
    async fn list_says_who_is_in_the_audience() {
        let (_tmp, _admin, router) = setup();
        let women = "name = \"women\"\naudience = { gender = \"F\" }\n[offer]\n\
                     default = \"o\"\n[[step]]\nwhen = { category = \"shoes\" }\n";
        let (status, _) = send(&router, "PUT", "/api/patterns/women", Some("secret"), women).await;
        assert_eq!(status, StatusCode::OK);
        let (_, body) = send(&router, "GET", "/api/patterns?gender=F&age=30", None, "").await;
        assert_eq!(body["patterns"][0]["for_you"], true, "{body}");
        assert_eq!(
            body["patterns"][0]["in_plain_words"],
            "For women: look at shoes, within 7 days."
        );
        let (_, body) = send(&router, "GET", "/api/patterns?gender=M&age=30", None, "").await;
        assert_eq!(body["patterns"][0]["for_you"], false, "{body}");
        let (_, body) = send(&router, "GET", "/api/patterns", None, "").await;
        assert!(body["patterns"][0].get("for_you").is_none(), "{body}");
        let (status, _) = send(&router, "GET", "/api/patterns?gender=X", None, "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn log_filters_by_visitor() {
        let (_tmp, admin, router) = setup();
        for visitor in ["a", "b", "a"] {
            admin
                .log
                .lock()
                .unwrap()
                .push(clickpulse_engine::pattern::TransitionRecord {
                    ts_ms: 1,
                    visitor: visitor.to_owned(),
                    pattern: "p".to_owned(),
                    from: "init".to_owned(),
                    to: "s".to_owned(),
                    cause: clickpulse_engine::pattern::machine::Cause::Transition,
                    product_id: "x".to_owned(),
                    category: "c".to_owned(),
                    offer: None,
                });
        }
        // The admin (or viewer) token sees ids and filters by them.
        let full = Some("secret");
        let (_, body) = send(&router, "GET", "/api/patterns/log?visitor=a", full, "").await;
        assert_eq!(body["transitions"].as_array().unwrap().len(), 2);
        assert_eq!(body["transitions"][0]["visitor"], "a");
        let (_, body) = send(&router, "GET", "/api/patterns/log", full, "").await;
        assert_eq!(body["transitions"].as_array().unwrap().len(), 3);
        // Anyone else sees pseudonyms, and filters by them.
        let (_, body) = send(&router, "GET", "/api/patterns/log", None, "").await;
        let shown: Vec<&str> = body["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["visitor"].as_str().unwrap())
            .collect();
        assert_eq!(shown.len(), 3);
        assert!(shown.iter().all(|v| v.starts_with("v-")), "{shown:?}");
        assert!(!shown.contains(&"a") && !shown.contains(&"b"));
        let a = shown[0];
        let (_, body) = send(
            &router,
            "GET",
            &format!("/api/patterns/log?visitor={a}"),
            None,
            "",
        )
        .await;
        assert_eq!(body["transitions"].as_array().unwrap().len(), 2);
        let (_, body) = send(&router, "GET", "/api/patterns/log?visitor=a", None, "").await;
        assert_eq!(
            body["transitions"].as_array().unwrap().len(),
            0,
            "an id cannot be looked up without its token"
        );
    }
}
