//! The hosted "SDK" page: what the user sees in the journey, reduced to Approve and Deny.

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
use html_escape::{encode_double_quoted_attribute as attr, encode_text as esc};

use super::journey::SessionQuery;
use super::{Journey, Sandbox, bad};

pub(super) async fn sdk_page(State(sb): State<Sandbox>, Query(q): Query<SessionQuery>) -> Response {
    let st = sb.lock();
    let Some((id, s)) = q
        .session_id
        .as_deref()
        .and_then(|id| st.sessions.get(id).map(|s| (id, s)))
    else {
        return bad(
            "INVALID_SESSION_ID",
            "Session is invalid, expired, or closed",
        );
    };
    let state = match s.journey {
        Journey::Pending => "awaiting your decision",
        Journey::Approved => "approved",
        Journey::Denied => "denied",
    };
    let action = |d: &str| format!("{}/sdk/{}/{d}", sb.config.public_url, attr(id));
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>BankConnect sandbox: recurring consent</title></head><body>\
         <h1>Recurring consent (sandbox)</h1>\
         <p>Customer <b>{link}</b> is asked to share bank data <b>{value} time(s) a {unit}</b> \
         for <b>{tenure} months</b>{bank}.</p><p>Status: {state}</p>\
         <form method=\"post\" action=\"{approve}\"><button id=\"approve\" type=\"submit\">Approve</button></form>\
         <form method=\"post\" action=\"{deny}\"><button id=\"deny\" type=\"submit\">Deny</button></form>\
         </body></html>",
        link = esc(&s.link_id),
        value = s.value,
        unit = esc(&s.unit),
        tenure = s.tenure,
        bank = s.bank_name.as_deref().map(|b| format!(" from <b>{}</b>", esc(b))).unwrap_or_default(),
        approve = action("approve"),
        deny = action("deny"),
    ))
    .into_response()
}
