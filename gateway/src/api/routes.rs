//! What each path answers: `/`, `/metrics`, `/api/status` and `/api/availability` on
//! both listeners; `GET /api/points/<device>`, `GET /api/audit` and the three actions,
//! `POST /api/reload`, `/api/actuate` and `/api/maintenance`, on the local API socket
//! only, the actions for `[api] operators` only (refusals audited).

use tokio::sync::watch;
use tracing::{error, info};

use super::http::{Request, Response};
use super::operators::{authorize, Operator, Peer, MAINTENANCE, RELOAD};
use crate::ledger::{Ledger, Now};
use crate::metrics::{self, Metrics};
use crate::status::PAGE;
use crate::status::{History, Status};
use crate::view::GatewayView;

/// What every route reads.
pub struct Routes {
    pub(super) view: GatewayView,
    pub(super) metrics: Metrics,
    pub(super) history: watch::Receiver<History>,
    /// Host names, beyond IP literals and localhost, the HTTP listener answers to.
    pub(super) allowed_hosts: Vec<String>,
    /// Who may act on the local API socket (besides root and the daemon's user).
    pub(super) operators: Vec<Operator>,
    /// The availability ledger (`[ledger]`).
    pub(super) ledger: Option<Ledger>,
}

/// Which listener a request came in on: changes are served on the local API socket only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Listener {
    Http,
    /// The unix socket; the peer when the kernel told it.
    LocalApi {
        peer: Option<Peer>,
    },
}

/// Actions. Only on the local API socket (the HTTP listener may be open to a whole LAN),
/// and only for callers `[api] operators` allows (see `operators`); refusals are audited.
pub(super) async fn post(req: &Request, body: &[u8], routes: &Routes, listener: Listener) -> Response {
    let Listener::LocalApi { peer } = listener else {
        return Response::error(405, "actions are served on the local API socket only")
            .with_header("Allow", "GET, HEAD");
    };
    let uid = peer.map(|p| p.uid);
    let refuse = |target: String, command: String, why: String| {
        let actuation = routes.view.actuation.clone();
        async move {
            let actor = uid.map_or_else(|| "uid unknown".to_string(), |u| format!("uid {u}"));
            tracing::warn!(actor, target, command, "local API: refused: {why}");
            let body = match &actuation {
                Some(a) => serde_json::to_value(a.refuse_local(actor, &target, &command, why.clone()).await)
                    .unwrap_or_default(),
                None => {
                    serde_json::json!({ "outcome": "refused", "reason": "not_an_operator", "message": why })
                }
            };
            json_response(403, &body)
        }
    };
    match req.path.as_str() {
        "/api/reload" => {
            if let Err(why) = authorize(&routes.operators, peer, "gateway", RELOAD) {
                return refuse("gateway".into(), RELOAD.into(), why).await;
            }
            let (status, body) = match crate::view::reload(&routes.view).await {
                Ok(r) => {
                    info!("local API: reloaded: {r}");
                    (200, serde_json::json!({ "reloaded": true, "report": r.to_string() }))
                }
                Err(e) => {
                    error!("local API: NOT reloaded, what was in force stays: {e}");
                    (409, serde_json::json!({ "reloaded": false, "error": e }))
                }
            };
            json_response(status, &body)
        }
        "/api/actuate" => {
            let Some(actuation) = &routes.view.actuation else {
                return Response::error(404, "no field devices on this gateway ([field] is not configured)");
            };
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Ask {
                target: String,
                command: String,
                #[serde(default)]
                args: serde_json::Value,
            }
            let ask: Ask = match serde_json::from_slice(body) {
                Ok(a) => a,
                Err(e) => {
                    return Response::error(
                        400,
                        &format!("expected {{\"target\", \"command\", \"args\"}}: {e}"),
                    )
                }
            };
            if let Err(why) = authorize(&routes.operators, peer, &ask.target, &ask.command) {
                return refuse(ask.target.clone(), ask.command.clone(), why).await;
            }
            let args = if ask.args.is_null() { serde_json::json!({}) } else { ask.args };
            let entry = actuation.local(uid, &ask.target, &ask.command, args).await;
            json_response(200, &serde_json::to_value(&entry).unwrap_or_default())
        }
        "/api/maintenance" => {
            let Some(ledger) = &routes.ledger else {
                return Response::error(404, "the availability ledger is off ([ledger] enabled = false)");
            };
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Ask {
                action: String,
                #[serde(default)]
                reason: String,
            }
            let ask: Ask = match serde_json::from_slice(body) {
                Ok(a) => a,
                Err(e) => {
                    return Response::error(
                        400,
                        &format!("expected {{\"action\": \"start\"|\"stop\", \"reason\"}}: {e}"),
                    )
                }
            };
            if let Err(why) = authorize(&routes.operators, peer, "gateway", MAINTENANCE) {
                return refuse("gateway".into(), MAINTENANCE.into(), why).await;
            }
            let reason = ask.reason.trim();
            let done = match ask.action.as_str() {
                "start" if reason.is_empty() || reason.len() > 500 => {
                    return Response::error(400, "a maintenance needs a reason (1 to 500 bytes)")
                }
                "start" => tokio::task::block_in_place(|| ledger.start_maintenance(reason, Now::current())),
                "stop" => tokio::task::block_in_place(|| ledger.stop_maintenance(Now::current())),
                other => {
                    return Response::error(400, &format!("action {other:?}: use \"start\" or \"stop\""))
                }
            };
            match done {
                Ok(m) => json_response(200, &serde_json::to_value(&m).unwrap_or_default()),
                Err(e) => json_response(409, &serde_json::json!({ "error": format!("{e:#}") })),
            }
        }
        _ => Response::error(404, "not found; POST /api/reload, /api/actuate or /api/maintenance"),
    }
}

/// `month=YYYY-MM` from a query string: none, or the month, or why it is not one.
fn query_month(query: &str) -> Result<Option<(i32, u32)>, String> {
    match query.split('&').find_map(|kv| kv.strip_prefix("month=")) {
        None | Some("") => Ok(None),
        Some(m) => berrygw_proto::availability::parse_month(m).map(Some),
    }
}

pub(super) fn json_response(status: u16, body: &serde_json::Value) -> Response {
    let mut r = Response::ok("application/json", body.to_string().into_bytes());
    r.status = status;
    r
}

/// `limit=N` from a query string (default 50, at most 1000).
pub(super) fn query_limit(query: &str) -> usize {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("limit="))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(50)
        .clamp(1, 1000)
}

pub(super) fn route(req: &Request, routes: &Routes, listener: Listener) -> Response {
    let local = matches!(listener, Listener::LocalApi { .. });
    let mut response = match req.path.as_str() {
        "/" | "/index.html" => Response::ok("text/html; charset=utf-8", PAGE.into()).with_header(
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
        ),
        "/metrics" => Response::ok(metrics::CONTENT_TYPE, routes.metrics.encode().into_bytes()),
        "/api/availability" => {
            let Some(ledger) = &routes.ledger else {
                return Response::error(404, "the availability ledger is off ([ledger] enabled = false)");
            };
            let month = match query_month(&req.query) {
                Ok(m) => m,
                Err(e) => return Response::error(400, &e),
            };
            match tokio::task::block_in_place(|| ledger.report(month, Now::current())) {
                Ok(report) => json_response(200, &serde_json::to_value(&report).unwrap_or_default()),
                Err(e) => Response::error(500, &format!("availability ledger: {e:#}")),
            }
        }
        "/api/status" => {
            let mut status = Status::collect(&routes.view, &routes.history.borrow());
            status.availability =
                routes.ledger.as_ref().map(|l| tokio::task::block_in_place(|| l.recent(Now::current())));
            match serde_json::to_vec(&status) {
                Ok(body) => Response::ok("application/json", body),
                Err(e) => Response::error(500, &format!("status not encodable: {e}")),
            }
        }
        "/api/audit" if local => match &routes.view.actuation {
            Some(a) => match a.audit(query_limit(&req.query), None) {
                Ok(entries) => json_response(200, &serde_json::to_value(entries).unwrap_or_default()),
                Err(e) => Response::error(500, &format!("audit log: {e:#}")),
            },
            None => Response::error(404, "no field devices on this gateway ([field] is not configured)"),
        },
        p if local && p.starts_with("/api/points/") => {
            let target = &p["/api/points/".len()..];
            match routes.view.actuation.as_ref().and_then(|a| a.points(target)) {
                Some(points) => json_response(200, &points),
                None => Response::error(404, &format!("no field device named {target:?}")),
            }
        }
        _ => Response::error(404, "not found; try /, /metrics or /api/status"),
    };
    if req.head_only {
        response.head_only = true;
    }
    response
}
